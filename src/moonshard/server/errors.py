"""How errors leave the HTTP API: ``{"error": {"code", "message", ...}}`` with the right status.

Every domain error has one mapping here, so the endpoints raise and never pick statuses for
errors themselves:

| error | status | code |
| --- | --- | --- |
| body is not JSON | 400 | ``malformed_json`` |
| missing or unknown token | 401 | ``unauthorized`` |
| token of another tenant; tenant token on an admin call | 403 | ``forbidden`` |
| no such template, template version, key, route (``TemplateNotFound``) | 404 | ``not_found`` |
| ``NothingToRollBack`` | 409 | ``conflict`` |
| ``LimitExceeded`` of a count (``template.count``, ``kv.keys``) | 409 | ``limit_exceeded`` |
| ``LimitExceeded`` of a size (``kv.value_size``...) | 413 | ``limit_exceeded`` |
| body over the size limit (2 MiB) | 413 | ``payload_too_large`` |
| invalid input, ``HostCallError``, ``ValueConversionError`` | 422 | ``invalid_request`` |
| ``TemplateError`` | 422 | ``compile_error`` or ``load_error`` (``template``, ``file``, ``line``) |
| ``Overloaded`` | 429 + Retry-After | ``overloaded`` |
| ``LimitExceeded`` with ``retry_after`` (rate limits) | 429 + Retry-After | ``rate_limited`` |
| ``TenantQuarantined`` | 429 + Retry-After | ``tenant_quarantined`` |
| ``EventStopped`` (the stop's deadline passed first) | 503 | ``shutting_down`` (with ``event``) |
| ``WorkerCrashed`` | 503 | ``worker_crashed`` |
| ``WorkerUnavailable`` | 503 + Retry-After | ``worker_unavailable`` |
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

from starlette.responses import JSONResponse

from moonshard.errors import (
    EventStopped,
    HostCallError,
    LimitExceeded,
    NothingToRollBack,
    Overloaded,
    TemplateError,
    TemplateNotFound,
    TenantQuarantined,
    ValueConversionError,
    WorkerCrashed,
    WorkerUnavailable,
)

__all__ = ["ApiError", "api_error_from", "error_response"]

# Limits about sizes answer 413; other limits (counts) answer 409.
_SIZE_LIMITS = frozenset({"kv.key_size", "kv.value_size", "template.size", "kv.run_writes"})


class ApiError(Exception):
    """An answer of the API that is an error: status, code, message, more fields."""

    def __init__(self, status: int, code: str, message: str, *,
                 fields: Mapping[str, object] | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = dict(fields or {})
        self.retry_after = retry_after

    def response(self) -> JSONResponse:
        headers: dict[str, str] = {}
        if self.retry_after is not None:
            # Whole seconds, rounded up, at least 1: what HTTP's Retry-After can say.
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="moonshard"'
        body = {"error": {"code": self.code, "message": self.message, **self.fields}}
        return JSONResponse(body, status_code=self.status, headers=headers)


def api_error_from(error: Exception) -> ApiError | None:
    """The API's answer to a domain error, or None when ``error`` is not one of them."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, TemplateError):
        fields = {key: value for key, value in error.to_json().items()
                  if key not in ("code", "message")}
        return ApiError(422, error.code, error.message, fields=fields)
    if isinstance(error, TemplateNotFound):
        return ApiError(404, "not_found", str(error))
    if isinstance(error, NothingToRollBack):
        return ApiError(409, "conflict", str(error))
    if isinstance(error, LimitExceeded):
        fields = {"limit": error.limit}
        if error.retry_after is not None:
            return ApiError(429, "rate_limited", str(error), fields=fields,
                            retry_after=error.retry_after)
        status = 413 if error.limit in _SIZE_LIMITS else 409
        return ApiError(status, "limit_exceeded", str(error), fields=fields)
    if isinstance(error, TenantQuarantined):
        return ApiError(429, "tenant_quarantined", str(error),
                        fields={"until": error.until}, retry_after=error.until - time.time())
    if isinstance(error, Overloaded):
        return ApiError(429, "overloaded", str(error), retry_after=error.retry_after)
    if isinstance(error, EventStopped):
        return ApiError(503, "shutting_down", str(error), fields={
            "event_id": error.event_id, "event": "started" if error.started else "not_started"})
    if isinstance(error, WorkerCrashed):
        return ApiError(503, "worker_crashed", str(error))
    if isinstance(error, WorkerUnavailable):
        return ApiError(503, "worker_unavailable", str(error), retry_after=5.0)
    if isinstance(error, HostCallError | ValueConversionError):
        return ApiError(422, "invalid_request", str(error))
    return None


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return ApiError(status, code, message).response()
