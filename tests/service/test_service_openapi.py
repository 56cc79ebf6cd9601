"""``/openapi.json`` describes every answer with a real schema and a stable title, and the
answers of a running server match those schemas exactly (no field more, none missing)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema_rs
import pytest
from service_support import COUNTER, Served, new_guild


@pytest.fixture(scope="module")
def document(served: Served) -> dict[str, Any]:
    answer = httpx.get(f"{served.url}/openapi.json")
    assert answer.status_code == 200
    loaded: dict[str, Any] = answer.json()
    return loaded


def answer_schema(document: dict[str, Any], path: str, method: str, status: int,
                  media: str = "application/json") -> dict[str, Any]:
    described = document["paths"][path][method]["responses"][str(status)]
    schema: dict[str, Any] = described["content"][media]["schema"]
    return schema


def check(document: dict[str, Any], path: str, method: str, response: httpx.Response,
          body: object | None = None) -> None:
    """The answer validates against the schema the document gives for it, and the same
    answer with one field more does not (the check can fail)."""
    media = response.headers["content-type"].split(";")[0]
    schema = answer_schema(document, path, method, response.status_code, media)
    validator = jsonschema_rs.Draft202012Validator(
        {**schema, "components": document["components"]})
    value = response.json() if body is None else body
    errors = [error.message for error in validator.iter_errors(value)]
    assert errors == [], (path, method, value)
    if isinstance(value, dict):
        assert not validator.is_valid({**value, "surprise": 1}), (path, method)
    elif isinstance(value, list) and value and isinstance(value[0], dict):
        assert not validator.is_valid([{**value[0], "surprise": 1}]), (path, method)


def test_every_answer_has_a_named_schema(document: dict[str, Any]) -> None:
    titles = {name: schema.get("title") for name, schema in
              document["components"]["schemas"].items()}
    # Stable titles: the model's class name, never one FastAPI made up from the route.
    for name, title in titles.items():
        assert title == name, name
        assert not name.startswith(("Response_", "Body_")), name
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            for status, described in operation["responses"].items():
                if status in ("204", "422") or not status.startswith(("2", "4", "5")):
                    continue
                content = described.get("content", {})
                if path == "/metrics":
                    continue  # Prometheus text
                assert content, (path, method, status)
                for media, body in content.items():
                    schema = body.get("schema", {})
                    assert "$ref" in schema, (path, method, status, media, schema)


def test_docs_pages_are_not_served_from_a_cdn(served: Served) -> None:
    for page in ("/docs", "/redoc"):
        assert httpx.get(f"{served.url}{page}").status_code == 404


def test_the_answers_match_their_schemas(served: Served, document: dict[str, Any]) -> None:
    tenant = new_guild()
    base = f"/v1/tenants/{tenant}"
    with served.client() as admin:
        check(document, "/healthz", "get", httpx.get(f"{served.url}/healthz"))
        saved = admin.put(f"{base}/templates/counter", json={"files": {"init.lua": COUNTER}})
        check(document, "/v1/tenants/{tenant}/templates/{name}", "put", saved)
        check(document, "/v1/tenants/{tenant}/templates", "get",
              admin.get(f"{base}/templates"))
        check(document, "/v1/tenants/{tenant}/templates/{name}", "get",
              admin.get(f"{base}/templates/counter"))
        for name in ("COUNT", "FAIL"):
            ran = admin.post(f"{base}/events", json={"name": name})
            assert ran.status_code == 200
            check(document, "/v1/tenants/{tenant}/events", "post", ran)
        queued = admin.post(f"{base}/events", json={"name": "COUNT"}, params={"wait": "false"})
        assert queued.status_code == 202
        check(document, "/v1/tenants/{tenant}/events", "post", queued)
        guild_id = tenant.split(":")[1]
        routed = admin.post("/v1/gateway", json={"t": "COUNT", "d": {"guild_id": guild_id}})
        assert routed.status_code == 202
        check(document, "/v1/gateway", "post", routed)
        dropped = admin.post("/v1/gateway", json={"t": "TYPING_START", "d": {}})
        assert dropped.status_code == 200
        check(document, "/v1/gateway", "post", dropped)
        stored = admin.put(f"{base}/kv/default/greeting", json={"value": {"hi": [1, 2]},
                                                                "ttl": 600})
        check(document, "/v1/tenants/{tenant}/kv/{scope}/{key}", "put", stored)
        check(document, "/v1/tenants/{tenant}/kv/{scope}/{key}", "get",
              admin.get(f"{base}/kv/default/greeting"))
        check(document, "/v1/tenants/{tenant}/kv", "get", admin.get(f"{base}/kv"))
        check(document, "/v1/tenants/{tenant}", "get", admin.get(base))
        page = admin.get("/v1/tenants", params={"limit": 2})
        check(document, "/v1/tenants", "get", page)
        created = admin.post("/v1/tokens", json={"tenant": tenant, "label": "schema"})
        check(document, "/v1/tokens", "post", created)
        check(document, "/v1/tokens", "get", admin.get("/v1/tokens"))
        logs = admin.get(f"{base}/logs")
        assert logs.text
        for line in logs.text.splitlines():
            check(document, "/v1/tenants/{tenant}/logs", "get", logs, json.loads(line))
        for status, response in ((404, admin.get(f"{base}/templates/none")),
                                 (401, httpx.get(f"{served.url}{base}"))):
            assert response.status_code == status
            error_schema = answer_schema(document, "/v1/tenants/{tenant}/templates/{name}",
                                         "get", 404)
            validator = jsonschema_rs.Draft202012Validator(
                {**error_schema, "components": document["components"]})
            assert validator.is_valid(response.json())


def test_template_version_answers_match_their_schemas(
        served: Served, document: dict[str, Any]) -> None:
    tenant = new_guild()
    base = f"/v1/tenants/{tenant}/templates/counter"
    with served.client() as admin:
        for _ in range(2):
            assert admin.put(base, json={"files": {"init.lua": COUNTER}}).status_code == 200
        versions = admin.get(f"{base}/versions")
        assert versions.status_code == 200
        check(document, "/v1/tenants/{tenant}/templates/{name}/versions", "get", versions)
        back = admin.post(f"{base}/rollback", json={})
        assert back.status_code == 200
        check(document, "/v1/tenants/{tenant}/templates/{name}/rollback", "post", back)
        for status, response in ((404, admin.post(f"{base}x/rollback")),
                                 (409, admin.post(f"{base}/rollback", json={
                                     "version": back.json()["version"]}))):
            assert response.status_code == status
            error_schema = answer_schema(document,
                                         "/v1/tenants/{tenant}/templates/{name}/rollback",
                                         "post", status)
            validator = jsonschema_rs.Draft202012Validator(
                {**error_schema, "components": document["components"]})
            assert validator.is_valid(response.json())
