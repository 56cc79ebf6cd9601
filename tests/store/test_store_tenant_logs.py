"""The durable tenant log: order, ids, filters, retention by lines and by age."""

from __future__ import annotations

from moonshard.store.api import Store
from moonshard.store.tenantlog import LogQuery, NewLogLine, levels_from
from moonshard.tenants import TenantId

A, B = TenantId.guild(1), TenantId.user(2)


def line(tenant: TenantId, ts: float, message: str, level: str = "info",
         template: str = "t") -> NewLogLine:
    return NewLogLine(tenant, ts, level, template, message)


async def test_lines_keep_their_order_and_ids_grow(store: Store) -> None:
    ids = await store.logs.append([line(A, 1.0, "one"), line(B, 1.5, "other"),
                                   line(A, 2.0, "two\x00with nul")], keep_lines=100)
    assert ids == sorted(ids)
    assert len(set(ids)) == 3
    recent = await store.logs.recent(A, LogQuery(), 10)
    assert [item.message[:3] for item in recent] == ["one", "two"]
    assert [item.id for item in recent] == [ids[0], ids[2]]
    assert [item.message for item in await store.logs.recent(B, LogQuery(), 10)] == ["other"]
    assert await store.logs.recent(A, LogQuery(), 0) == []


async def test_filters(store: Store) -> None:
    await store.logs.append([
        line(A, 10.0, "debug", "debug"), line(A, 20.0, "info", "info", "greeter"),
        line(A, 30.0, "warn", "warn"), line(A, 40.0, "error", "error", "greeter")],
        keep_lines=100)
    warn_up = await store.logs.recent(A, LogQuery(levels=levels_from("warn")), 10)
    assert [item.message for item in warn_up] == ["warn", "error"]
    greeter = await store.logs.recent(A, LogQuery(template="greeter"), 10)
    assert [item.message for item in greeter] == ["info", "error"]
    since = await store.logs.recent(A, LogQuery(since=25.0), 10)
    assert [item.message for item in since] == ["warn", "error"]
    both = await store.logs.recent(A, LogQuery(levels=("info",), template="greeter",
                                               since=15.0), 10)
    assert [item.message for item in both] == ["info"]
    assert [item.message for item in await store.logs.recent(A, LogQuery(), 2)] == [
        "warn", "error"]


async def test_retention_by_lines_per_tenant_and_by_age(store: Store) -> None:
    await store.logs.append([line(A, float(n), f"a{n}") for n in range(10)], keep_lines=4)
    await store.logs.append([line(B, float(n), f"b{n}") for n in range(3)], keep_lines=4)
    assert [item.message for item in await store.logs.recent(A, LogQuery(), 100)] == [
        "a6", "a7", "a8", "a9"]
    await store.logs.append([line(A, 20.0, "a20")], keep_lines=2)
    assert [item.message for item in await store.logs.recent(A, LogQuery(), 100)] == [
        "a9", "a20"]
    assert len(await store.logs.recent(B, LogQuery(), 100)) == 3
    assert await store.logs.forget_before(1.5) == 2  # b0 and b1
    assert [item.message for item in await store.logs.recent(B, LogQuery(), 100)] == ["b2"]
