"""The token matrix: admin, own tenant, other tenant, none, wrong, on every ``/v1`` endpoint."""

from __future__ import annotations

import httpx
import pytest
from service_support import COUNTER, Served, new_guild

OWN = new_guild()
OTHER = new_guild()

# (method, path, body) for every /v1 endpoint; {t} is the tenant the call is about.
CALLS: list[tuple[str, str, object]] = [
    ("GET", "/v1/tenants/{t}", None),
    ("GET", "/v1/tenants/{t}/templates", None),
    ("GET", "/v1/tenants/{t}/templates/counter", None),
    ("PUT", "/v1/tenants/{t}/templates/counter", {"files": {"init.lua": COUNTER}}),
    ("POST", "/v1/tenants/{t}/events", {"name": "COUNT"}),
    ("GET", "/v1/tenants/{t}/kv", None),
    ("PUT", "/v1/tenants/{t}/kv/default/k", {"value": 1}),
    ("GET", "/v1/tenants/{t}/kv/default/k", None),
    ("DELETE", "/v1/tenants/{t}/kv/default/k", None),
    ("GET", "/v1/tenants/{t}/logs", None),
    ("DELETE", "/v1/tenants/{t}/templates/counter", None),
]
ADMIN_ONLY: list[tuple[str, str, object]] = [
    ("POST", "/v1/tokens", {"tenant": "guild:1"}),
    ("POST", "/v1/gateway", {"t": "MESSAGE_CREATE", "d": {"guild_id": "1"}}),
]


@pytest.fixture(scope="module")
def tokens(served: Served) -> dict[str, str | None]:
    with served.client() as admin:
        own = admin.post("/v1/tokens", json={"tenant": OWN}).json()["token"]
    return {"admin": served.admin_token, "own": own, "none": None,
           "wrong": "mst_" + "x" * 43, "garbage": "not a token at all \u00e9"}


def call(served: Served, token: str | None, method: str, path: str,
         body: object) -> httpx.Response:
    # Bytes: the garbage token is not ASCII, which a server must survive too.
    headers = {"Authorization": f"Bearer {token}".encode()} if token is not None else {}
    return httpx.request(method, served.url + path, headers=headers,
                         json=body if body is not None else None, timeout=60)


@pytest.mark.parametrize(("method", "path", "body"), CALLS,
                         ids=[f"{m} {p}" for m, p, _ in CALLS])
def test_tenant_endpoints(served: Served, tokens: dict[str, str | None], method: str,
                          path: str, body: object) -> None:
    expected_ok = {"admin": True, "own": True}
    for who, token in tokens.items():
        for tenant in (OWN, OTHER):
            response = call(served, token, method, path.format(t=tenant), body)
            if who in ("none", "wrong", "garbage"):
                assert response.status_code == 401, (who, response.text)
                assert response.headers["www-authenticate"].startswith("Bearer")
                assert response.json()["error"]["code"] == "unauthorized"
            elif who == "own" and tenant == OTHER:
                assert response.status_code == 403, (who, response.text)
                assert response.json()["error"]["code"] == "forbidden"
            else:
                assert expected_ok[who]
                assert response.status_code < 400 or response.status_code == 404, \
                    (who, tenant, response.text)


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ONLY,
                         ids=[f"{m} {p}" for m, p, _ in ADMIN_ONLY])
def test_admin_endpoints(served: Served, tokens: dict[str, str | None], method: str,
                         path: str, body: object) -> None:
    assert call(served, tokens["admin"], method, path, body).status_code < 300
    assert call(served, tokens["own"], method, path, body).status_code == 403
    for who in ("none", "wrong", "garbage"):
        assert call(served, tokens[who], method, path, body).status_code == 401


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer a b", "bearer",
                                    "Token abc", "Bearer " + "a" * 5000])
def test_malformed_authorization_headers_are_401(served: Served, header: str) -> None:
    response = httpx.get(f"{served.url}/v1/tenants/{OWN}/templates",
                         headers={"Authorization": header})
    assert response.status_code == 401


def test_health_metrics_and_openapi_need_no_token(served: Served) -> None:
    for path in ("/healthz", "/metrics", "/openapi.json"):
        assert httpx.get(served.url + path).status_code == 200
