"""moonshard: a multi-tenant template worker running sandboxed Lua 5.4 per Discord tenant."""

from __future__ import annotations

from moonshard.errors import (
    LimitExceeded,
    MoonshardError,
    NotBuiltError,
    TemplateError,
    ValueConversionError,
)
from moonshard.events import Event, HandlerResult
from moonshard.limits import Limits
from moonshard.templates import Template, TemplateSet
from moonshard.tenants import TenantId

__all__ = [
    "Event",
    "HandlerResult",
    "LimitExceeded",
    "Limits",
    "MoonshardError",
    "NotBuiltError",
    "Template",
    "TemplateError",
    "TemplateSet",
    "TenantId",
    "ValueConversionError",
]


def __getattr__(name: str) -> object:
    if name == "Engine":
        raise NotBuiltError(
            "moonshard.Engine is not built yet: the worker issue delivers it. "
            "Use 'moonshard exec' or moonshard.localrun.LocalRunner meanwhile.")
    raise AttributeError(f"module 'moonshard' has no attribute {name!r}")
