"""Handing items from any thread to one event loop, in batches.

One wake-up of the loop carries every item posted since the last, so a busy worker pays one
loop wake-up per batch (of finished Lua steps, of requests, of answers), not one per item.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["LoopBatches"]

_T = TypeVar("_T")


class LoopBatches(Generic[_T]):
    """Items posted from any thread, handed to ``take`` on ``loop`` in arrival order."""

    __slots__ = ("_items", "_lock", "_loop", "_scheduled", "_take")

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 take: Callable[[list[_T]], None]) -> None:
        self._loop = loop
        self._take = take
        self._lock = threading.Lock()
        self._items: list[_T] = []
        self._scheduled = False

    def post(self, item: _T) -> None:
        """From any thread: wakes the loop only if no wake-up is pending already. Raises
        RuntimeError when the loop is closed."""
        with self._lock:
            self._items.append(item)
            if self._scheduled:
                return
            self._scheduled = True
        self._loop.call_soon_threadsafe(self.flush)

    def flush(self) -> None:
        """On the loop: hands every posted item over."""
        with self._lock:
            items, self._items, self._scheduled = self._items, [], False
        if items:
            self._take(items)
