"""The mapping of domain errors to answers, for the errors the suite cannot easily provoke."""

from __future__ import annotations

import json
import time

import pytest

from moonshard.errors import (
    HostCallError,
    LimitExceeded,
    Overloaded,
    TemplateError,
    TenantQuarantined,
    WorkerCrashed,
    WorkerUnavailable,
)
from moonshard.server.errors import api_error_from


@pytest.mark.parametrize(("error", "status", "code", "retry_after"), [
    (Overloaded("queue full", retry_after=2.5), 429, "overloaded", "3"),
    (LimitExceeded("rate.kv", "slow down", retry_after=0.01), 429, "rate_limited", "1"),
    (WorkerCrashed("died"), 503, "worker_crashed", None),
    (WorkerUnavailable("restarting"), 503, "worker_unavailable", "5"),
    (LimitExceeded("kv.keys", "too many keys"), 409, "limit_exceeded", None),
    (LimitExceeded("kv.value_size", "too big"), 413, "limit_exceeded", None),
    (HostCallError("bad call"), 422, "invalid_request", None),
    (TemplateError("oops", file="init.lua", line=3), 422, "compile_error", None),
])
def test_mapping(error: Exception, status: int, code: str, retry_after: str | None) -> None:
    mapped = api_error_from(error)
    assert mapped is not None
    response = mapped.response()
    assert response.status_code == status
    body = json.loads(bytes(response.body))
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    header = response.headers.get("retry-after")
    if retry_after is None:
        assert header is None
    else:
        assert header is not None
        assert abs(int(header) - int(retry_after)) <= 1


def test_quarantine_says_until_when() -> None:
    until = time.time() + 60
    mapped = api_error_from(TenantQuarantined("later", until=until))
    assert mapped is not None
    response = mapped.response()
    assert response.status_code == 429
    assert 59 <= int(response.headers["retry-after"]) <= 60
    body = json.loads(bytes(response.body))["error"]
    assert (body["code"], body["until"]) == ("tenant_quarantined", until)


def test_template_errors_carry_file_and_line() -> None:
    mapped = api_error_from(TemplateError("unexpected symbol", file="a.lua", line=7))
    assert mapped is not None
    body = json.loads(bytes(mapped.response().body))["error"]
    assert (body["file"], body["line"], body["message"]) == ("a.lua", 7, "unexpected symbol")


def test_unknown_errors_are_not_mapped() -> None:
    assert api_error_from(RuntimeError("bug")) is None
    assert api_error_from(ValueError("bug")) is None
