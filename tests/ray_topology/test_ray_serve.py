"""``moonshard serve --topology ray``: a real server over a socket, its workers Ray actors on a
local Ray it starts itself, PostgreSQL; nothing secret in what it prints or shows."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.service.service_support import COUNTER, serving
from tests.support import POSTGRES_URL

pytestmark = [pytest.mark.ray, pytest.mark.postgres]

PASSWORD = "pw-" + uuid.uuid4().hex
ADMIN = "mst_" + uuid.uuid4().hex + "admin"


async def drop_schema(schema: str) -> None:
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def test_serve_runs_its_workers_as_ray_actors(tmp_path: Path) -> None:
    schema = "t_" + uuid.uuid4().hex[:16]
    # The test server trusts every local user: a password is accepted and ignored.
    url = POSTGRES_URL.replace("postgres@", f"postgres:{PASSWORD}@", 1) + f"?schema={schema}"
    env = {"MOONSHARD_DATABASE_URL": url, "MOONSHARD_ADMIN_TOKEN": ADMIN}
    try:
        with serving(tmp_path, topology="ray", workers=2, env=env, timeout=120) as served:
            health = httpx.get(f"{served.url}/healthz").json()
            assert health["status"] == "ok"
            assert [worker["index"] for worker in health["workers"]] == [0, 1]
            for worker in health["workers"]:
                assert worker["node"] is not None
                assert worker["pid"] is None
            with served.client() as admin:
                for tenant in ("guild:1", "guild:4194304"):  # worker 0, worker 1
                    saved = admin.put(f"/v1/tenants/{tenant}/templates/counter",
                                      json={"files": {"init.lua": COUNTER}})
                    assert saved.status_code == 200, saved.text
                    for n in (1, 2):
                        answer = admin.post(f"/v1/tenants/{tenant}/events",
                                            json={"name": "COUNT"}).json()
                        assert answer["results"] == [
                            {"template": "counter", "ok": True, "value": {"n": n}}]
                    failed = admin.put(f"/v1/tenants/{tenant}/templates/broken",
                                       json={"files": {"init.lua": "return {"}})
                    assert failed.status_code == 422, failed.text
            assert served.stop() == 0
            output = served.output()
    finally:
        asyncio.run(drop_schema(schema))
    assert "ray: started a local Ray" in output, output
    assert "Traceback" not in output, output
    for secret in (PASSWORD, ADMIN):
        assert secret not in output
        assert secret not in str(health)
