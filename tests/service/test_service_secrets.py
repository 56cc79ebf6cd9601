"""No secret (the database password, the admin token, the Discord token) in what serve
prints or in ``/healthz``."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import asyncpg
import httpx
import pytest
from service_support import SUITE, serving

from tests.fakediscord.server import bot_token

POSTGRES_URL = os.environ.get(
    "MOONSHARD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")

PASSWORD = "pw-" + uuid.uuid4().hex
ADMIN = "mst_" + uuid.uuid4().hex + "admin"
# Well formed (the bot's id, base64, then two secret parts) but unknown to any Discord.
DISCORD = bot_token(424242) + uuid.uuid4().hex[:8]


async def drop_schema(schema: str) -> None:
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.mark.parametrize("topology", SUITE.topologies("thread", "process"))
def test_secrets_stay_out_of_the_output_and_health(tmp_path: Path, topology: str) -> None:
    schema = "t_" + uuid.uuid4().hex[:16]
    # The test server trusts every local user: a password is accepted and ignored.
    url = POSTGRES_URL.replace("postgres@", f"postgres:{PASSWORD}@", 1) + f"?schema={schema}"
    assert PASSWORD in url
    env = {"MOONSHARD_DATABASE_URL": url, "MOONSHARD_ADMIN_TOKEN": ADMIN,
           "MOONSHARD_DISCORD_TOKEN": DISCORD}
    try:
        with serving(tmp_path, topology=topology, workers=1, env=env) as served:
            health = httpx.get(f"{served.url}/healthz").text
            with httpx.Client(base_url=served.url,
                              headers={"Authorization": f"Bearer {ADMIN}"}) as client:
                assert client.get("/v1/tokens").status_code == 200
                bad = client.get("/v1/tenants/guild:1/kv/default/x")
                assert bad.status_code == 404
            assert served.stop() == 0
            output = served.output()
    finally:
        asyncio.run(drop_schema(schema))
    for secret in (PASSWORD, ADMIN, DISCORD):
        assert secret not in output, output
        assert secret not in health
    assert "database postgresql://127.0.0.1:5432/test" in output
