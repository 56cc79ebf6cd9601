"""``ctx.kv`` as TEMPLATES.md fixes it: every operation, its limits, expiry, runs and batches."""

from __future__ import annotations

import math
from typing import Any

import pytest
from store_support import FakeClock, SessionFactory, keys_of, records

from moonshard.errors import HostCallError, LimitExceeded
from moonshard.host.kv import KVSession, KVSizeError
from moonshard.host.ratelimit import GcraLimiter, Rate
from moonshard.limits import Limits
from moonshard.store.api import KVDelete, KVIncr, KVSet, Store
from moonshard.tenants import TenantId

RECORD_FIELDS = {"key", "scope", "value", "version", "created_at", "updated_at", "expires_at",
                 "resume"}


async def committed(session: SessionFactory, op: str, *args: Any) -> Any:
    """Runs one call in its own run and commits it."""
    run = session()
    result = await run.call(op, list(args))
    await run.commit()
    return result


# -- get, record, set ------------------------------------------------------------------------
async def test_set_then_get_in_a_later_run(session: SessionFactory, clock: FakeClock) -> None:
    record = await committed(session, "set", "greeting", {"text": "hi", "n": [1, 2.5, None]})
    assert isinstance(record, dict)
    assert set(record) == RECORD_FIELDS
    assert record["key"] == "greeting"
    assert record["scope"] == "default"
    assert record["version"] == 1
    assert record["created_at"] == record["updated_at"] == clock.now
    assert record["expires_at"] is None
    assert record["resume"] is False
    run = session()
    assert await run.call("get", ["greeting"]) == {"text": "hi", "n": [1, 2.5, None]}
    assert await run.call("record", ["greeting", None]) == record
    assert await run.call("get", ["missing"]) is None
    assert await run.call("record", ["missing"]) is None


async def test_values_of_every_json_kind_round_trip(session: SessionFactory) -> None:
    values: list[object] = [True, False, 0, -7, 2**62, 1.5, "", "ünïcødé ✓", [], {}, [[{}]],
                            {"a": {"b": [1, "2", False]}}]
    run = session()
    for index, value in enumerate(values):
        await run.call("set", [f"v{index}", value])
    await run.commit()
    reader = session()
    for index, value in enumerate(values):
        got = await reader.call("get", [f"v{index}"])
        assert got == value
        assert type(got) is type(value)


async def test_version_grows_by_one_with_every_write(
    session: SessionFactory, clock: FakeClock,
) -> None:
    first = await committed(session, "set", "k", 1)
    clock.advance(5)
    second = await committed(session, "set", "k", 2)
    clock.advance(5)
    third = await committed(session, "incr", "k", 3)
    clock.advance(5)
    run = session()
    fourth = await run.call("expire", ["k", 100])
    fifth = await run.call("set", ["k", "x"])
    await run.commit()
    assert isinstance(first, dict)
    assert isinstance(second, dict)
    assert isinstance(fourth, dict)
    assert isinstance(fifth, dict)
    assert [first["version"], second["version"], fourth["version"], fifth["version"]] == [
        1, 2, 4, 5]
    assert third == 5
    assert second["created_at"] == first["created_at"]
    assert second["updated_at"] == first["updated_at"] + 5
    final = await session().call("record", ["k"])
    assert isinstance(final, dict)
    assert final["version"] == 5
    assert final["value"] == "x"
    assert final["created_at"] == first["created_at"]


async def test_the_record_a_run_sees_is_the_record_it_commits(
    session: SessionFactory, clock: FakeClock,
) -> None:
    run = session()
    seen = await run.call("set", ["k", 1, {"ttl": 60, "resume": True}])
    clock.advance(3)  # the commit comes later than the write
    await run.commit()
    assert await session().call("record", ["k"]) == seen


async def test_set_replaces_expiry_and_resume(session: SessionFactory, clock: FakeClock) -> None:
    armed = await committed(session, "set", "k", 1, {"ttl": 10, "resume": True})
    assert isinstance(armed, dict)
    assert armed["expires_at"] == clock.now + 10
    assert armed["resume"] is True
    plain = await committed(session, "set", "k", 2)
    assert isinstance(plain, dict)
    assert plain["expires_at"] is None
    assert plain["resume"] is False
    at = await committed(session, "set", "k", 3, {"expires_at": clock.now + 99.5})
    assert isinstance(at, dict)
    assert at["expires_at"] == clock.now + 99.5


# -- delete, incr, expire ----------------------------------------------------------------------
async def test_delete_says_whether_the_key_existed(session: SessionFactory) -> None:
    await committed(session, "set", "k", 1)
    run = session()
    assert await run.call("delete", ["k"]) is True
    assert await run.call("delete", ["k"]) is False
    assert await run.call("get", ["k"]) is None
    await run.commit()
    assert await session().call("get", ["k"]) is None
    assert await committed(session, "delete", "never") is False


async def test_delete_cancels_the_expiry(store: Store, session: SessionFactory,
                                         clock: FakeClock) -> None:
    await committed(session, "set", "k", 1, {"ttl": 5})
    await committed(session, "delete", "k")
    assert await store.timers.due_expiries(clock.now + 10, 10) == []


async def test_incr(session: SessionFactory) -> None:
    run = session()
    assert await run.call("incr", ["n"]) == 1
    assert await run.call("incr", ["n", None, None]) == 2
    assert await run.call("incr", ["n", 5]) == 7
    assert await run.call("incr", ["n", -10]) == -3
    assert await run.call("incr", ["f", 0.5]) == 0.5
    assert await run.call("incr", ["f", 1]) == 1.5
    await run.commit()
    later = session()
    assert await later.call("incr", ["n", 3]) == 0
    await later.commit()
    reader = session()
    assert await reader.call("get", ["n"]) == 0
    assert await reader.call("get", ["f"]) == 1.5
    integer = await reader.call("get", ["n"])
    assert type(integer) is int


async def test_incr_refuses_what_is_not_a_number(session: SessionFactory) -> None:
    await committed(session, "set", "s", "text")
    await committed(session, "set", "b", True)
    run = session()
    with pytest.raises(HostCallError, match="string, not a number"):
        await run.call("incr", ["s"])
    with pytest.raises(HostCallError, match="boolean, not a number"):
        await run.call("incr", ["b", 1])
    with pytest.raises(HostCallError, match="by must be a number"):
        await run.call("incr", ["n", "1"])
    with pytest.raises(HostCallError, match="by must be a number"):
        await run.call("incr", ["n", True])
    await run.call("set", ["big", 2**63 - 1])
    with pytest.raises(HostCallError, match="overflows"):
        await run.call("incr", ["big", 1])
    assert run.pending_writes == 1  # only the set of "big"


async def test_incr_adds_to_the_value_as_committed_not_as_read(session: SessionFactory) -> None:
    await committed(session, "set", "n", 10)
    first, second = session(), session()
    assert await first.call("incr", ["n", 1]) == 11
    assert await second.call("incr", ["n", 1]) == 11  # both read 10 during their runs
    await first.commit()
    await second.commit()
    assert await session().call("get", ["n"]) == 12  # no update lost


async def test_expire_sets_and_clears(session: SessionFactory, clock: FakeClock) -> None:
    await committed(session, "set", "k", 1)
    armed = await committed(session, "expire", "k", 30)
    assert isinstance(armed, dict)
    assert armed["expires_at"] == clock.now + 30
    assert armed["value"] == 1
    cleared = await committed(session, "expire", "k", None)
    assert isinstance(cleared, dict)
    assert cleared["expires_at"] is None
    clock.advance(60)
    assert await session().call("get", ["k"]) == 1
    assert await committed(session, "expire", "missing", 5) is None
    with pytest.raises(HostCallError, match="positive"):
        await session().call("expire", ["k", 0])


# -- expiry ------------------------------------------------------------------------------------
async def test_an_expired_key_is_invisible_to_every_read(
    session: SessionFactory, clock: FakeClock,
) -> None:
    run = session()
    await run.call("set", ["short", 1, {"ttl": 0.001}])
    await run.call("set", ["past", 2, {"expires_at": clock.now - 1}])
    await run.call("set", ["kept", 3, {"ttl": 100}])
    # The run's own reads already judge expiry.
    assert await run.call("get", ["past"]) is None
    await run.commit()
    clock.advance(0.01)
    reader = session()
    assert await reader.call("get", ["short"]) is None
    assert await reader.call("record", ["past"]) is None
    found = await reader.call("find", [""])
    assert isinstance(found, list)
    assert keys_of(found) == ["kept"]
    assert await reader.call("count", []) == 1
    clock.advance(100)
    assert await session().call("count", [None]) == 0


async def test_writes_treat_an_expired_key_as_absent(
    store: Store, session: SessionFactory, clock: FakeClock, tenant: TenantId,
) -> None:
    await committed(session, "set", "k", 1, {"ttl": 1})
    await committed(session, "set", "n", 41, {"ttl": 1})
    clock.advance(2)
    assert await committed(session, "delete", "k") is False
    revived = await committed(session, "set", "k", "again")
    assert isinstance(revived, dict)
    assert revived["created_at"] == clock.now  # fresh, not the expired key's
    assert revived["version"] == 2  # the version keeps growing
    assert await committed(session, "incr", "n", 1) == 1  # from 0, not from 41
    record = await store.kv.get(tenant, "default", "n", now=clock.now)
    assert record is not None
    assert record.expires_at is None


# -- scopes ------------------------------------------------------------------------------------
async def test_scopes_partition_keys(session: SessionFactory) -> None:
    run = session()
    await run.call("set", ["k", "default"])
    await run.call("set", ["k", "other", {"scope": "other"}])
    await run.call("set", ["j", 1, {"scope": "other"}])
    await run.commit()
    reader = session()
    assert await reader.call("get", ["k"]) == "default"
    assert await reader.call("get", ["k", {"scope": "other"}]) == "other"
    assert await reader.call("count", [{"scope": "other"}]) == 2
    assert await reader.call("count", []) == 1
    assert await reader.call("count", [{"scope": "nothing"}]) == 0
    found = await reader.call("find", ["", {"scope": "other"}])
    assert isinstance(found, list)
    assert [(r["key"], r["scope"]) for r in records(found)] == [
        ("j", "other"), ("k", "other")]


async def test_tenants_never_see_each_other(session: SessionFactory) -> None:
    other = TenantId.user(4242)
    await committed(session, "set", "k", "mine")
    assert await session(for_tenant=other).call("get", ["k"]) is None
    assert await session(for_tenant=other).call("count", []) == 0


# -- find and count ----------------------------------------------------------------------------
async def test_find_orders_by_key_and_pages(session: SessionFactory) -> None:
    run = session()
    keys = [f"user:{index:03d}" for index in range(250)]
    for start in range(0, 250, 50):
        await run.call("batch", [[["set", key, index] for index, key in
                                  enumerate(keys[start:start + 50], start)]])
    await run.call("set", ["userx", 1])
    await run.call("set", ["other", 1])
    await run.commit()
    reader = session()
    page = await reader.call("find", ["user:"])
    assert isinstance(page, list)
    assert keys_of(page) == keys[:100]
    collected: list[str] = []
    after = None
    while True:
        page = await reader.call("find", ["user:", {"limit": 70, "after": after}])
        assert isinstance(page, list)
        if not page:
            break
        collected += keys_of(page)
        after = collected[-1]
    assert collected == keys
    assert await reader.call("count", []) == 252


async def test_find_prefix_edges(session: SessionFactory) -> None:
    keys = ["a", "a\U0010ffff", "a\U0010ffffz", "ab", "b", "é", "éa", "\U0001f600", "\ud7ffx",
            "\ue000"]
    run = session()
    for key in keys:
        await run.call("set", [key, key])
    await run.commit()
    reader = session()

    async def find(prefix: str) -> list[str]:
        found = await reader.call("find", [prefix])
        assert isinstance(found, list)
        return keys_of(found)

    assert await find("") == sorted(keys)
    assert await find("a") == ["a", "ab", "a\U0010ffff", "a\U0010ffffz"]
    assert await find("a\U0010ffff") == ["a\U0010ffff", "a\U0010ffffz"]
    assert await find("é") == ["é", "éa"]
    assert await find("\ud7ff") == ["\ud7ffx"]
    assert await find("zz") == []
    assert await reader.call("find", [None]) == await reader.call("find", [""])


async def test_reads_of_a_run_see_its_own_writes(session: SessionFactory) -> None:
    run = session()
    for key in ("a", "b", "c", "d"):
        await run.call("set", [key, key])
    await run.commit()
    run = session()
    await run.call("delete", ["b"])
    await run.call("set", ["bb", "new"])
    await run.call("set", ["c", "changed"])
    await run.call("set", ["x", 1, {"scope": "elsewhere"}])
    assert await run.call("get", ["c"]) == "changed"
    assert await run.call("get", ["b"]) is None
    assert await run.call("count", []) == 4
    found = await run.call("find", ["", {"limit": 3}])
    assert isinstance(found, list)
    assert [(r["key"], r["value"]) for r in records(found)] == [
        ("a", "a"), ("bb", "new"), ("c", "changed")]
    found = await run.call("find", ["", {"after": "bb"}])
    assert isinstance(found, list)
    assert keys_of(found) == ["c", "d"]
    # Nobody else sees them before the commit.
    other = session()
    assert await other.call("get", ["c"]) == "c"
    assert await other.call("get", ["bb"]) is None
    await run.commit()
    assert await session().call("get", ["c"]) == "changed"


async def test_find_fills_its_page_past_keys_the_run_deleted(session: SessionFactory) -> None:
    run = session()
    for index in range(10):
        await run.call("set", [f"k{index}", index])
    await run.commit()
    run = session()
    for index in range(5):
        await run.call("delete", [f"k{index}"])
    found = await run.call("find", ["k", {"limit": 3}])
    assert isinstance(found, list)
    assert keys_of(found) == ["k5", "k6", "k7"]


# -- runs --------------------------------------------------------------------------------------
async def test_rollback_discards_the_run(session: SessionFactory) -> None:
    await committed(session, "set", "kept", 1)
    run = session()
    await run.call("set", ["new", 1])
    await run.call("delete", ["kept"])
    await run.call("incr", ["n"])
    await run.rollback()
    reader = session()
    assert await reader.call("get", ["new"]) is None
    assert await reader.call("get", ["kept"]) == 1
    assert await reader.call("get", ["n"]) is None
    with pytest.raises(HostCallError, match="run has ended"):
        await run.call("get", ["kept"])
    with pytest.raises(RuntimeError):
        await run.commit()


async def test_a_run_without_writes_commits_nothing(session: SessionFactory) -> None:
    run = session()
    assert await run.call("get", ["k"]) is None
    await run.commit()
    assert run.pending_writes == 0


# -- batch -------------------------------------------------------------------------------------
async def test_batch_gives_each_result(session: SessionFactory) -> None:
    await committed(session, "set", "old", 1)
    run = session()
    results = await run.call("batch", [[
        ["set", "a", {"x": 1}, {"ttl": 5}],
        ["incr", "n", 2],
        ["incr", "n"],
        ["delete", "old"],
        ["delete", "never"],
        ["set", "s", 1, {"scope": "other"}],
    ]])
    assert isinstance(results, list)
    assert isinstance(results[0], dict)
    assert results[0]["value"] == {"x": 1}
    assert results[1:5] == [2, 3, True, False]
    assert isinstance(results[5], dict)
    assert results[5]["scope"] == "other"
    await run.commit()
    reader = session()
    assert await reader.call("get", ["n"]) == 3
    assert await reader.call("get", ["old"]) is None
    assert await reader.call("batch", [[]]) == []
    assert await reader.call("batch", [{}]) == []


async def test_a_failing_batch_leaves_nothing(session: SessionFactory) -> None:
    await committed(session, "set", "text", "not a number")
    run = session()
    await run.call("set", ["before", 1])
    with pytest.raises(HostCallError, match=r"not a number"):
        await run.call("batch", [[["set", "a", 1], ["incr", "b"], ["incr", "text"]]])
    with pytest.raises(HostCallError, match=r"op #2: key must be a non-empty string"):
        await run.call("batch", [[["set", "a", 1], ["delete", ""]]])
    with pytest.raises(HostCallError, match=r"op #1: unknown batch op 'get'"):
        await run.call("batch", [[["get", "a"]]])
    with pytest.raises(HostCallError, match=r"each op is a list"):
        await run.call("batch", [["set"]])
    assert await run.call("get", ["a"]) is None
    assert await run.call("get", ["b"]) is None
    assert run.pending_writes == 1
    await run.commit()
    reader = session()
    assert await reader.call("get", ["a"]) is None
    assert await reader.call("get", ["before"]) == 1


async def test_load_rows_reads_several_keys_even_expired(
    store: Store, tenant: TenantId, clock: FakeClock,
) -> None:
    await store.kv.apply(tenant, [KVSet("a", "k", 1), KVSet("b", "k", 2, expires_at=clock.now)],
                         now=clock.now)
    rows, stored = await store.kv.load_rows(tenant, [("a", "k"), ("b", "k"), ("c", "k")])
    assert stored == 2
    assert sorted(rows) == [("a", "k"), ("b", "k")]
    assert rows["b", "k"].value == 2
    assert await store.kv.load_row(tenant, "c", "k") == (None, 2)


async def test_store_apply_is_all_or_nothing(store: Store, tenant: TenantId,
                                             clock: FakeClock) -> None:
    await store.kv.apply(tenant, [KVSet("default", "text", "x")], now=clock.now)
    with pytest.raises(HostCallError):
        await store.kv.apply(tenant, [KVSet("default", "a", 1), KVIncr("default", "text", 1)],
                             now=clock.now)
    assert await store.kv.get(tenant, "default", "a", now=clock.now) is None
    results = await store.kv.apply(
        tenant, [KVSet("default", "a", 1), KVDelete("default", "a"), KVDelete("default", "a")],
        now=clock.now)
    assert [type(result) for result in results][1:] == [bool, bool]
    assert results[1:] == [True, False]
    assert await store.kv.count(tenant, None, now=clock.now) == 1


# -- limits and validation ---------------------------------------------------------------------
async def test_key_limits(session: SessionFactory) -> None:
    run = session()
    await run.call("set", ["k" * 512, 1])
    await run.call("set", ["é" * 256, 1])  # 512 bytes of UTF-8
    with pytest.raises(KVSizeError, match="513 bytes; the limit is 512") as caught:
        await run.call("set", ["k" * 513, 1])
    assert caught.value.limit == "kv.key_size"
    assert isinstance(caught.value, HostCallError)
    assert isinstance(caught.value, LimitExceeded)
    with pytest.raises(HostCallError, match="514 bytes"):
        await run.call("get", ["é" * 257])
    for bad in ("", None, 5, ["k"], {"k": 1}):
        with pytest.raises(HostCallError, match="key must be a non-empty string"):
            await run.call("set", [bad, 1])
    with pytest.raises(HostCallError, match="NUL"):
        await run.call("set", ["a\x00b", 1])
    with pytest.raises(HostCallError, match="UTF-8"):
        await run.call("set", ["\ud800", 1])


async def test_value_limits(session: SessionFactory) -> None:
    limits = Limits(value_bytes=100)
    run = session(limits=limits)
    await run.call("set", ["fits", "x" * 98])  # 100 bytes with its quotes
    with pytest.raises(KVSizeError, match="101 bytes encoded; the limit is 100") as caught:
        await run.call("set", ["big", "x" * 99])
    assert caught.value.limit == "kv.value_size"
    default = session()
    await default.call("set", ["quarter", "x" * (256 * 1024 - 2)])
    with pytest.raises(KVSizeError):
        await default.call("set", ["over", "x" * (256 * 1024 - 1)])


@pytest.mark.parametrize(("value", "message"), [
    (None, "use delete"),
    (math.nan, "finite"),
    (math.inf, "finite"),
    ({"a": [1, math.nan]}, "finite"),
    ({1: "int key"}, "not a string"),
    ({"a": {2: "nested int key"}}, "not a string"),
    (object(), "JSON cannot hold"),
    ([b"bytes"], "JSON cannot hold"),
])
async def test_values_that_are_not_json_are_refused(
    session: SessionFactory, value: object, message: str,
) -> None:
    with pytest.raises(HostCallError, match=message):
        await session().call("set", ["k", value])


async def test_deep_and_cyclic_values_are_refused(session: SessionFactory) -> None:
    deep: list[object] = []
    node = deep
    for _ in range(150):
        child: list[object] = []
        node.append(child)
        node = child
    with pytest.raises(HostCallError, match="deeper"):
        await session().call("set", ["k", deep])
    cycle: list[object] = []
    cycle.append(cycle)
    with pytest.raises(HostCallError):
        await session().call("set", ["k", cycle])
    shared = {"x": 1}
    await session().call("set", ["k", [shared, shared]])  # shared, not cyclic: fine


@pytest.mark.parametrize(("args", "message"), [
    (["k", 1, "opts"], "opts must be a table"),
    (["k", 1, {"ttl": 0}], "opts.ttl must be a positive number"),
    (["k", 1, {"ttl": -1}], "opts.ttl must be a positive number"),
    (["k", 1, {"ttl": "10"}], "opts.ttl must be a number"),
    (["k", 1, {"ttl": True}], "opts.ttl must be a number"),
    (["k", 1, {"expires_at": "soon"}], "opts.expires_at must be a number"),
    (["k", 1, {"ttl": 1, "expires_at": 2}], "not both"),
    (["k", 1, {"resume": 1}], "opts.resume must be a boolean"),
    (["k", 1, {"scope": ""}], "opts.scope must be a non-empty string"),
    (["k", 1, {"scope": 7}], "opts.scope must be a non-empty string"),
    (["k", 1, {"scope": "s" * 65}], "65 bytes; the limit is 64"),
    (["k", 1, {"tll": 5}], "unknown option 'tll'"),
])
async def test_set_options_are_checked(
    session: SessionFactory, args: list[object], message: str,
) -> None:
    run = session()
    with pytest.raises(HostCallError, match=message):
        await run.call("set", args)
    assert run.pending_writes == 0


async def test_empty_options_in_either_shape(session: SessionFactory) -> None:
    run = session()
    await run.call("set", ["k", 1, []])
    await run.call("set", ["j", 1, {}])
    assert await run.call("get", ["k", []]) == 1
    assert await run.call("count", [{}]) == 2
    assert await run.call("count", [[]]) == 2
    await run.call("set", ["s", 1, {"scope": "s" * 64}])


@pytest.mark.parametrize(("opts", "message"), [
    ({"limit": 0}, "from 1 to 100"),
    ({"limit": 101}, "from 1 to 100"),
    ({"limit": 2.5}, "from 1 to 100"),
    ({"limit": "10"}, "must be a number"),
    ({"after": 5}, "opts.after must be a key"),
    ({"ttl": 5}, "unknown option 'ttl'"),
])
async def test_find_options_are_checked(
    session: SessionFactory, opts: dict[str, object], message: str,
) -> None:
    with pytest.raises(HostCallError, match=message):
        await session().call("find", ["", opts])


async def test_find_accepts_a_whole_float_limit(session: SessionFactory) -> None:
    assert await session().call("find", ["", {"limit": 10.0}]) == []


async def test_keys_per_tenant(session: SessionFactory, clock: FakeClock) -> None:
    limits = Limits(keys_per_tenant=3)
    run = session(limits=limits)
    for key in ("a", "b", "c"):
        await run.call("set", [key, 1])
    with pytest.raises(LimitExceeded, match="at most 3 keys") as caught:
        await run.call("set", ["d", 1])
    assert caught.value.limit == "kv.keys"
    await run.call("set", ["a", 2])  # overwriting is no new key
    await run.call("incr", ["b"])
    await run.commit()
    run = session(limits=limits)
    with pytest.raises(LimitExceeded):
        await run.call("set", ["d", 1, {"scope": "other"}])  # the limit spans scopes
    with pytest.raises(LimitExceeded):
        await run.call("incr", ["d"])
    with pytest.raises(LimitExceeded):
        await run.call("batch", [[["delete", "a"], ["set", "d", 1], ["set", "e", 1]]])
    await run.call("delete", ["a"])
    await run.call("set", ["d", 1])  # room again
    await run.commit()
    # Expired keys do not count, even before anything deleted them.
    run = session(limits=limits)
    await run.call("set", ["c", 1, {"ttl": 1}])
    await run.commit()
    clock.advance(2)
    run = session(limits=limits)
    await run.call("set", ["e", 1])
    await run.commit()
    assert await session().call("count", []) == 3


async def test_the_store_enforces_the_key_limit_at_commit(
    store: Store, tenant: TenantId, session: SessionFactory, clock: FakeClock,
) -> None:
    limits = Limits(keys_per_tenant=2)
    first, second = session(limits=limits), session(limits=limits)
    await first.call("set", ["a", 1])
    await first.call("set", ["b", 1])
    await second.call("set", ["c", 1])  # both runs saw room for their keys
    await first.commit()
    with pytest.raises(LimitExceeded):
        await second.commit()
    assert await store.kv.count(tenant, None, now=clock.now) == 2
    with pytest.raises(LimitExceeded):
        await store.kv.apply(tenant, [KVSet("x", "y", 1)], now=clock.now, max_keys=2)


async def test_a_run_cannot_buffer_without_bound(store: Store, tenant: TenantId) -> None:
    run = KVSession(store.kv, tenant, Limits(), GcraLimiter({}), max_pending_bytes=1000)
    await run.call("set", ["a", "x" * 500])
    with pytest.raises(LimitExceeded, match="buffer at most 1000 bytes"):
        await run.call("set", ["b", "x" * 500])


async def test_rate_limit(session: SessionFactory) -> None:
    now = [0.0]
    limiter = GcraLimiter({"kv": Rate(burst=3, per_second=10)}, clock=lambda: now[0])
    run = session(limiter=limiter)
    for _ in range(3):
        await run.call("get", ["k"])
    with pytest.raises(LimitExceeded, match=r"rate limit for bucket kv exceeded; retry in 0\.100 s"
                       ) as caught:
        await run.call("get", ["k"])
    assert caught.value.limit == "rate.kv"
    assert caught.value.retry_after == pytest.approx(0.1)
    now[0] += 0.1
    await run.call("set", ["k", 1])
    with pytest.raises(LimitExceeded):
        await run.call("batch", [[["set", "a", 1], ["set", "b", 1]]])  # costs 2
    now[0] += 0.2
    await run.call("batch", [[["set", "a", 1], ["set", "b", 1]]])
    # Another tenant sharing the limiter has its own bucket.
    other = session(for_tenant=TenantId.user(1), limiter=limiter)
    await other.call("get", ["k"])


async def test_unknown_operations_and_missing_arguments(session: SessionFactory) -> None:
    run = session()
    with pytest.raises(HostCallError, match="no operation 'drop'"):
        await run.call("drop", [])
    with pytest.raises(HostCallError, match="key must be"):
        await run.call("get", [])
    with pytest.raises(HostCallError, match="use delete"):
        await run.call("set", ["k"])
    with pytest.raises(HostCallError, match="batch takes a list"):
        await run.call("batch", ["nope"])
    with pytest.raises(HostCallError, match="at most 100 ops"):
        await run.call("batch", [[["delete", "k"]] * 101])
    assert await run.call("count", []) == 0
