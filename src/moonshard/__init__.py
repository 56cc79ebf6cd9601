"""moonshard: a multi-tenant template worker running sandboxed Lua 5.4 per Discord tenant."""

from __future__ import annotations

from moonshard.engine import Engine, GatewayOutcome
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
    "Engine",
    "Event",
    "GatewayOutcome",
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

