"""``open_store``: choosing the store by the URL, and the pure rules shared by both stores."""

from __future__ import annotations

from pathlib import Path

import pytest

from moonshard.errors import HostCallError, StoreUnavailable
from moonshard.store import open_store, sqlite_path
from moonshard.store.kvlogic import INT64_MAX, add_number, prefix_end
from moonshard.store.postgres import PostgresStore, split_schema
from moonshard.store.sqlite import SqliteStore
from moonshard.tenants import TenantId


async def test_sqlite_relative_path_creates_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    store = await open_store("sqlite:///./moonshard-data/sub/moonshard.db")
    try:
        assert isinstance(store, SqliteStore)
        assert (tmp_path / "moonshard-data" / "sub" / "moonshard.db").is_file()
    finally:
        await store.close()


async def test_sqlite_absolute_path_and_options(tmp_path: Path) -> None:
    store = await open_store(f"sqlite:///{tmp_path}/abs.db?synchronous=full&busy_timeout=2")
    await store.close()
    assert (tmp_path / "abs.db").is_file()


async def test_a_path_that_cannot_be_opened_fails_cleanly(tmp_path: Path) -> None:
    (tmp_path / "folder.db").mkdir()
    with pytest.raises(StoreUnavailable) as caught:
        await open_store(f"sqlite:///{tmp_path}/folder.db")
    assert str(tmp_path / "folder.db") in str(caught.value)
    assert "unable to open the database file" in str(caught.value)


async def test_a_closed_store_refuses_calls(tmp_path: Path) -> None:
    store = await open_store(f"sqlite:///{tmp_path}/x.db")
    await store.close()
    await store.close()  # closing twice is fine
    with pytest.raises(RuntimeError, match="closed"):
        await store.kv.get(TenantId.guild(1), "default", "k", now=0.0)


def test_sqlite_paths() -> None:
    assert sqlite_path("sqlite:///relative/x.db") == (Path("relative/x.db"), {})
    assert sqlite_path("sqlite:////abs/x.db") == (Path("/abs/x.db"), {})
    assert sqlite_path("sqlite:///./moonshard-data/moonshard.db")[0] == Path(
        "moonshard-data/moonshard.db")
    assert sqlite_path("sqlite:///a%20b.db")[0] == Path("a b.db")


@pytest.mark.parametrize(("url", "message"), [
    ("mysql://user:secret@localhost/db", "unsupported DATABASE_URL scheme 'mysql': use"),
    ("moonshard.db", "DATABASE_URL has no scheme"),
    ("sqlite:///:memory:", "in-memory"),
    ("sqlite://host/x.db", "bad SQLite URL"),
    ("sqlite:///", "bad SQLite URL"),
    ("sqlite:///x.db?journal=off", "unknown SQLite URL option 'journal'"),
    ("sqlite:///x.db?synchronous=sometimes", "bad SQLite synchronous mode"),
    ("postgresql://postgres@127.0.0.1/test?schema=bad-name", "bad PostgreSQL schema"),
])
async def test_bad_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        await open_store(url)
    assert "secret" not in str(caught.value)


def test_the_schema_parameter_is_taken_out_of_the_url() -> None:
    assert split_schema("postgresql://postgres@127.0.0.1:5432/test?schema=t_abc") == (
        "postgresql://postgres@127.0.0.1:5432/test", "t_abc")
    assert split_schema("postgres://u@h/db?sslmode=disable&schema=s1") == (
        "postgres://u@h/db?sslmode=disable", "s1")
    assert split_schema("postgresql://u@h/db") == ("postgresql://u@h/db", None)


async def test_postgres_scheme_aliases(store_url: str) -> None:
    if not store_url.startswith("postgresql://"):
        return
    store = await open_store(store_url.replace("postgresql://", "postgres://", 1))
    try:
        assert isinstance(store, PostgresStore)
    finally:
        await store.close()


def test_prefix_end() -> None:
    assert prefix_end("") is None
    assert prefix_end("abc") == "abd"
    assert prefix_end("a\U0010ffff") == "b"
    assert prefix_end("\U0010ffff\U0010ffff") is None
    assert prefix_end("\ud7ff") == "\ue000"  # surrogates skipped


def test_add_number_follows_lua() -> None:
    assert add_number(1, 2, "k") == 3
    assert type(add_number(1, 2, "k")) is int
    assert add_number(1, 0.5, "k") == 1.5
    assert add_number(INT64_MAX - 1, 1, "k") == INT64_MAX
    with pytest.raises(HostCallError, match="overflows"):
        add_number(INT64_MAX, 1, "k")
    with pytest.raises(HostCallError, match="not finite"):
        add_number(1e308, 1e308, "k")
    with pytest.raises(HostCallError, match="table, not a number"):
        add_number([1], 1, "k")
