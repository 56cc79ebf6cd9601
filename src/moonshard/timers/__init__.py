"""Durable timers: key expiries and scheduled events, fired by the worker that owns the tenant."""
