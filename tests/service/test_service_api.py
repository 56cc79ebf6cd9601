"""Every endpoint of SERVICE.md against a real ``moonshard serve``, with its answers' shapes."""

from __future__ import annotations

import time

import httpx
from service_support import COUNTER, Served

BROKEN = "return {\n  X = function( end\n}"


def error_of(response: httpx.Response) -> dict[str, object]:
    body = response.json()
    assert set(body) == {"error"}, body
    assert {"code", "message"} <= set(body["error"]), body
    error: dict[str, object] = body["error"]
    return error


def test_healthz_and_openapi(served: Served) -> None:
    health = httpx.get(f"{served.url}/healthz")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok"
    assert [worker["index"] for worker in body["workers"]] == [0, 1]
    assert all(worker["up"] and worker["healthy"] for worker in body["workers"])
    document = httpx.get(f"{served.url}/openapi.json").json()
    paths = document["paths"]
    for path in ("/healthz", "/metrics", "/v1/tenants/{tenant}",
                 "/v1/tenants/{tenant}/templates", "/v1/tenants/{tenant}/templates/{name}",
                 "/v1/tenants/{tenant}/events", "/v1/gateway", "/v1/tenants/{tenant}/kv",
                 "/v1/tenants/{tenant}/kv/{scope}/{key}", "/v1/tenants/{tenant}/logs",
                 "/v1/tokens"):
        assert path in paths, sorted(paths)


def test_template_lifecycle(admin: httpx.Client, tenant: str) -> None:
    base = f"/v1/tenants/{tenant}/templates"
    assert admin.get(base).json() == []
    saved = admin.put(f"{base}/counter", json={"files": {"init.lua": COUNTER}})
    assert saved.status_code == 200
    assert saved.json() == {"name": "counter", "version": 1,
                            "events": ["COUNT", "FAIL", "SLOW", "WRITE"]}
    listed = admin.get(base).json()
    assert [(t["name"], t["version"], t["paused"]) for t in listed] == [("counter", 1, False)]
    assert set(listed[0]) == {"name", "version", "events", "paused", "updated_at"}
    shown = admin.get(f"{base}/counter").json()
    assert shown["files"] == {"init.lua": COUNTER}
    assert shown["events"] == ["COUNT", "FAIL", "SLOW", "WRITE"]
    assert (shown["paused"], shown["version"]) == (False, 1)
    paused = admin.put(f"{base}/counter", json={"files": {"init.lua": COUNTER}, "paused": True})
    assert paused.json()["version"] == 2
    assert admin.get(f"{base}/counter").json()["paused"] is True
    assert admin.delete(f"{base}/counter").status_code == 204
    assert admin.get(base).json() == []
    missing = admin.delete(f"{base}/counter")
    assert missing.status_code == 404
    assert error_of(missing)["code"] == "not_found"
    assert error_of(admin.get(f"{base}/counter"))["code"] == "not_found"


def test_compile_error_answers_422_with_file_and_line(admin: httpx.Client, tenant: str) -> None:
    response = admin.put(f"/v1/tenants/{tenant}/templates/broken",
                         json={"files": {"init.lua": BROKEN}})
    assert response.status_code == 422
    error = error_of(response)
    assert error["code"] == "compile_error"
    assert error["file"] == "init.lua"
    assert error["line"] == 2
    no_init = admin.put(f"/v1/tenants/{tenant}/templates/x", json={"files": {"a.lua": "x=1"}})
    assert (no_init.status_code, error_of(no_init)["code"]) == (422, "compile_error")
    assert admin.get(f"/v1/tenants/{tenant}/templates").json() == []


def test_a_saved_template_is_seen_by_the_next_event(admin: httpx.Client, tenant: str) -> None:
    for version in range(1, 4):
        source = f"return {{V = function() return {version} end}}"
        assert admin.put(f"/v1/tenants/{tenant}/templates/v",
                         json={"files": {"init.lua": source}}).status_code == 200
        results = admin.post(f"/v1/tenants/{tenant}/events", json={"name": "V"}).json()
        assert results["results"] == [{"template": "v", "ok": True, "value": version}]


def test_events_wait_and_no_wait(admin: httpx.Client, counter_tenant: str) -> None:
    events = f"/v1/tenants/{counter_tenant}/events"
    first = admin.post(events, json={"name": "COUNT", "data": {"x": [1, 2]}})
    assert first.status_code == 200
    body = first.json()
    assert set(body) == {"event_id", "results"}
    assert body["results"] == [{"template": "counter", "ok": True, "value": {"n": 1}}]
    failed = admin.post(events, json={"name": "FAIL", "author": "80351110224678912"}).json()
    assert failed["results"][0]["ok"] is False
    assert "init.lua:" in failed["results"][0]["error"]
    assert "boom" in failed["results"][0]["error"]
    nobody = admin.post(events, json={"name": "NOBODY_HANDLES_THIS"}).json()
    assert nobody["results"] == []
    queued = admin.post(events, params={"wait": "false"}, json={"name": "COUNT"})
    assert queued.status_code == 202
    assert set(queued.json()) == {"event_id"}
    deadline = time.monotonic() + 10
    while admin.get(f"/v1/tenants/{counter_tenant}/kv/default/count").json()["value"] != 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_tenant_status(admin: httpx.Client, counter_tenant: str) -> None:
    admin.post(f"/v1/tenants/{counter_tenant}/events", json={"name": "COUNT"})
    admin.post(f"/v1/tenants/{counter_tenant}/events", json={"name": "FAIL"})
    status = admin.get(f"/v1/tenants/{counter_tenant}").json()
    assert status["tenant"] == counter_tenant
    assert status["template_set_version"] == 1
    assert status["templates"] == ["counter"]
    assert status["subscriptions"] == ["COUNT", "FAIL", "SLOW", "WRITE"]
    assert status["vm"]["resident"] is True  # it just ran two events
    assert status["vm"]["memory_bytes"] > 0
    assert status["vm"]["loaded_version"] == 1
    assert status["counters"]["dispatched"] == 2
    assert status["counters"]["ok"] == 1
    assert status["counters"]["handler_errors"] == 1
    assert any("boom" in line["message"] for line in status["recent_errors"])
    assert status["quarantined_until"] is None


def test_kv_endpoints(admin: httpx.Client, tenant: str) -> None:
    base = f"/v1/tenants/{tenant}/kv"
    record = admin.put(f"{base}/default/greeting", json={"value": {"hello": "world"}})
    assert record.status_code == 200
    body = record.json()
    assert set(body) == {"key", "scope", "value", "version", "created_at", "updated_at",
                         "expires_at", "resume"}
    assert (body["key"], body["scope"], body["value"], body["version"]) == \
        ("greeting", "default", {"hello": "world"}, 1)
    again = admin.put(f"{base}/default/greeting", json={"value": 2, "ttl": 3600,
                                                        "resume": True}).json()
    assert again["version"] == 2
    assert again["resume"] is True
    assert again["expires_at"] > time.time() + 3000
    assert admin.get(f"{base}/default/greeting").json()["value"] == 2
    # Keys may hold slashes; scopes partition keys.
    assert admin.put(f"{base}/other/a/b", json={"value": "slash"}).status_code == 200
    assert admin.get(f"{base}/other/a/b").json()["value"] == "slash"
    assert admin.get(f"{base}/default/a/b").status_code == 404
    assert admin.delete(f"{base}/default/greeting").status_code == 204
    assert admin.get(f"{base}/default/greeting").status_code == 404
    assert admin.delete(f"{base}/default/greeting").status_code == 404


def test_kv_listing_pages(admin: httpx.Client, tenant: str) -> None:
    base = f"/v1/tenants/{tenant}/kv"
    for index in range(5):
        admin.put(f"{base}/s/k{index}", json={"value": index})
    admin.put(f"{base}/s/other", json={"value": "x"})
    page = admin.get(base, params={"scope": "s", "prefix": "k", "limit": 2}).json()
    assert [item["key"] for item in page["items"]] == ["k0", "k1"]
    assert page["next"] == "k1"
    keys = []
    after = None
    while True:
        params = {"scope": "s", "prefix": "k", "limit": 2, **({"after": after} if after else {})}
        page = admin.get(base, params=params).json()
        keys += [item["key"] for item in page["items"]]
        after = page["next"]
        if after is None:
            break
    assert keys == ["k0", "k1", "k2", "k3", "k4"]
    everything = admin.get(base, params={"scope": "s"}).json()
    assert [item["key"] for item in everything["items"]] == ["k0", "k1", "k2", "k3", "k4",
                                                             "other"]
    assert everything["next"] is None
    assert admin.get(base).json() == {"items": [], "next": None}


def test_kv_written_by_the_api_is_seen_by_templates(admin: httpx.Client,
                                                    counter_tenant: str) -> None:
    admin.put(f"/v1/tenants/{counter_tenant}/kv/default/count", json={"value": 41})
    result = admin.post(f"/v1/tenants/{counter_tenant}/events", json={"name": "COUNT"}).json()
    assert result["results"][0]["value"] == {"n": 42}


def test_logs_without_follow(admin: httpx.Client, counter_tenant: str) -> None:
    for _ in range(3):
        admin.post(f"/v1/tenants/{counter_tenant}/events", json={"name": "COUNT"})
    response = admin.get(f"/v1/tenants/{counter_tenant}/logs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = [httpx.Response(200, content=line).json() for line in response.text.splitlines()]
    assert [line["message"] for line in lines] == ["counted\t1", "counted\t2", "counted\t3"]
    assert all(set(line) == {"ts", "level", "template", "message"} for line in lines)
    assert lines[0]["template"] == "counter"
    limited = admin.get(f"/v1/tenants/{counter_tenant}/logs", params={"limit": 1}).text
    assert limited.count("\n") == 1
    assert "counted\\t3" in limited


def test_tokens(served: Served, admin: httpx.Client, tenant: str) -> None:
    created = admin.post("/v1/tokens", json={"tenant": tenant})
    assert created.status_code == 201
    token = created.json()["token"]
    with served.client(token) as own:
        assert own.get(f"/v1/tenants/{tenant}/templates").status_code == 200
        assert own.get("/v1/tenants/guild:1/templates").status_code == 403
        assert own.post("/v1/tokens", json={"tenant": tenant}).status_code == 403


def test_unknown_routes_and_methods_answer_json_errors(admin: httpx.Client) -> None:
    missing = admin.get("/v1/nothing-here")
    assert missing.status_code == 404
    assert error_of(missing)["code"] == "not_found"
    wrong = admin.patch("/v1/tokens")
    assert wrong.status_code == 405
    assert error_of(wrong)["code"] == "method_not_allowed"


def test_an_expiry_set_through_the_api_fires_key_expiry(admin: httpx.Client, tenant: str) -> None:
    source = 'return {KeyExpiry = function(ctx, event) print("expired " .. event.data.key) end}'
    admin.put(f"/v1/tenants/{tenant}/templates/expiry", json={"files": {"init.lua": source}})
    assert admin.put(f"/v1/tenants/{tenant}/kv/default/soon",
                     json={"value": 1, "ttl": 0.5}).status_code == 200
    deadline = time.monotonic() + 15
    while "expired soon" not in admin.get(f"/v1/tenants/{tenant}/logs").text:
        assert time.monotonic() < deadline, "KeyExpiry never ran"
        time.sleep(0.1)
    assert admin.get(f"/v1/tenants/{tenant}/kv/default/soon").status_code == 404
