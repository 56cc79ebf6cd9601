"""Bad input of every kind gets a 4xx with the error shape, never a 5xx."""

from __future__ import annotations

import json

import httpx
import pytest
from service_support import COUNTER, Served


def expect(response: httpx.Response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error["message"], str)
    assert error["message"]
    if code is not None:
        assert error["code"] == code, error


def send(client: httpx.Client, method: str, path: str, raw: str | bytes,
         content_type: str = "application/json") -> httpx.Response:
    return client.request(method, path, content=raw, headers={"Content-Type": content_type})


@pytest.mark.parametrize(("raw", "status", "code"), [
    ("{", 400, "malformed_json"),
    ("", 422, "invalid_request"),
    ("[]", 422, "invalid_request"),
    ('"just a string"', 422, "invalid_request"),
    ('{"files": "init.lua"}', 422, "invalid_request"),
    ('{"files": {"init.lua": 5}}', 422, "invalid_request"),
    ('{"files": {"init.lua": "return {}"}, "paused": "yes"}', 422, "invalid_request"),
    ('{"files": {"init.lua": "return {}"}, "unknown": 1}', 422, "invalid_request"),
    ('{"files": {"../init.lua": "return {}"}}', 422, "compile_error"),
    ('{"files": {"init.lua": "return 5"}}', 422, "compile_error"),
    ('{"files": {"init.lua": "\\ud800"}}', 422, "invalid_request"),
    ('{"files": {}}', 422, "compile_error"),
])
def test_bad_template_bodies(admin: httpx.Client, tenant: str, raw: str, status: int,
                             code: str) -> None:
    expect(send(admin, "PUT", f"/v1/tenants/{tenant}/templates/t", raw), status, code)


@pytest.mark.parametrize("name", ["-x", ".hidden", "a" * 65, "a b", "é"])
def test_bad_template_names(admin: httpx.Client, tenant: str, name: str) -> None:
    response = admin.put(f"/v1/tenants/{tenant}/templates/{name}",
                         json={"files": {"init.lua": COUNTER}})
    assert response.status_code in (404, 422), response.text


def test_template_size_limits(admin: httpx.Client, tenant: str) -> None:
    big = "-- " + "x" * (1024 * 1024) + "\nreturn {}"
    expect(admin.put(f"/v1/tenants/{tenant}/templates/big", json={"files": {"init.lua": big}}),
           413, "limit_exceeded")
    huge = "-- " + "x" * (3 * 1024 * 1024)
    expect(admin.put(f"/v1/tenants/{tenant}/templates/big", json={"files": {"init.lua": huge}}),
           413, "payload_too_large")


def test_template_count_limit_is_409(admin: httpx.Client, tenant: str) -> None:
    source = "return {X = function() end}"
    for index in range(50):
        assert admin.put(f"/v1/tenants/{tenant}/templates/t{index}",
                         json={"files": {"init.lua": source}}).status_code == 200
    expect(admin.put(f"/v1/tenants/{tenant}/templates/one-more",
                     json={"files": {"init.lua": source}}), 409, "limit_exceeded")
    # Replacing an existing one is still allowed.
    assert admin.put(f"/v1/tenants/{tenant}/templates/t0",
                     json={"files": {"init.lua": source}}).status_code == 200


def test_chunked_body_over_the_limit_is_413(admin: httpx.Client, tenant: str) -> None:
    def chunks() -> object:
        for _ in range(40):
            yield b"x" * 65536

    response = admin.put(f"/v1/tenants/{tenant}/templates/t", content=chunks(),  # type: ignore[arg-type]
                         headers={"Content-Type": "application/json"})
    expect(response, 413, "payload_too_large")


DEEP = "[" * 150 + "]" * 150
VERY_DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(("raw", "status"), [
    ('{"data": 1}', 422),
    ('{"name": ""}', 422),
    ('{"name": 5}', 422),
    ('{"name": "' + "X" * 101 + '"}', 422),
    ('{"name": "X", "author": "abc"}', 422),
    ('{"name": "X", "author": 123}', 422),
    ('{"name": "X", "data": NaN}', 422),
    ('{"name": "X", "data": [Infinity]}', 422),
    ('{"name": "X", "data": 1e999}', 422),
    ('{"name": "X", "data": 100000000000000000000000000000}', 422),
    ('{"name": "X", "data": ' + "9" * 5000 + "}", 400),
    ('{"name": "X", "data": ' + DEEP + "}", 422),
    ('{"name": "X", "data": ' + VERY_DEEP + "}", 400),
    ('{"name": "X", "data": "\\udc80"}', 422),
    ('{"name": "X", "data": {"\\ud800": 1}}', 422),
    ('{"name": "\\ud800"}', 422),
    ("\xff\xfe", 400),
    ('{"name": "X", "extra": true}', 422),
])
def test_bad_event_bodies(admin: httpx.Client, counter_tenant: str, raw: str,
                          status: int) -> None:
    response = send(admin, "POST", f"/v1/tenants/{counter_tenant}/events",
                    raw.encode("utf-8", "surrogateescape"))
    assert response.status_code == status, response.text
    assert "error" in response.json()


def test_odd_but_valid_event_data_reaches_templates(admin: httpx.Client,
                                                    counter_tenant: str) -> None:
    source = "return {ECHO = function(ctx, event) return event.data end}"
    admin.put(f"/v1/tenants/{counter_tenant}/templates/echo", json={"files": {"init.lua": source}})
    for data in ({"": 1}, [1, "two", None, {"x": []}], "ünïcødé ✓", 2**63 - 1, -(2**63), 1.5e300,
                 {"nested": [[[[["deep"]]]]]}):
        body = admin.post(f"/v1/tenants/{counter_tenant}/events",
                          json={"name": "ECHO", "data": data}).json()
        assert body["results"][0]["ok"] is True, (data, body)


@pytest.mark.parametrize("tenant", ["guild:abc", "guild", "nope:1", "guild:", "guild:-1",
                                    "guild:99999999999999999999999", "user:1.5", "guild:1%0A",
                                    "guild:%00", "%C3%A9:1", "x" * 300])
def test_bad_tenant_strings_are_422(admin: httpx.Client, tenant: str) -> None:
    for method, path in (("GET", ""), ("GET", "/templates"), ("GET", "/kv"),
                         ("GET", "/logs"), ("DELETE", "/kv/default/k")):
        response = admin.request(method, f"/v1/tenants/{tenant}{path}")
        expect(response, 422)
    expect(admin.post(f"/v1/tenants/{tenant}/events", json={"name": "X"}), 422)


def test_encoded_slash_in_tenant_is_not_found(admin: httpx.Client) -> None:
    assert admin.get("/v1/tenants/guild%2F1/templates").status_code in (404, 422)


@pytest.mark.parametrize(("path", "body", "status", "code"), [
    ("default/k", {"value": None}, 422, "invalid_request"),
    ("default/k", {}, 422, "invalid_request"),
    ("default/k", {"value": "x" * (300 * 1024)}, 413, "limit_exceeded"),
    ("default/" + "k" * 600, {"value": 1}, 413, "limit_exceeded"),
    ("s" * 70 + "/k", {"value": 1}, 422, "invalid_request"),
    ("default/k", {"value": 1, "ttl": -5}, 422, "invalid_request"),
    ("default/k", {"value": 1, "ttl": 0}, 422, "invalid_request"),
    ("default/k", {"value": 1, "ttl": "5"}, 422, "invalid_request"),
    ("default/k", {"value": 1, "ttl": 5, "expires_at": 99999999999}, 422, "invalid_request"),
    ("default/k", {"value": 1, "resume": "yes"}, 422, "invalid_request"),
    ("default/k%00", {"value": 1}, 422, "invalid_request"),
])
def test_bad_kv_writes(admin: httpx.Client, tenant: str, path: str, body: object, status: int,
                       code: str) -> None:
    expect(admin.put(f"/v1/tenants/{tenant}/kv/{path}", json=body), status, code)


def test_bad_kv_values_in_raw_json(admin: httpx.Client, tenant: str) -> None:
    for raw in ('{"value": NaN}', '{"value": ' + DEEP + "}", '{"value": 1e400}',
                '{"value": 123456789012345678901234567890}'):
        expect(send(admin, "PUT", f"/v1/tenants/{tenant}/kv/default/k", raw), 422)


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 101}, {"limit": "abc"},
                                    {"scope": ""}, {"scope": "s" * 100}, {"prefix": "\x00"},
                                    {"limit": "1e3"}])
def test_bad_kv_listing_queries(admin: httpx.Client, tenant: str, params: dict[str, object]
                                ) -> None:
    expect(admin.get(f"/v1/tenants/{tenant}/kv", params=params), 422)  # type: ignore[arg-type]


@pytest.mark.parametrize("params", [{"limit": -1}, {"limit": 5000}, {"follow": "maybe"},
                                    {"limit": "x"}, {"template": "a\x00b"},
                                    {"template": "\x00", "follow": "true"}])
def test_bad_log_queries(admin: httpx.Client, tenant: str, params: dict[str, object]) -> None:
    expect(admin.get(f"/v1/tenants/{tenant}/logs", params=params), 422)  # type: ignore[arg-type]


@pytest.mark.parametrize("params", [{"wait": "maybe"}, {"wait": ""}])
def test_bad_wait_flag(admin: httpx.Client, counter_tenant: str,
                       params: dict[str, str]) -> None:
    expect(admin.post(f"/v1/tenants/{counter_tenant}/events", params=params,
                      json={"name": "COUNT"}), 422)


@pytest.mark.parametrize("body", [{"tenant": "guild:abc"}, {}, {"tenant": 5}, [],
                                  {"tenant": None}, {"tenant": "guild:1", "admin": True}])
def test_bad_token_requests(admin: httpx.Client, body: object) -> None:
    expect(admin.post("/v1/tokens", json=body), 422)


def test_content_length_that_is_not_a_number(served: Served) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", int(served.url.rsplit(":", 1)[1]))) as sock:
        sock.sendall(b"POST /v1/tokens HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 4"), answer


def test_huge_query_strings_and_paths(admin: httpx.Client, tenant: str) -> None:
    response = admin.get(f"/v1/tenants/{tenant}/kv", params={"prefix": "p" * 20000})
    assert response.status_code < 500
    response = admin.get(f"/v1/tenants/{tenant}/kv/default/{'k' * 20000}")
    assert response.status_code < 500
    response = admin.get(f"/v1/tenants/{tenant}/templates/{'n' * 20000}")
    assert response.status_code == 404


def test_error_bodies_are_json(admin: httpx.Client, tenant: str) -> None:
    response = send(admin, "PUT", f"/v1/tenants/{tenant}/kv/default/k", '{"value": 1',
                    content_type="text/plain")
    assert response.status_code in (400, 422)
    json.loads(response.text)
