"""The sandbox: one restricted Lua 5.4 VM per tenant, its limits, and how handlers run in it."""

from moonshard.sandbox.driver import StepRunner, drive, run_inline
from moonshard.sandbox.vm import HostRequest, LogSink, LuaRun, TenantVM

__all__ = ["HostRequest", "LogSink", "LuaRun", "StepRunner", "TenantVM", "drive", "run_inline"]
