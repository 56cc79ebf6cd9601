"""The log book on its own: bounded retention, threads, followers, slow readers."""

from __future__ import annotations

import asyncio
import threading

from moonshard.server.logbook import LogBook, LogLine
from moonshard.tenants import TenantId

A, B, C = TenantId.guild(1), TenantId.guild(2), TenantId.guild(3)


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_lines_per_tenant_are_bounded_and_ordered() -> None:
    book = LogBook(lines_per_tenant=3)
    for number in range(5):
        book(A, "info", "t", f"line {number}")
    book(A, "error", "t", "bad")
    await settle()
    assert [line.message for line in book.recent(A, 10)] == ["line 3", "line 4", "bad"]
    assert [line.message for line in book.recent(A, 1)] == ["bad"]
    assert [line.message for line in book.recent_errors(A)] == ["bad"]
    assert book.recent(B, 10) == []


async def test_the_quietest_tenants_are_forgotten_first() -> None:
    book = LogBook(max_tenants=2)
    for tenant in (A, B, A, C):
        book(tenant, "info", "t", str(tenant))
    await settle()
    assert book.recent(B, 10) == []
    assert len(book.recent(A, 10)) == 2
    assert len(book.recent(C, 10)) == 1
    small = LogBook(max_bytes=1000)
    for tenant in (A, B, C):
        small(tenant, "info", "t", "x" * 400)
    await settle()
    assert small.recent(A, 10) == []
    assert small.recent(C, 10) != []


async def test_lines_written_from_other_threads_arrive() -> None:
    book = LogBook()

    def write() -> None:
        for number in range(100):
            book(A, "info", "t", str(number))

    threads = [threading.Thread(target=write) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    await settle()
    assert len(book.recent(A, 1000)) == 400


async def test_followers_get_new_lines_and_end_when_the_book_closes() -> None:
    book = LogBook()
    got: list[LogLine] = []

    async def follow() -> None:
        with book.follow(A) as follower:
            async for line in follower:
                got.append(line)

    task = asyncio.create_task(follow())
    await settle()
    assert book.follower_count == 1
    book(A, "info", "t", "one")
    book(B, "info", "t", "not mine")
    book(A, "warn", "t", "two")
    await settle()
    book.close()
    await asyncio.wait_for(task, 5)
    assert [(line.level, line.message) for line in got] == [("info", "one"), ("warn", "two")]
    assert book.follower_count == 0
    with book.follow(A) as late:
        assert [line async for line in late] == []


async def test_a_slow_follower_loses_lines_with_a_note() -> None:
    book = LogBook(follower_queue=5)
    with book.follow(A) as follower:
        lines = aiter(follower)
        for number in range(20):
            book(A, "info", "t", str(number))
        await settle()
        first = [(await anext(lines)).message for _ in range(3)]
        book(A, "info", "t", "after")
        await settle()
        book.close()
        rest = [line.message async for line in lines]
    assert first == ["0", "1", "2"]
    assert rest == ["17 lines skipped: reading too slowly", "after"]
