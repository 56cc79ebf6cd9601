"""Property-based fuzzing of the served OpenAPI document: no request may get a 5xx.

Schemathesis builds requests from ``/openapi.json``, valid and invalid ones, half of them
about a real tenant that has a template, so the fuzzing reaches past the tenant check.
Bounded: ``FUZZ_EXAMPLES`` examples per operation, no deadline per example.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from service_support import Served

FUZZ_EXAMPLES = 80
# The whole fuzz run stays within this; each operation gets an equal share.
FUZZ_SECONDS = 100

TEMPLATE = """
return {
  ECHO = function(ctx, event) ctx.kv.set("last", event.data or "nil"); return event.data end,
}
"""


def test_fuzz_openapi_no_server_errors(served: Served, admin: httpx.Client,
                                       counter_tenant: str) -> None:
    admin.put(f"/v1/tenants/{counter_tenant}/templates/echo",
              json={"files": {"init.lua": TEMPLATE}})
    schema = schemathesis.openapi.from_url(f"{served.url}/openapi.json")
    # Rotating the admin token takes no input to fuzz, and would lock every later test of the
    # shared server out: tests/service/test_service_tokens.py covers it on its own server.
    operations = [result.ok() for result in schema.get_all_operations()
                  if not result.ok().path.endswith("/rotate-admin")]
    assert len(operations) >= 13
    headers = {"Authorization": f"Bearer {served.admin_token}"}
    budget = FUZZ_SECONDS / len(operations)
    failures: list[str] = []
    for operation in operations:
        # A followed log stream never ends by itself: fuzz the rest of that operation.
        query = {"follow": "false"} if operation.path.endswith("/logs") else None
        strategies = [operation.as_strategy(mode, query=query) for mode in GenerationMode]
        if "{tenant}" in operation.path:
            strategies += [operation.as_strategy(mode, query=query,
                                                 path_parameters={"tenant": counter_tenant})
                           for mode in GenerationMode]
        fuzz(st.one_of(*strategies), served.url, headers, time.monotonic() + budget, failures)
    assert failures == [], "\n".join(failures[:10])
    assert httpx.get(f"{served.url}/healthz").status_code == 200


def fuzz(cases: st.SearchStrategy[Any], url: str, headers: dict[str, str], stop_at: float,
         failures: list[str]) -> None:
    """Sends up to FUZZ_EXAMPLES cases (until ``stop_at``); records each 5xx in ``failures``."""

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck), derandomize=True)
    @given(case=cases)
    def check(case: Any) -> None:
        if time.monotonic() > stop_at:
            return
        response = case.call(base_url=url, headers=headers, timeout=30)
        if response.status_code >= 500:
            failures.append(f"{case.method} {case.formatted_path} query={case.query} "
                            f"body={case.body!r:.300}: {response.status_code} "
                            f"{response.text[:300]}")

    check()
