"""Template sets: one immutable, versioned value per tenant."""

from __future__ import annotations

import asyncio

import pytest

from moonshard.errors import LimitExceeded
from moonshard.store.api import Store
from moonshard.templates import Template
from moonshard.tenants import TenantId

SOURCE = "return { MESSAGE_CREATE = function(ctx, event) end }"


def template(name: str, *, events: tuple[str, ...] = ("MESSAGE_CREATE",),
             paused: bool = False, extra: str = "") -> Template:
    return Template(name, {"init.lua": SOURCE + extra, "lib/util.lua": "return 1"}, events,
                    paused)


async def test_a_tenant_never_seen_has_an_empty_set(store: Store, tenant: TenantId) -> None:
    empty = await store.templates.load_set(tenant)
    assert empty.tenant == tenant
    assert empty.version == 0
    assert empty.templates == ()


async def test_put_and_delete_bump_the_set_version(store: Store, tenant: TenantId) -> None:
    first = await store.templates.put(tenant, template("welcome"))
    assert first.version == 1
    saved = first.get("welcome")
    assert saved is not None
    assert saved.version == 1
    assert saved.updated_at > 0
    assert dict(saved.files) == {"init.lua": SOURCE, "lib/util.lua": "return 1"}
    assert saved.events == ("MESSAGE_CREATE",)
    assert saved.paused is False

    second = await store.templates.put(
        tenant, template("audit", events=("GUILD_MEMBER_ADD", "KeyExpiry"), paused=True))
    assert second.version == 2
    assert [t.name for t in second.templates] == ["audit", "welcome"]
    assert second.subscriptions == frozenset({"MESSAGE_CREATE"})  # audit is paused

    third = await store.templates.put(tenant, template("welcome", extra=" -- v2"))
    assert third.version == 3
    welcome, audit = third.get("welcome"), third.get("audit")
    assert welcome is not None
    assert audit is not None
    assert welcome.version == 3
    assert welcome.files["init.lua"].endswith("-- v2")
    assert audit.version == 2  # untouched

    fourth = await store.templates.delete(tenant, "audit")
    assert fourth is not None
    assert fourth.version == 4
    assert [t.name for t in fourth.templates] == ["welcome"]
    assert await store.templates.delete(tenant, "audit") is None
    assert await store.templates.load_set(tenant) == fourth


async def test_sets_are_per_tenant(store: Store, tenant: TenantId) -> None:
    other = TenantId.user(tenant.id)
    await store.templates.put(tenant, template("a"))
    assert (await store.templates.load_set(other)).version == 0


async def test_concurrent_puts_each_get_their_own_version(store: Store, tenant: TenantId) -> None:
    sets = await asyncio.gather(
        *(store.templates.put(tenant, template(f"t{index}")) for index in range(10)))
    assert sorted(s.version for s in sets) == list(range(1, 11))
    final = await store.templates.load_set(tenant)
    assert final.version == 10
    assert len(final.templates) == 10


async def test_max_templates(store: Store, tenant: TenantId) -> None:
    for name in ("a", "b"):
        await store.templates.put(tenant, template(name), max_templates=2)
    with pytest.raises(LimitExceeded, match="at most 2 templates") as caught:
        await store.templates.put(tenant, template("c"), max_templates=2)
    assert caught.value.limit == "template.count"
    replaced = await store.templates.put(tenant, template("a", extra="--"), max_templates=2)
    assert replaced.version == 3
    assert (await store.templates.load_set(tenant)).version == 3


async def test_tenants_are_listed_by_kind_then_id_in_pages(store: Store) -> None:
    names = [TenantId.user(5), TenantId.guild(20), TenantId.guild(3), TenantId.guild(100)]
    for tenant in names:
        await store.templates.put(tenant, Template("t", {"init.lua": "return {}"}, ()))
    await store.templates.delete(TenantId.guild(100), "t")  # it had templates: still listed
    first = await store.templates.tenants(after=None, limit=2)
    rest = await store.templates.tenants(after=first[-1], limit=10)
    # Ids sort as text, so guild:100 comes before guild:20.
    assert [str(tenant) for tenant in first + rest] == [
        "guild:100", "guild:20", "guild:3", "user:5"]
    assert await store.templates.tenants(after=TenantId.user(5), limit=10) == []
