"""The HTTP API (SERVICE.md) over one running ``Engine``: ``create_app`` builds it, no globals.

Every ``/v1`` call needs ``Authorization: Bearer <token>``; the admin token reaches every
tenant, a tenant token its own tenant only. Errors are mapped in one place
(``moonshard.server.errors``); endpoints raise domain errors and never answer 500 for bad
input.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import time
from collections.abc import AsyncIterator, Callable
from types import MappingProxyType
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Path, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response, StreamingResponse

from moonshard.engine import Engine
from moonshard.errors import MoonshardError, Overloaded
from moonshard.events import Event
from moonshard.host.kv import FIND_LIMIT, KVSession
from moonshard.host.ratelimit import GcraLimiter
from moonshard.server.answers import (
    EventQueued,
    EventResults,
    GatewayDropped,
    GatewayRouted,
    GatewayStatus,
    Health,
    KVPage,
    KVRecordAnswer,
    LogLineAnswer,
    RotatedAdminToken,
    TemplateDetail,
    TemplateHistory,
    TemplateList,
    TemplateSaved,
    TemplateSummary,
    TemplateVersionAnswer,
    TenantCountersAnswer,
    TenantPage,
    TenantStatus,
    TokenCreated,
    TokenItem,
    TokenList,
    VMStatus,
    WorkerHealth,
    WorkerStatus,
)
from moonshard.server.errors import ApiError, api_error_from, error_response
from moonshard.server.logbook import LogBook, LogLine
from moonshard.server.metrics import CONTENT_TYPE, Metrics
from moonshard.server.middleware import BodyLimit, RequestMetrics
from moonshard.server.models import (
    EventBody,
    GatewayBody,
    KVBody,
    RollbackBody,
    TemplateBody,
    TokenBody,
)
from moonshard.store.api import TokenInfo, TokenStore
from moonshard.store.tenantlog import LogQuery, levels_from
from moonshard.tenants import TenantId
from moonshard.values import JsonValue

__all__ = ["MAX_BODY_BYTES", "AdminTokenHome", "create_app"]

MAX_BODY_BYTES = 2 * 1024 * 1024
# Longer than any token moonshard makes; a longer one is not looked up at all.
_MAX_TOKEN_CHARS = 256
_MAX_LOG_LINES = 1000
_MAX_TENANT_PAGE = 100
_log = logging.getLogger(__name__)
LogLevel = Literal["debug", "info", "warn", "error"]

_STATUS_CODES = MappingProxyType({
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 406: "not_acceptable", 413: "payload_too_large",
    415: "unsupported_media_type", 422: "invalid_request"})


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    """Every error answer: ``{"error": {"code", "message", ...}}``."""

    error: ErrorDetail


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorBody} for status in statuses}


_AUTHED = (401, 403, 422, 429)


# -- who is calling ------------------------------------------------------------------------------
_BEARER = HTTPBearer(auto_error=False, description="The admin token or a tenant token")


async def _caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)],
) -> TokenInfo:
    if credentials is None:
        raise ApiError(401, "unauthorized",
                       "missing bearer token: send 'Authorization: Bearer <token>'")
    token = credentials.credentials
    info = None
    if len(token) <= _MAX_TOKEN_CHARS and token.isascii() and token.isprintable():
        tokens: TokenStore = request.app.state.tokens
        info = await tokens.resolve(token)
    if info is None:
        raise ApiError(401, "unauthorized", "unknown or revoked token")
    return info


Caller = Annotated[TokenInfo, Depends(_caller)]


def _admin(info: Caller) -> TokenInfo:
    if not info.is_admin:
        raise ApiError(403, "forbidden", "this call needs the admin token")
    return info


Admin = Annotated[TokenInfo, Depends(_admin)]


def _reached_tenant(
    info: Caller,
    tenant: Annotated[str, Path(description="guild:<id> or user:<id>", max_length=200)],
) -> TenantId:
    try:
        parsed = TenantId.parse(tenant)
    except ValueError as error:
        raise ApiError(422, "invalid_tenant", str(error)) from None
    if not info.reaches(parsed):
        raise ApiError(403, "forbidden", f"this token does not reach {parsed}")
    return parsed


Tenant = Annotated[TenantId, Depends(_reached_tenant)]


@dataclasses.dataclass(frozen=True, slots=True)
class AdminTokenHome:
    """Where the admin token lives: a setting (then it cannot be rotated through the API) or
    a file that ``write(file, token)`` replaces."""

    setting: str | None = None
    file: pathlib.Path | None = None
    write: Callable[[pathlib.Path, str], None] | None = None


def create_app(
    engine: Engine, *, logbook: LogBook, metrics: Metrics, tokens: TokenStore | None = None,
    max_body_bytes: int = MAX_BODY_BYTES, kv_limiter: GcraLimiter | None = None,
    admin_token: AdminTokenHome | None = None,
    gateway_status: Callable[[], dict[str, Any]] | None = None,
) -> FastAPI:
    """The ASGI app of one engine. ``tokens`` defaults to the engine's store's tokens;
    ``kv_limiter`` rate-limits the API's kv calls per tenant (default: ``ctx.kv``'s rates)."""
    token_store = tokens if tokens is not None else engine.store.tokens
    limiter = kv_limiter if kv_limiter is not None else GcraLimiter()
    # No /docs or /redoc: FastAPI's pages load their scripts from a CDN, blank offline and a
    # third party's code in the operator's browser. /openapi.json is served; docs/API.md is
    # the reference.
    app = FastAPI(
        title="moonshard", version="1", docs_url=None, redoc_url=None,
        description="A multi-tenant template worker: tenants' Lua templates on their events.")
    # The only per-app state the module-level dependencies read (FastAPI resolves a route's
    # annotations in the module's namespace, so its dependencies live there).
    app.state.tokens = token_store

    # -- errors ----------------------------------------------------------------------------
    async def on_api_error(request: Request, error: Exception) -> Response:
        mapped = api_error_from(error)
        if mapped is None:
            _log.exception("unexpected error on %s %s", request.method, request.url.path,
                           exc_info=error)
            return error_response(500, "internal", "internal error; see the server's log")
        return mapped.response()

    async def on_validation_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, RequestValidationError)
        problems = list(error.errors())
        if any(problem.get("type") == "json_invalid" for problem in problems):
            return error_response(400, "malformed_json", "the request body is not valid JSON")
        details = [{"where": ".".join(str(part) for part in problem.get("loc", ())),
                    "message": str(problem.get("msg", "")).removeprefix("Value error, ")}
                   for problem in problems[:10]]
        # A body-wide check already names where in the body it failed.
        summary = "; ".join(item["message"] if item["where"] == "body" else
                            f"{item['where']}: {item['message']}" for item in details[:3])
        return ApiError(422, "invalid_request", summary or "invalid request",
                        fields={"details": details}).response()

    async def on_http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, StarletteHTTPException)
        code = _STATUS_CODES.get(error.status_code, "error")
        message = str(error.detail) if error.detail else code.replace("_", " ")
        response = error_response(error.status_code, code, message)
        if error.headers:
            response.headers.update(error.headers)
        return response

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(MoonshardError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_api_error)

    # -- health and metrics ----------------------------------------------------------------
    @app.get("/healthz", tags=["service"],
             responses={200: {"model": Health}, 503: {"model": Health}})
    async def healthz() -> Response:
        """``ok`` (200) while every worker is up within its restart budget, else
        ``degraded`` (503), so a load balancer stops sending work."""
        workers = await engine.status()
        healthy = all(worker.get("up") and worker.get("healthy") for worker in workers)
        answer = Health(status="ok" if healthy else "degraded",
                        workers=[WorkerStatus.model_validate(worker) for worker in workers],
                        # Shown, not counted: Discord being away is no reason to stop serving.
                        gateway=None if gateway_status is None else
                        GatewayStatus.model_validate(gateway_status()))
        body = answer.model_dump(mode="json")
        if body["gateway"] is None:
            del body["gateway"]
        return JSONResponse(body, status_code=200 if healthy else 503)

    @app.get("/metrics", tags=["service"], response_class=Response)
    async def prometheus_metrics() -> Response:
        """Prometheus text format."""
        metrics.update_workers(await engine.status(), background=engine.background_dispatches,
                               followers=logbook.follower_count)
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    # -- tenants and templates -------------------------------------------------------------
    async def status_of(tenant: TenantId) -> TenantStatus:
        template_set = await engine.store.templates.load_set(tenant)
        health = engine.worker_health(tenant)
        try:
            vm: dict[str, Any] = await engine.tenant_status(tenant)
        except MoonshardError:
            vm = {"resident": None, "memory_bytes": None}  # its worker is down just now
        return TenantStatus(
            tenant=str(tenant), template_set_version=template_set.version,
            templates=[template.name for template in template_set.templates],
            subscriptions=sorted(template_set.subscriptions),
            vm=VMStatus.model_validate({**vm, "worker": health["index"]}),
            worker=WorkerHealth.model_validate(health),
            quarantined_until=engine.quarantined_until(tenant),
            recent_errors=[LogLineAnswer.model_validate(line.to_json())
                           for line in await logbook.recent_errors(tenant)],
            counters=TenantCountersAnswer.model_validate(
                metrics.tenant_counters(tenant).to_json()))

    @app.get("/v1/tenants", tags=["tenants"], responses=_errors(*_AUTHED))
    async def list_tenants(
        _: Admin,
        after: Annotated[str | None, Query(
            max_length=200, description="The 'next' of the previous page")] = None,
        limit: Annotated[int, Query(ge=1, le=_MAX_TENANT_PAGE)] = 50,
    ) -> TenantPage:
        """Tenants that have saved templates, by kind then id, with their status (admin token
        only). ``next`` is the ``after`` of the next page, null on the last page."""
        try:
            start = None if after is None else TenantId.parse(after)
        except ValueError as error:
            raise ApiError(422, "invalid_tenant", f"after: {error}") from None
        tenants = await engine.store.templates.tenants(after=start, limit=limit)
        items = [await status_of(tenant) for tenant in tenants]
        return TenantPage(items=items,
                          next=str(tenants[-1]) if len(tenants) == limit else None)

    @app.get("/v1/tenants/{tenant}", tags=["tenants"], responses=_errors(*_AUTHED))
    async def tenant_status(tenant: Tenant) -> TenantStatus:
        """The tenant's template set, subscriptions, VM, worker, recent errors, counters."""
        return await status_of(tenant)

    @app.get("/v1/tenants/{tenant}/templates", tags=["templates"], responses=_errors(*_AUTHED))
    async def list_templates(tenant: Tenant) -> TemplateList:
        return TemplateList([TemplateSummary.model_validate(template.to_json())
                             for template in await engine.templates.list(tenant)])

    @app.get("/v1/tenants/{tenant}/templates/{name}", tags=["templates"],
             responses=_errors(*_AUTHED, 404))
    async def get_template(tenant: Tenant, name: str) -> TemplateDetail:
        template = await engine.templates.get(tenant, name)
        if template is None:
            raise ApiError(404, "not_found", f"{tenant} has no template {name!r}")
        return TemplateDetail.model_validate(template.to_json(with_files=True))

    @app.put("/v1/tenants/{tenant}/templates/{name}", tags=["templates"],
             responses=_errors(*_AUTHED, 400, 409, 413, 503))
    async def put_template(tenant: Tenant, name: str, body: TemplateBody) -> TemplateSaved:
        """Compiles, stores and swaps in the template; answers once every later event of the
        tenant sees it. 422 ``compile_error`` with ``file`` and ``line`` when refused."""
        saved = await engine.templates.put(tenant, name, body.files, paused=body.paused)
        return TemplateSaved(name=saved.name, version=saved.version, events=list(saved.events))

    @app.get("/v1/tenants/{tenant}/templates/{name}/versions", tags=["templates"],
             responses=_errors(*_AUTHED, 404))
    async def template_versions(tenant: Tenant, name: str) -> TemplateHistory:
        """The template's kept versions (the last 10 saves), newest (the current one) first."""
        versions = await engine.templates.history(tenant, name)
        return TemplateHistory([TemplateVersionAnswer.model_validate(version.to_json())
                                for version in versions])

    @app.post("/v1/tenants/{tenant}/templates/{name}/rollback", tags=["templates"],
              responses=_errors(*_AUTHED, 400, 404, 409, 503))
    async def rollback_template(tenant: Tenant, name: str,
                                body: RollbackBody | None = None) -> TemplateSaved:
        """Saves an earlier kept version's files as a new version (default: the previous
        version), validated and swapped in like a ``PUT``: answers once every later event of
        the tenant sees it. 404 for an unknown template or a version not kept, 409 when
        there is no earlier version (or the one asked for is the current one)."""
        version = None if body is None else body.version
        saved = await engine.templates.rollback(tenant, name, version)
        return TemplateSaved(name=saved.name, version=saved.version, events=list(saved.events))

    @app.delete("/v1/tenants/{tenant}/templates/{name}", tags=["templates"], status_code=204,
                response_class=Response, responses=_errors(*_AUTHED, 404, 503))
    async def delete_template(tenant: Tenant, name: str) -> Response:
        if not await engine.templates.delete(tenant, name):
            raise ApiError(404, "not_found", f"{tenant} has no template {name!r}")
        return Response(status_code=204)

    # -- events ----------------------------------------------------------------------------
    @app.post("/v1/tenants/{tenant}/events", tags=["events"],
              responses={**_errors(*_AUTHED, 400, 413, 503),
                         200: {"model": EventResults, "description": "The handlers' results"},
                         202: {"model": EventQueued, "description": "Queued (wait=false)"}})
    async def post_event(
        tenant: Tenant, body: EventBody,
        wait: Annotated[bool, Query(description="Wait for the handlers' results")] = True,
    ) -> Response:
        """Runs the event through the tenant's subscribing templates.

        ``wait=true``: 200 ``{event_id, results}``; a worker that died while running it is
        503 ``worker_crashed`` (the event is not re-run). ``wait=false``: 202 ``{event_id}``.
        """
        try:
            event = Event(body.name, body.data, author=body.author)
        except ValueError as error:
            raise ApiError(422, "invalid_request", str(error)) from None
        if not wait:
            queued = EventQueued(event_id=engine.dispatch_nowait(tenant, event))
            return JSONResponse(queued.model_dump(mode="json"), status_code=202)
        results = await engine.dispatch(tenant, event)
        answer = EventResults.model_validate(
            {"event_id": event.id, "results": [result.to_json() for result in results]})
        return JSONResponse(answer.model_dump(mode="json"))

    @app.post("/v1/gateway", tags=["events"],
              responses={**_errors(*_AUTHED, 400, 413),
                         200: {"model": GatewayDropped, "description": "Dropped"},
                         202: {"model": GatewayRouted, "description": "Routed and queued"}})
    async def post_gateway(body: GatewayBody, _: Admin) -> Response:
        """Routes a raw Discord gateway dispatch to its tenant (admin token only).

        202 ``{tenant, event_id}``, or 200 ``{dropped: reason}`` when it has no tenant or no
        template of its tenant subscribes to it.
        """
        try:
            outcome = await engine.ingest_gateway(body.model_dump())
        except ValueError as error:  # a payload the routing rules cannot read
            raise ApiError(422, "invalid_request", str(error)) from None
        if outcome.dropped is not None:
            metrics.event_dropped("no_tenant" if outcome.tenant is None else "no_subscriber",
                                  outcome.tenant)
            dropped = GatewayDropped(
                dropped=outcome.dropped,
                tenant=str(outcome.tenant) if outcome.tenant else None)
            return JSONResponse(dropped.model_dump(mode="json"))
        assert outcome.event_id is not None
        routed = GatewayRouted(tenant=str(outcome.tenant), event_id=outcome.event_id)
        return JSONResponse(routed.model_dump(mode="json"), status_code=202)

    # -- kv --------------------------------------------------------------------------------
    def kv_session(tenant: TenantId) -> KVSession:
        # The same checks and rate limits as ctx.kv, and one committed transaction per call.
        return KVSession(engine.store.kv, tenant, engine.limits, limiter)

    @app.get("/v1/tenants/{tenant}/kv", tags=["kv"], responses=_errors(*_AUTHED))
    async def list_kv(
        tenant: Tenant, scope: str = "default", prefix: str = "",
        limit: Annotated[int, Query(ge=1, le=FIND_LIMIT)] = FIND_LIMIT,
        after: str | None = None,
    ) -> KVPage:
        """Live records whose key starts with ``prefix``, by key; ``next`` is the ``after``
        of the next page, or null on the last page."""
        if "\x00" in prefix or "\x00" in (after or ""):
            # No key holds NUL (PostgreSQL cannot store it): refused like a key with NUL.
            raise ApiError(422, "invalid_request", "prefix and after must not contain NUL")
        session = kv_session(tenant)
        options: dict[str, JsonValue] = {"scope": scope, "limit": limit, "after": after}
        items = await session.find(prefix, options)
        await session.rollback()
        assert isinstance(items, list)
        last = items[-1] if len(items) == limit else None
        return KVPage(items=[KVRecordAnswer.model_validate(item) for item in items],
                      next=str(last["key"]) if isinstance(last, dict) else None)

    @app.get("/v1/tenants/{tenant}/kv/{scope}/{key:path}", tags=["kv"],
             responses=_errors(*_AUTHED, 404))
    async def get_kv(tenant: Tenant, scope: str, key: str) -> KVRecordAnswer:
        session = kv_session(tenant)
        record = await session.record(key, {"scope": scope})
        await session.rollback()
        if record is None:
            raise ApiError(404, "not_found", f"{tenant} has no key {key!r} in scope {scope!r}")
        return KVRecordAnswer.model_validate(record)

    @app.put("/v1/tenants/{tenant}/kv/{scope}/{key:path}", tags=["kv"],
             responses=_errors(*_AUTHED, 400, 409, 413))
    async def put_kv(tenant: Tenant, scope: str, key: str, body: KVBody) -> KVRecordAnswer:
        """Sets the key (like ``ctx.kv.set``) and answers the committed record."""
        options: dict[str, JsonValue] = {"scope": scope}
        for option in ("ttl", "expires_at"):
            if getattr(body, option) is not None:
                options[option] = getattr(body, option)
        if body.resume:
            options["resume"] = True
        session = kv_session(tenant)
        predicted = await session.set(key, body.value, options)
        await session.commit()
        stored = await engine.store.kv.get(tenant, scope, key, now=time.time())
        if stored is None:  # already expired (an expires_at in the past)
            return KVRecordAnswer.model_validate(predicted)
        # Arms the expiry in the tenant's worker, so it fires on time.
        await engine.kv_written(tenant, [stored])
        return KVRecordAnswer.model_validate(stored.to_json())

    @app.delete("/v1/tenants/{tenant}/kv/{scope}/{key:path}", tags=["kv"], status_code=204,
                response_class=Response, responses=_errors(*_AUTHED, 404))
    async def delete_kv(tenant: Tenant, scope: str, key: str) -> Response:
        session = kv_session(tenant)
        existed = await session.delete(key, {"scope": scope})
        await session.commit()
        if not existed:
            raise ApiError(404, "not_found", f"{tenant} has no key {key!r} in scope {scope!r}")
        return Response(status_code=204)

    # -- logs ------------------------------------------------------------------------------
    @app.get("/v1/tenants/{tenant}/logs", tags=["logs"], response_class=StreamingResponse,
             responses={**_errors(*_AUTHED),
                        200: {"content": {"application/x-ndjson": {"schema": {
                                  "$ref": "#/components/schemas/LogLineAnswer"}}},
                              "description": "JSON lines, each a LogLineAnswer, oldest "
                                             "first"}})
    async def get_logs(
        tenant: Tenant,
        follow: Annotated[bool, Query(description="Keep the stream open for new lines")] = False,
        limit: Annotated[int, Query(ge=0, le=_MAX_LOG_LINES,
                                    description="How many recent lines first")] = 100,
        level: Annotated[LogLevel | None, Query(
            description="Only lines at this level or more severe")] = None,
        template: Annotated[str | None, Query(
            max_length=200, description="Only lines of this template")] = None,
        since: Annotated[float | None, Query(
            ge=0, le=1e11, description="Only lines written at or after (unix seconds)")] = None,
    ) -> Response:
        if template is not None and "\x00" in template:
            # No template's name holds NUL (PostgreSQL cannot store it): refused on every
            # store alike, as a kv prefix with NUL is.
            raise ApiError(422, "invalid_request", "template must not contain NUL")
        query = LogQuery(levels=None if level is None else levels_from(level),
                         template=template, since=since)
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        if not follow:
            lines = await logbook.recent(tenant, limit, query)
            return Response("".join(_ndjson(line) for line in lines),
                            media_type="application/x-ndjson", headers=headers)
        if logbook.follower_count >= logbook.max_followers:
            # Each follower holds a queue: their number is bounded like everything else.
            raise Overloaded(f"{logbook.follower_count} log streams are open already",
                             retry_after=5.0)
        return StreamingResponse(_follow(logbook, tenant, query, limit),
                                 media_type="application/x-ndjson", headers=headers)

    # -- tokens ----------------------------------------------------------------------------
    @app.post("/v1/tokens", tags=["tokens"], status_code=201,
              responses=_errors(*_AUTHED, 400))
    async def create_token(body: TokenBody, _: Admin) -> TokenCreated:
        """A new token that reaches that tenant only (admin token only); shown once."""
        try:
            tenant = TenantId.parse(body.tenant)
        except ValueError as error:
            raise ApiError(422, "invalid_tenant", str(error)) from None
        try:
            info, token = await token_store.issue(tenant, body.label)
        except ValueError as error:
            raise ApiError(422, "invalid_request", str(error)) from None
        return TokenCreated(id=info.id, token=token, tenant=str(tenant), label=info.label)

    @app.get("/v1/tokens", tags=["tokens"], responses=_errors(*_AUTHED))
    async def list_tokens(_: Admin) -> TokenList:
        """Every token (admin token only): ids, tenants, labels, times; never a secret."""
        return TokenList([TokenItem.model_validate(info.to_json())
                          for info in await token_store.list_tokens()])

    @app.delete("/v1/tokens/{token_id}", tags=["tokens"], status_code=204,
                response_class=Response, responses=_errors(*_AUTHED, 404, 409))
    async def revoke_token(token_id: Annotated[str, Path(max_length=100)], _: Admin) -> Response:
        """Ends a tenant token at once (admin token only). The admin token is replaced with
        ``POST /v1/tokens/rotate-admin`` instead (409)."""
        try:
            revoked = await token_store.revoke_id(token_id)
        except ValueError as error:
            raise ApiError(409, "conflict", str(error)) from None
        if revoked is None:
            raise ApiError(404, "not_found", f"no token {token_id!r}")
        return Response(status_code=204)

    @app.post("/v1/tokens/rotate-admin", tags=["tokens"],
              responses=_errors(*_AUTHED, 409))
    async def rotate_admin_token(_: Admin) -> RotatedAdminToken:
        """Replaces the admin token (admin token only): the old one stops working at once,
        the new one is written to the admin token file and answered this once."""
        home = admin_token or AdminTokenHome()
        if home.setting is not None:
            raise ApiError(409, "conflict", f"the admin token is set by {home.setting}: "
                           "change that setting and restart instead")
        info, token = await token_store.rotate_admin()
        written: str | None = None
        if home.file is not None and home.write is not None:
            try:
                home.write(home.file, token)
                written = str(home.file)
            except OSError as error:
                _log.warning("the new admin token could not be written to %s: %s",
                             home.file, error.strerror)
        return RotatedAdminToken(id=info.id, token=token, file=written)

    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app


def _ndjson(line: LogLine) -> str:
    # ASCII escapes keep the line valid UTF-8 whatever bytes a template printed.
    return json.dumps(line.to_json()) + "\n"


async def _follow(logbook: LogBook, tenant: TenantId, query: LogQuery,
                  backlog: int) -> AsyncIterator[str]:
    async with logbook.follow(tenant, query, backlog) as (lines, follower):
        for line in lines:
            yield _ndjson(line)
        async for line in follower:
            yield _ndjson(line)
