"""SERVICE.md's routing of raw gateway dispatches, and the shard formula."""

from __future__ import annotations

import pytest

from moonshard.routing import route_gateway
from moonshard.tenants import TenantId, worker_index


def interaction(owners: dict[str, str], **data: object) -> dict[str, object]:
    return {"t": "INTERACTION_CREATE",
            "d": {"authorizing_integration_owners": owners, **data}}


@pytest.mark.parametrize(("payload", "tenant"), [
    (interaction({"0": "10", "1": "20"}), TenantId.guild(10)),
    (interaction({"1": "20"}, guild_id="99"), TenantId.user(20)),  # a user install in a guild
    (interaction({"0": "0", "1": "20"}), TenantId.user(20)),  # "0" as the value: the bot's DMs
    (interaction({}, guild_id="99"), TenantId.guild(99)),
    ({"t": "MESSAGE_CREATE", "d": {"guild_id": "123", "content": "x"}}, TenantId.guild(123)),
    ({"t": "GUILD_MEMBER_ADD", "d": {"guild_id": 456}}, TenantId.guild(456)),
])
def test_routes(payload: dict[str, object], tenant: TenantId) -> None:
    assert route_gateway(payload).tenant == tenant


def test_dispatches_without_a_tenant_are_dropped_with_a_reason() -> None:
    route = route_gateway({"t": "READY", "d": {"v": 10}})
    assert route.tenant is None
    assert route.dropped is not None
    assert "READY" in route.dropped
    assert route_gateway(interaction({"0": "0"})).tenant is None


@pytest.mark.parametrize("payload", [
    {}, {"t": "X"}, {"t": "", "d": {}}, {"t": 5, "d": {}}, {"t": "X", "d": []},
])
def test_malformed_payloads_raise(payload: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="gateway dispatch"):
        route_gateway(payload)


def test_the_shard_formula() -> None:
    assert worker_index(TenantId.guild(81384788765712384), 4) == \
        (81384788765712384 >> 22) % 4
    assert worker_index(TenantId.guild(1), 2) == 0
    assert worker_index(TenantId.guild(1 << 22), 2) == 1
    with pytest.raises(ValueError, match="2\\*\\*63"):
        TenantId.guild(2**63)
