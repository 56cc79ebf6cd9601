"""API tokens, key expiries and scheduled events."""

from __future__ import annotations

import pytest
from store_support import FakeClock, SessionFactory, everything_stored, raw_fetch

from moonshard.errors import LimitExceeded
from moonshard.store.api import KVSet, Store, VersionedKey, expiry_cursor, hash_token
from moonshard.tenants import TenantId


# -- tokens ------------------------------------------------------------------------------------
async def test_tokens_are_stored_hashed(store: Store, store_url: str, tenant: TenantId) -> None:
    token = await store.tokens.create(tenant)
    admin = await store.tokens.create(None)
    assert token != admin
    assert len(token) > 40
    info = await store.tokens.resolve(token)
    assert info is not None
    assert info.tenant == tenant
    assert not info.is_admin
    assert info.reaches(tenant)
    assert not info.reaches(TenantId.user(1))
    admin_info = await store.tokens.resolve(admin)
    assert admin_info is not None
    assert admin_info.is_admin
    assert admin_info.reaches(TenantId.user(1))
    assert await store.tokens.resolve("mst_nope") is None
    stored = await everything_stored(store_url)
    assert token not in stored
    assert admin not in stored
    assert hash_token(token) in stored


async def test_sqlite_file_never_holds_a_plaintext_token(
    store: Store, store_url: str, dialect: str, tenant: TenantId,
) -> None:
    if dialect != "sqlite":
        return  # PostgreSQL's files are not ours to read; the rows are checked above
    from moonshard.store import sqlite_path

    token = await store.tokens.create(tenant)
    path = sqlite_path(store_url)[0]
    data = b"".join(candidate.read_bytes() for candidate in path.parent.iterdir())
    assert token.encode() not in data
    assert hash_token(token).encode() in data


async def test_admin_token_is_ensured_once(store: Store, tenant: TenantId) -> None:
    await store.tokens.ensure_admin("mst_operator-chosen-secret")
    await store.tokens.ensure_admin("mst_operator-chosen-secret")
    info = await store.tokens.resolve("mst_operator-chosen-secret")
    assert info is not None
    assert info.is_admin
    tenant_token = await store.tokens.create(tenant)
    with pytest.raises(ValueError, match="single tenant"):
        await store.tokens.ensure_admin(tenant_token)


async def test_revoke(store: Store, tenant: TenantId) -> None:
    token = await store.tokens.create(tenant)
    assert await store.tokens.revoke(token) is True
    assert await store.tokens.resolve(token) is None
    assert await store.tokens.revoke(token) is False


# -- key expiries ------------------------------------------------------------------------------
async def test_expiries_come_soonest_first_across_tenants(
    store: Store, clock: FakeClock,
) -> None:
    now = clock.now
    a, b = TenantId.guild(1), TenantId.user(2)
    await store.kv.apply(a, [KVSet("default", "late", 1, expires_at=now + 30),
                             KVSet("default", "never", 1),
                             KVSet("s", "soon", 1, expires_at=now + 10)], now=now)
    await store.kv.apply(b, [KVSet("default", "middle", "v", expires_at=now + 20)], now=now)
    assert await store.timers.due_expiries(now + 5, 10) == []
    due = await store.timers.due_expiries(now + 25, 10)
    assert [(t, r.key, r.scope) for t, r in due] == [(a, "soon", "s"), (b, "middle", "default")]
    assert due[1][1].value == "v"
    assert len(await store.timers.due_expiries(now + 100, 1)) == 1


async def test_expiries_page_by_cursor_without_skipping_ties(
    store: Store, clock: FakeClock,
) -> None:
    now = clock.now
    tenants = [TenantId.guild(2), TenantId.guild(10), TenantId.user(1)]
    expected = []
    for tenant in tenants:
        # Two groups of equal times, each with several scopes and keys.
        timers = [(at, scope, key) for at in (now + 5, now + 1) for scope in ("b", "a")
                  for key in ("y", "x", "x\u00e9", "x\U0001f600")]
        await store.kv.apply(tenant, [KVSet(scope, f"{key}", 1, expires_at=at)
                                      for at, scope, key in timers if at == now + 5], now=now)
        await store.kv.apply(tenant, [KVSet(scope, f"{key}-1", 1, expires_at=at)
                                      for at, scope, key in timers if at == now + 1], now=now)
        expected += [(at, tenant.kind, tenant.id, scope, key if at == now + 5 else f"{key}-1")
                     for at, scope, key in timers]
    await store.kv.apply(tenants[0], [KVSet("a", "later", 1, expires_at=now + 50)], now=now)
    expected.sort()
    seen = []
    cursor: tuple[float, str, str, str, str] = (float("-inf"), "", "", "", "")
    while True:
        page = await store.timers.expiries_after(cursor, now + 10, 5)
        if not page:
            break
        seen += [expiry_cursor(tenant, record) for tenant, record in page]
        cursor = seen[-1]
    assert seen == expected  # every tie, in (time, tenant, scope, key) order, none twice


async def test_delete_if_version(
    store: Store, session: SessionFactory, tenant: TenantId, clock: FakeClock,
) -> None:
    run = session()
    await run.call("set", ["k", 1, {"ttl": 5}])
    await run.commit()
    clock.advance(10)
    ((_, expired),) = await store.timers.due_expiries(clock.now, 10)
    assert expired.version == 1
    # Changed meanwhile (revived by a set): the timer's delete must not remove it.
    run = session()
    await run.call("set", ["k", 2])
    await run.commit()
    assert await store.timers.delete_if_version(tenant, "default", "k", 1) is False
    assert await session().call("get", ["k"]) == 2
    assert await store.timers.delete_if_version(tenant, "default", "k", 2) is True
    assert await session().call("get", ["k"]) is None
    assert await store.kv.load_row(tenant, "default", "k") == (None, 0)


async def test_delete_if_version_can_require_the_expiry_it_fired_for(
    store: Store, session: SessionFactory, tenant: TenantId, clock: FakeClock,
) -> None:
    run = session()
    await run.call("set", ["k", 1, {"ttl": 5}])
    await run.commit()
    ((_, fired),) = await store.timers.due_expiries(clock.now + 5, 10)
    # Deleted and created again before the timer acted: version 1 again, another expiry.
    run = session()
    await run.call("delete", ["k"])
    await run.call("set", ["k", 2, {"ttl": 60}])
    await run.commit()
    assert await store.timers.delete_if_version(
        tenant, "default", "k", fired.version, expires_at=fired.expires_at) is False
    assert await session().call("get", ["k"]) == 2
    (record,) = [r for _, r in await store.timers.due_expiries(clock.now + 60, 10)]
    assert await store.timers.delete_if_version(
        tenant, "default", "k", record.version, expires_at=record.expires_at) is True


async def test_delete_if_versions_deletes_only_the_unchanged_keys_in_one_call(
    store: Store, session: SessionFactory, tenant: TenantId, clock: FakeClock,
) -> None:
    run = session()
    for key in ("same", "rewritten", "recreated", "other-scope"):
        await run.call("set", [key, 1, {"ttl": 5}])
    await run.call("set", ["same", 1, {"ttl": 5, "scope": "b"}])
    await run.commit()
    fired = {(record.scope, record.key): record
             for _, record in await store.timers.due_expiries(clock.now + 5, 10)}
    assert len(fired) == 5
    run = session()
    await run.call("set", ["rewritten", 2])  # a new version: the batch must leave it
    await run.call("delete", ["recreated"])
    await run.call("set", ["recreated", 3, {"ttl": 60}])  # version 1 again, another expiry
    await run.commit()
    keys = [VersionedKey(scope, key, record.version, record.expires_at)
            for (scope, key), record in fired.items()]
    keys.append(VersionedKey("default", "missing", 1))
    deleted = await store.timers.delete_if_versions(tenant, keys)
    outcome = {(item.scope, item.key): result for item, result in zip(keys, deleted, strict=True)}
    assert outcome == {("default", "same"): True, ("default", "rewritten"): False,
                       ("default", "recreated"): False, ("default", "other-scope"): True,
                       ("b", "same"): True, ("default", "missing"): False}
    assert await session().call("get", ["rewritten"]) == 2
    assert await session().call("get", ["recreated"]) == 3
    assert await session().call("get", ["same"]) is None
    # The tenant's row count went down by exactly the rows deleted.
    assert (await store.kv.load_row(tenant, "default", "rewritten"))[1] == 2
    assert await store.timers.delete_if_versions(tenant, []) == []


async def test_resume_records(store: Store, session: SessionFactory, tenant: TenantId,
                              clock: FakeClock) -> None:
    run = session()
    await run.call("set", ["job", {"step": 1}, {"resume": True}])
    await run.call("set", ["other", 1, {"resume": True, "scope": "b"}])
    await run.call("set", ["gone", 1, {"resume": True, "ttl": 1}])
    await run.call("set", ["plain", 1])
    await run.commit()
    clock.advance(2)
    records = await store.timers.resume_records(tenant, now=clock.now)
    assert [(r.scope, r.key, r.value) for r in records] == [
        ("b", "other", 1), ("default", "job", {"step": 1})]


# -- scheduled events --------------------------------------------------------------------------
async def test_scheduled_events(store: Store, tenant: TenantId) -> None:
    other = TenantId.user(7)
    first = await store.timers.schedule(tenant, None, "Ping", {"n": 1}, 100.0)
    keyed = await store.timers.schedule(tenant, "reminder", "Remind", "old", 300.0)
    await store.timers.schedule(other, "reminder", "Remind", None, 50.0)
    assert await store.timers.pending_count(tenant) == 2
    # The same key replaces the pending event, with a new id.
    replaced = await store.timers.schedule(tenant, "reminder", "Remind", "new", 200.0)
    assert replaced not in (first, keyed)
    assert await store.timers.pending_count(tenant) == 2
    due = await store.timers.due_scheduled(1000.0, 10)
    assert [(e.tenant, e.name, e.data, e.due_at) for e in due] == [
        (other, "Remind", None, 50.0), (tenant, "Ping", {"n": 1}, 100.0),
        (tenant, "Remind", "new", 200.0)]
    assert due[2].id == replaced
    assert due[2].key == "reminder"
    assert due[1].attempt == 0
    assert [e.id for e in await store.timers.due_scheduled(150.0, 10)] == [due[0].id, first]
    assert await store.timers.cancel(tenant, "reminder") is True
    assert await store.timers.cancel(tenant, "reminder") is False
    assert await store.timers.pending_count(tenant) == 1
    assert await store.timers.pending_count(other) == 1


async def test_scheduled_events_page_and_are_looked_up_by_key(
    store: Store, tenant: TenantId,
) -> None:
    ids = [await store.timers.schedule(tenant, None, "E", index, 5.0) for index in range(7)]
    later = await store.timers.schedule(tenant, "later", "E", None, 50.0)
    seen: list[int] = []
    cursor: tuple[float, int] = (float("-inf"), 0)
    while page := await store.timers.scheduled_after(cursor, 10.0, 3):
        seen += [event.id for event in page]
        cursor = page[-1].cursor
    assert seen == ids
    assert await store.timers.has_pending(tenant, "later") is True
    assert await store.timers.has_pending(tenant, "other") is False
    assert await store.timers.has_pending(TenantId.user(tenant.id), "later") is False
    assert await store.timers.remove_scheduled(later) is True
    assert await store.timers.has_pending(tenant, "later") is False


async def test_scheduled_event_retry_and_removal(store: Store, tenant: TenantId) -> None:
    event_id = await store.timers.schedule(tenant, "k", "Tick", [1, 2], 10.0)
    assert await store.timers.retry_scheduled(event_id, 12.0) is True
    (event,) = await store.timers.due_scheduled(20.0, 10)
    assert (event.attempt, event.due_at) == (1, 12.0)
    assert await store.timers.remove_scheduled(event_id) is True
    assert await store.timers.remove_scheduled(event_id) is False
    assert await store.timers.retry_scheduled(event_id, 30.0) is False
    # A replaced event's old id is gone: removing it does not touch the new one.
    old = await store.timers.schedule(tenant, "k", "Tick", 1, 10.0)
    new = await store.timers.schedule(tenant, "k", "Tick", 2, 10.0)
    assert await store.timers.remove_scheduled(old) is False
    assert [e.id for e in await store.timers.due_scheduled(20.0, 10)] == [new]


async def test_pending_scheduled_limit(store: Store, tenant: TenantId) -> None:
    for index in range(3):
        await store.timers.schedule(tenant, f"k{index}", "E", None, 1.0, max_pending=3)
    with pytest.raises(LimitExceeded, match="at most 3 pending") as caught:
        await store.timers.schedule(tenant, None, "E", None, 1.0, max_pending=3)
    assert caught.value.limit == "events.scheduled"
    # Replacing a keyed event does not add one.
    await store.timers.schedule(tenant, "k0", "E", None, 2.0, max_pending=3)
    assert await store.timers.pending_count(tenant) == 3
    rows = await store.timers.due_scheduled(10.0, 10)
    assert len(rows) == 3


async def test_key_count_bookkeeping_follows_every_delete(
    store: Store, store_url: str, session: SessionFactory, tenant: TenantId, clock: FakeClock,
) -> None:
    run = session()
    for key in ("a", "b", "c"):
        await run.call("set", [key, 1, {"ttl": 1}])
    await run.commit()
    assert (await store.kv.load_row(tenant, "default", "a"))[1] == 3
    await committed_delete(session, "a")
    clock.advance(2)
    for _, record in await store.timers.due_expiries(clock.now, 10):
        await store.timers.delete_if_version(tenant, record.scope, record.key, record.version)
    rows = await raw_fetch(store_url, "SELECT row_count FROM kv_counts")
    assert rows == [(0,)]


async def committed_delete(session: SessionFactory, key: str) -> None:
    run = session()
    assert await run.call("delete", [key]) is True
    await run.commit()
