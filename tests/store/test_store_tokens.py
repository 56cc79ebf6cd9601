"""Token ids, labels and last use; one admin token; rotation; revocation by id; v1 upgrade."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from moonshard.store import open_store
from moonshard.store.api import Store, hash_token
from moonshard.store.migrations import MIGRATIONS
from moonshard.tenants import TenantId


async def test_tokens_have_ids_labels_and_times(store: Store, tenant: TenantId) -> None:
    info, token = await store.tokens.issue(tenant, "ci bot")
    assert info.id.startswith("tok_")
    assert info.label == "ci bot"
    assert info.tenant == tenant
    assert info.last_used_at is None
    used = await store.tokens.resolve(token)
    assert used is not None
    assert used.id == info.id
    listed = {item.id: item for item in await store.tokens.list_tokens()}
    assert listed[info.id].last_used_at is not None
    assert listed[info.id].created_at == info.created_at
    assert token not in repr(listed)


async def test_there_is_one_admin_token_and_rotating_ends_the_old(store: Store) -> None:
    first = await store.tokens.create(None)
    info, second = await store.tokens.rotate_admin()
    assert info.is_admin
    assert info.label == "admin"
    assert await store.tokens.resolve(first) is None
    assert await store.tokens.resolve(second) is not None
    await store.tokens.ensure_admin("mst_operator-chosen")
    assert await store.tokens.resolve(second) is None
    admins = [item for item in await store.tokens.list_tokens() if item.is_admin]
    assert len(admins) == 1


async def test_revoke_by_id(store: Store, tenant: TenantId) -> None:
    info, token = await store.tokens.issue(tenant)
    _, other = await store.tokens.issue(tenant, "kept")
    revoked = await store.tokens.revoke_id(info.id)
    assert revoked is not None
    assert revoked.id == info.id
    assert await store.tokens.resolve(token) is None
    assert await store.tokens.resolve(other) is not None
    assert await store.tokens.revoke_id(info.id) is None
    admin, admin_token = await store.tokens.rotate_admin()
    with pytest.raises(ValueError, match="rotate-admin"):
        await store.tokens.revoke_id(admin.id)
    assert await store.tokens.resolve(admin_token) is not None


async def test_a_bad_label_is_refused(store: Store, tenant: TenantId) -> None:
    with pytest.raises(ValueError, match="label"):
        await store.tokens.issue(tenant, "x" * 201)


async def test_upgrade_from_v1_keeps_tokens_and_only_the_newest_admin(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL PRIMARY KEY,"
                 " description TEXT NOT NULL, applied_at REAL NOT NULL)")
    for step in MIGRATIONS[0].sqlite:
        conn.execute(step)
    conn.execute("INSERT INTO schema_version VALUES (1, 'v1', 0)")
    rows = [(hash_token("mst_old-admin"), None, None, 1.0),
            (hash_token("mst_new-admin"), None, None, 2.0),
            (hash_token("mst_tenant"), "guild", "7", 1.5)]
    conn.executemany("INSERT INTO api_tokens VALUES (?, ?, ?, ?)", rows)
    conn.close()
    async with await open_store(f"sqlite:///{path}") as store:
        assert await store.tokens.resolve("mst_old-admin") is None
        admin = await store.tokens.resolve("mst_new-admin")
        assert admin is not None
        assert admin.is_admin
        assert admin.id.startswith("tok_")
        tenant = await store.tokens.resolve("mst_tenant")
        assert tenant is not None
        assert tenant.tenant == TenantId.guild(7)
        assert len({item.id for item in await store.tokens.list_tokens()}) == 2
