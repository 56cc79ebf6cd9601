"""The log book over a real store (the suite's database): batches, threads, filters,
followers, slow readers, retention, and lines that survive the book (a restart)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from pathlib import Path

from service_support import SUITE

from moonshard.server.logbook import LogBook, LogLine
from moonshard.store import open_store
from moonshard.store.api import Store
from moonshard.store.tenantlog import LogQuery
from moonshard.tenants import TenantId

A, B = TenantId.guild(1), TenantId.guild(2)


@contextlib.asynccontextmanager
async def running(book: LogBook, store: Store) -> AsyncIterator[LogBook]:
    book.attach(store.logs)
    task = asyncio.create_task(book.run(store.logs))
    try:
        yield book
    finally:
        book.stop()
        await task


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_lines_are_stored_bounded_and_survive_the_book(tmp_path: Path) -> None:
    url = SUITE.database_url(tmp_path)
    async with await open_store(url) as store, running(LogBook(keep_lines=3), store) as book:
        for number in range(5):
            book(A, "info", "t", f"line {number}")
        book(A, "error", "t", "bad")
        await settle()
        assert [line.message for line in await book.recent(A, 10)] == [
            "line 3", "line 4", "bad"]
        assert [line.message for line in await book.recent(A, 1)] == ["bad"]
        assert [line.message for line in await book.recent_errors(A)] == ["bad"]
        assert await book.recent(B, 10) == []
        book(A, "info", "t", "written just before the stop")
    # A new book over the same database: a restart of the service.
    async with await open_store(url) as store, running(LogBook(), store) as book:
        assert [line.message for line in await book.recent(A, 10)] == [
            "line 4", "bad", "written just before the stop"]


async def test_filters_and_lines_from_other_threads(tmp_path: Path) -> None:
    async with await open_store(SUITE.database_url(tmp_path)) as store, \
            running(LogBook(), store) as book:

        def write(level: str) -> None:
            for number in range(100):
                book(A, level, f"t-{level}", str(number))

        threads = [threading.Thread(target=write, args=(level,))
                   for level in ("debug", "info", "warn", "error")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        await settle()
        assert len(await book.recent(A, 1000)) == 400
        warn_up = await book.recent(A, 1000, LogQuery(levels=("warn", "error")))
        assert {line.level for line in warn_up} == {"warn", "error"}
        assert len(warn_up) == 200
        assert len(await book.recent(A, 1000, LogQuery(template="t-info"))) == 100


async def test_followers_get_stored_lines_once_and_end_when_the_book_closes(
        tmp_path: Path) -> None:
    async with await open_store(SUITE.database_url(tmp_path)) as store, \
            running(LogBook(), store) as book:
        book(A, "info", "t", "before")
        got: list[LogLine] = []
        backlogs: list[list[LogLine]] = []
        ready = asyncio.Event()

        async def follow() -> None:
            async with book.follow(A, LogQuery(levels=("info", "warn")), 10) as (lines,
                                                                                 follower):
                backlogs.append(lines)
                ready.set()
                async for line in follower:
                    got.append(line)

        task = asyncio.create_task(follow())
        await ready.wait()
        assert book.follower_count == 1
        book(A, "info", "t", "one")
        book(B, "info", "t", "not mine")
        book(A, "error", "t", "filtered out")
        book(A, "warn", "t", "two")
        await book.flush()
        book.close()
        await asyncio.wait_for(task, 5)
        assert [line.message for line in backlogs[0]] == ["before"]
        assert [(line.level, line.message) for line in got] == [("info", "one"),
                                                                ("warn", "two")]
        assert got[0].id > backlogs[0][0].id
        assert book.follower_count == 0
        async with book.follow(A, LogQuery(), 0) as (lines, late):
            assert lines == []
            assert [line async for line in late] == []


async def test_a_slow_follower_loses_lines_with_a_note(tmp_path: Path) -> None:
    book = LogBook(follower_queue=5)
    async with await open_store(SUITE.database_url(tmp_path)) as store, \
            running(book, store), book.follow(A, LogQuery(), 0) as (_, follower):
        lines = aiter(follower)
        for number in range(20):
            book(A, "info", "t", str(number))
        await settle()
        await book.flush()
        first = [(await anext(lines)).message for _ in range(3)]
        book(A, "info", "t", "after")
        await settle()
        await book.flush()
        book.close()
        rest = [line.message async for line in lines]
    assert first == ["0", "1", "2"]
    assert rest == ["17 lines skipped: reading too slowly", "after"]
