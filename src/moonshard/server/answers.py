"""The answers of the HTTP API as typed models: what ``/openapi.json`` says each call returns.

Every JSON body the API answers is one of these, so the OpenAPI document describes it with a
real schema and a stable title (the class name). They refuse unknown fields: an answer that
grows a field its model does not name fails the schema test (``tests/service``), instead of
drifting from the document silently.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

__all__ = [
    "EventQueued",
    "EventResults",
    "GatewayDropped",
    "GatewayRouted",
    "HandlerFailed",
    "HandlerOk",
    "Health",
    "KVPage",
    "KVRecordAnswer",
    "LogLineAnswer",
    "RotatedAdminToken",
    "TemplateDetail",
    "TemplateHistory",
    "TemplateList",
    "TemplateSaved",
    "TemplateSummary",
    "TemplateVersionAnswer",
    "TenantCountersAnswer",
    "TenantPage",
    "TenantStatus",
    "TimerFigures",
    "TokenCreated",
    "TokenItem",
    "TokenList",
    "VMStatus",
    "WorkerHealth",
    "WorkerStatus",
]


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- service ---------------------------------------------------------------------------------
class TimerFigures(_Answer):
    """A worker's timer wheel."""

    held: int = Field(description="Timers held in memory (the next window)")
    fired: int
    batches: int = Field(default=0, description="Mailbox jobs the fired timers went in "
                         "(a backlog is fired in batches of one tenant's timers)")
    lateness_p50: float | None = Field(description="Seconds late, median of recent firings")
    lateness_p99: float | None


class WorkerHealth(_Answer):
    """A worker slot as its supervisor sees it."""

    index: int
    up: bool
    healthy: bool = Field(description="Up and within its restart budget")
    restarts: int
    last_exit: str | None = Field(description="How its last incarnation ended")
    pid: int | None = Field(description="Its process (process topology)")
    node: str | None = Field(default=None,
                             description="The Ray node and process it runs on (ray topology)")


class WorkerStatus(WorkerHealth):
    """``/healthz``: a worker's health and, while it is up, its own figures."""

    tenants: int | None = None
    resident_vms: int | None = None
    vm_memory_bytes: int | None = None
    queued: int | None = Field(default=None, description="Events waiting in its mailboxes")
    stopping: bool | None = None
    timers: TimerFigures | None = None
    quarantined: list[str] | None = Field(
        default=None, description="Tenants it set aside after a stuck call (thread topology)")
    error: str | None = Field(default=None, description="Why its figures are missing")


class GatewayShard(_Answer):
    """One gateway shard's connection."""

    id: int
    connected: bool
    latency_seconds: float | None = Field(description="Heartbeat latency; null before the first")


class GatewayEvents(_Answer):
    """What the gateway received, and what became of it."""

    received: int
    routed: int
    dropped: dict[str, int] = Field(description="Dropped dispatches, by reason")
    queued: int


class GatewayStatus(_Answer):
    """The Discord gateway connection (only when ``DISCORD_TOKEN`` is set)."""

    state: str
    error: str | None
    shard_count: int
    shards: list[GatewayShard]
    connected: bool
    bot_user_id: str | None
    events: GatewayEvents


class Health(_Answer):
    """``GET /healthz``: 200 ``ok`` while every worker is healthy, else 503 ``degraded``.

    ``gateway`` is there only with a Discord token; it does not change ``status``."""

    status: Literal["ok", "degraded"]
    workers: list[WorkerStatus]
    gateway: GatewayStatus | None = None


# -- tenants ---------------------------------------------------------------------------------
class VMStatus(_Answer):
    """The tenant's VM on its worker; figures are null while that worker is restarting."""

    resident: bool | None = Field(description="Whether its VM is built")
    memory_bytes: int | None
    loaded_version: int | None = Field(default=None,
                                       description="The template set version it runs")
    queued: int | None = None
    running: bool | None = None
    quarantined: bool | None = Field(
        default=None, description="Whether the worker set the tenant aside after a stuck call")
    worker: int = Field(description="The worker that owns the tenant")


class LogLineAnswer(_Answer):
    """One line of a tenant's log (also each line of ``GET .../logs``)."""

    ts: float = Field(description="Unix seconds")
    level: Literal["debug", "info", "warn", "error"]
    template: str = Field(description="The template that wrote it; '-' for the host")
    message: str


class TenantCountersAnswer(_Answer):
    """What this server counted for the tenant since it started."""

    dispatched: int
    ok: int
    handler_errors: int
    dropped: int
    failed: int


class TenantStatus(_Answer):
    """``GET /v1/tenants/{tenant}``."""

    tenant: str
    template_set_version: int = Field(description="0 for a tenant that never had templates")
    templates: list[str]
    subscriptions: list[str] = Field(description="Event names some template handles")
    vm: VMStatus
    worker: WorkerHealth
    quarantined_until: float | None = Field(
        description="Unix seconds until which its events are refused (429)")
    recent_errors: list[LogLineAnswer]
    counters: TenantCountersAnswer


class TenantPage(_Answer):
    """``GET /v1/tenants``: tenants by name; ``next`` is the ``after`` of the next page."""

    items: list[TenantStatus]
    next: str | None


# -- templates -------------------------------------------------------------------------------
class TemplateSummary(_Answer):
    name: str
    version: int = Field(description="The set version at which it was last saved")
    events: list[str]
    paused: bool
    updated_at: float


class TemplateList(RootModel[list[TemplateSummary]]):
    """``GET .../templates``."""


class TemplateDetail(TemplateSummary):
    """``GET .../templates/{name}``."""

    files: dict[str, str] = Field(description="Lua source by file path")


class TemplateSaved(_Answer):
    """``PUT .../templates/{name}``: answered once every later event sees it."""

    name: str
    version: int
    events: list[str]


class TemplateVersionAnswer(_Answer):
    """One kept version of a template."""

    version: int = Field(description="The set version at which it was saved")
    updated_at: float = Field(description="When it was saved (unix seconds)")
    events: list[str]


class TemplateHistory(RootModel[list[TemplateVersionAnswer]]):
    """``GET .../templates/{name}/versions``: the kept versions (at most 10), newest (the
    current one) first."""


# -- events ----------------------------------------------------------------------------------
class HandlerOk(_Answer):
    template: str
    ok: Literal[True]
    value: Any = Field(description="What the handler returned, as JSON")


class HandlerFailed(_Answer):
    template: str
    ok: Literal[False]
    error: str = Field(description="The error, with the Lua traceback")


class EventResults(_Answer):
    """``POST .../events`` with ``wait=true``: one result per subscribing template."""

    event_id: str
    results: list[HandlerOk | HandlerFailed]


class EventQueued(_Answer):
    """``POST .../events`` with ``wait=false`` (202)."""

    event_id: str


class GatewayRouted(_Answer):
    """``POST /v1/gateway`` (202): the tenant it went to."""

    tenant: str
    event_id: str


class GatewayDropped(_Answer):
    """``POST /v1/gateway`` (200): nobody takes it; ``tenant`` is null when none was found."""

    dropped: str = Field(description="Why")
    tenant: str | None


# -- kv --------------------------------------------------------------------------------------
class KVRecordAnswer(_Answer):
    """A key, as ``ctx.kv.record`` gives it."""

    key: str
    scope: str
    value: Any
    version: int
    created_at: float
    updated_at: float
    expires_at: float | None
    resume: bool


class KVPage(_Answer):
    """``GET .../kv``: ``next`` is the ``after`` of the next page, null on the last."""

    items: list[KVRecordAnswer]
    next: str | None


# -- tokens ----------------------------------------------------------------------------------
class TokenItem(_Answer):
    """One token of ``GET /v1/tokens`` (never its secret)."""

    id: str = Field(description="The token's public name, for DELETE /v1/tokens/{id}")
    tenant: str | None = Field(description="The tenant it reaches; null for the admin token")
    label: str | None = Field(description="What it is for; 'admin' for the admin token")
    created_at: float = Field(description="Unix seconds")
    last_used_at: float | None = Field(description="Unix seconds, to the minute; null if never")


class TokenList(RootModel[list[TokenItem]]):
    """``GET /v1/tokens``: the admin token first."""


class TokenCreated(_Answer):
    """``POST /v1/tokens`` (201): the new token, shown this once."""

    id: str
    token: str = Field(description="The bearer token; only its hash is kept")
    tenant: str
    label: str | None


class RotatedAdminToken(_Answer):
    """``POST /v1/tokens/rotate-admin``: the new admin token; the old one has stopped."""

    id: str
    token: str
    file: str | None = Field(description="The admin token file it was written to, if any")
