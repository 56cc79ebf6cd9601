"""Per-tenant rate limits: the generic cell rate algorithm (GCRA), one bucket per action family.

GCRA keeps one number per bucket, the theoretical arrival time (TAT) of the next request if
requests came exactly at the sustained rate. A request of cost ``n`` is allowed when
``max(TAT, now) + n * interval - burst * interval <= now``; it then moves TAT to
``max(TAT, now) + n * interval``. This allows ``burst`` requests at once and ``per_second``
sustained, with no timer and no refill loop. The limiter belongs to whoever owns the tenant
(held outside the VM, so a rebuilt VM does not reset it).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from types import MappingProxyType

from moonshard.errors import LimitExceeded

__all__ = ["DEFAULT_RATES", "GcraLimiter", "Rate"]


@dataclasses.dataclass(frozen=True, slots=True)
class Rate:
    """``burst`` requests at once, refilling at ``per_second``."""

    burst: int
    per_second: float

    def __post_init__(self) -> None:
        if self.burst < 1 or not self.per_second > 0:
            raise ValueError("a rate needs a burst of at least 1 and a positive per_second")

    @property
    def interval(self) -> float:
        return 1.0 / self.per_second


DEFAULT_RATES: Mapping[str, Rate] = MappingProxyType({
    "kv": Rate(burst=500, per_second=5000.0),
    # ctx.discord (TEMPLATES.md): every action together 20 per 5 s; ban and kick together
    # 5 per 30 s and 10 per 75 s (two families, one bucket to the template); send_message
    # 30 per 10 s; respond and followup 10 per 3 s, outside the all-actions bucket.
    "discord.actions": Rate(burst=20, per_second=20 / 5),
    "discord.moderation": Rate(burst=5, per_second=5 / 30),
    "discord.moderation.sustained": Rate(burst=10, per_second=10 / 75),
    "discord.send_message": Rate(burst=30, per_second=30 / 10),
    "discord.interactions": Rate(burst=10, per_second=10 / 3),
})
"""Defaults per action family (TEMPLATES.md). Families without a rate are not limited."""

# Forget buckets that have fully refilled once this many are held: a fresh bucket is the same.
_PRUNE_AT = 4096


class GcraLimiter:
    """GCRA buckets keyed by (family, key). Thread-safe: a worker's event loop and its Lua
    threads (where ``ctx.kv`` reads are answered at once) take from the same buckets."""

    __slots__ = ("_clock", "_lock", "_rates", "_tat")

    def __init__(
        self, rates: Mapping[str, Rate] = DEFAULT_RATES, *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rates = MappingProxyType(dict(rates))
        self._clock = clock
        self._tat: dict[tuple[str, Hashable], float] = {}
        # Each take reads and writes a bucket, and pruning walks them all: one at a time.
        self._lock = threading.Lock()

    def rate(self, family: str) -> Rate | None:
        return self._rates.get(family)

    def try_acquire(self, family: str, cost: int = 1, *, key: Hashable = None) -> float:
        """Takes ``cost`` from the bucket: 0.0 if allowed, else the seconds to wait (nothing
        taken). A cost above the burst is charged as a full burst, or it could never pass."""
        rate = self._rates.get(family)
        if rate is None:
            return 0.0
        with self._lock:
            return self._take(family, rate, cost, key)

    def _take(self, family: str, rate: Rate, cost: int, key: Hashable) -> float:
        now = self._clock()
        interval = rate.interval
        bucket = (family, key)
        tat = max(self._tat.get(bucket, now), now)
        new_tat = tat + min(cost, rate.burst) * interval
        allowed_at = new_tat - rate.burst * interval
        # The tolerance absorbs float rounding of TAT sums, so exactly `burst` calls at one
        # instant all pass.
        if allowed_at > now + interval * 1e-6:
            return allowed_at - now
        if len(self._tat) >= _PRUNE_AT:
            self._prune(now)
        self._tat[bucket] = new_tat
        return 0.0

    def try_acquire_all(self, families: Sequence[str], *, key: Hashable = None,
                        ) -> tuple[str, float] | None:
        """Takes one from every family's bucket, or from none: ``None`` if all allowed, else
        the family with the longest wait and that wait (nothing taken)."""
        with self._lock:
            return self._take_all(families, key)

    def _take_all(self, families: Sequence[str], key: Hashable) -> tuple[str, float] | None:
        now = self._clock()
        worst: tuple[str, float] | None = None
        planned: list[tuple[tuple[str, Hashable], float]] = []
        for family in families:
            rate = self._rates.get(family)
            if rate is None:
                continue
            bucket = (family, key)
            new_tat = max(self._tat.get(bucket, now), now) + rate.interval
            wait = new_tat - rate.burst * rate.interval - now
            if wait > rate.interval * 1e-6 and (worst is None or wait > worst[1]):
                worst = (family, wait)
            planned.append((bucket, new_tat))
        if worst is not None:
            return worst
        if len(self._tat) >= _PRUNE_AT:
            self._prune(now)
        for bucket, new_tat in planned:
            self._tat[bucket] = new_tat
        return None

    def acquire(self, family: str, cost: int = 1, *, key: Hashable = None) -> None:
        """Like ``try_acquire``, but raises ``LimitExceeded("rate.<family>")`` when over."""
        wait = self.try_acquire(family, cost, key=key)
        if wait > 0.0:
            raise LimitExceeded(
                f"rate.{family}",
                f"rate limit for bucket {family} exceeded; retry in {wait:.3f} s",
                retry_after=wait)

    def _prune(self, now: float) -> None:
        for bucket in [bucket for bucket, tat in self._tat.items() if tat <= now]:
            del self._tat[bucket]
