"""Template versions: each save is kept, the newest 10 per template, forgotten on delete."""

from __future__ import annotations

from moonshard.store.api import TEMPLATE_VERSIONS_KEPT, Store
from moonshard.templates import Template
from moonshard.tenants import TenantId


def saved(number: int, name: str = "levels") -> Template:
    return Template(name, {"init.lua": f"return {{}} -- save {number}"}, (f"E{number}",))


async def test_every_save_is_a_version_and_the_last_10_are_kept(
        store: Store, tenant: TenantId) -> None:
    versions = []
    for number in range(1, 14):
        template_set = await store.templates.put(tenant, saved(number))
        current = template_set.get("levels")
        assert current is not None
        versions.append(current.version)
        # Another template's saves are its own history.
        if number == 5:
            await store.templates.put(tenant, saved(0, "other"))
    history = await store.templates.history(tenant, "levels")
    assert TEMPLATE_VERSIONS_KEPT == 10
    assert [item.version for item in history] == versions[::-1][:10]
    assert [item.events for item in history] == [(f"E{n}",) for n in range(13, 3, -1)]
    assert all(item.updated_at > 0 for item in history)
    kept = await store.templates.version(tenant, "levels", versions[5])
    assert kept is not None
    assert dict(kept.files) == {"init.lua": "return {} -- save 6"}
    assert kept.events == ("E6",)
    assert kept.version == versions[5]
    # Pruned: the three oldest saves.
    for pruned in versions[:3]:
        assert await store.templates.version(tenant, "levels", pruned) is None
    assert [item.version for item in await store.templates.history(tenant, "other")] == [
        versions[4] + 1]


async def test_history_is_per_tenant_and_forgotten_on_delete(
        store: Store, tenant: TenantId) -> None:
    other = TenantId.guild(777)
    await store.templates.put(tenant, saved(1))
    await store.templates.put(tenant, saved(2))
    await store.templates.put(other, saved(1))
    assert len(await store.templates.history(tenant, "levels")) == 2
    assert len(await store.templates.history(other, "levels")) == 1
    assert await store.templates.history(tenant, "missing") == []
    assert await store.templates.delete(tenant, "levels") is not None
    assert await store.templates.history(tenant, "levels") == []
    assert await store.templates.version(tenant, "levels", 1) is None
    assert len(await store.templates.history(other, "levels")) == 1
    # A new template of the same name starts a new history (versions never reused).
    again = (await store.templates.put(tenant, saved(3))).get("levels")
    assert again is not None
    assert [item.version for item in await store.templates.history(tenant, "levels")] == [
        again.version]
