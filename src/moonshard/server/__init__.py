"""The HTTP API of ``moonshard serve``: the app factory, tenants' logs, metrics, the runner."""

from __future__ import annotations

from moonshard.server.app import MAX_BODY_BYTES, create_app
from moonshard.server.logbook import LogBook, LogLine
from moonshard.server.metrics import Metrics

__all__ = ["MAX_BODY_BYTES", "LogBook", "LogLine", "Metrics", "create_app"]
