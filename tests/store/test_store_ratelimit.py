"""The GCRA rate limiter, with an injected clock."""

from __future__ import annotations

import pytest

from moonshard.errors import LimitExceeded
from moonshard.host.ratelimit import DEFAULT_RATES, GcraLimiter, Rate


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_default_kv_rate() -> None:
    assert DEFAULT_RATES["kv"] == Rate(burst=500, per_second=5000.0)


def test_the_burst_passes_at_once_then_the_rate_refills() -> None:
    clock = Clock()
    limiter = GcraLimiter(clock=clock)
    for _ in range(500):
        assert limiter.try_acquire("kv") == 0.0
    wait = limiter.try_acquire("kv")
    assert wait == pytest.approx(1 / 5000)
    assert limiter.try_acquire("kv") == pytest.approx(wait)  # a refusal takes nothing
    clock.now += 1 / 5000
    assert limiter.try_acquire("kv") == 0.0
    assert limiter.try_acquire("kv") > 0.0
    # A full second refills 5000 calls' worth, capped at the burst.
    clock.now += 1.0
    allowed = 0
    while limiter.try_acquire("kv") == 0.0:
        allowed += 1
    assert allowed == 500


def test_sustained_rate() -> None:
    clock = Clock()
    limiter = GcraLimiter({"x": Rate(burst=1, per_second=10)}, clock=clock)
    allowed = 0
    for _ in range(1000):  # 1000 tries over 10 s, one every 10 ms
        if limiter.try_acquire("x") == 0.0:
            allowed += 1
        clock.now += 0.01
    assert allowed == 100


def test_cost_and_retry_after() -> None:
    clock = Clock()
    limiter = GcraLimiter({"x": Rate(burst=10, per_second=2)}, clock=clock)
    assert limiter.try_acquire("x", 8) == 0.0
    assert limiter.try_acquire("x", 3) == pytest.approx(0.5)
    assert limiter.try_acquire("x", 2) == 0.0
    # A cost above the burst is charged as a full burst (it could never pass otherwise).
    clock.now += 100
    assert limiter.try_acquire("x", 50) == 0.0
    assert limiter.try_acquire("x", 1) == pytest.approx(0.5)


def test_acquire_raises_a_named_limit() -> None:
    clock = Clock()
    limiter = GcraLimiter({"kv": Rate(burst=2, per_second=1000 / 12)}, clock=clock)
    limiter.acquire("kv")
    limiter.acquire("kv")
    with pytest.raises(LimitExceeded) as caught:
        limiter.acquire("kv")
    assert str(caught.value) == "rate limit for bucket kv exceeded; retry in 0.012 s"
    assert caught.value.limit == "rate.kv"
    assert caught.value.retry_after == pytest.approx(0.012)


def test_buckets_and_keys_are_independent() -> None:
    clock = Clock()
    limiter = GcraLimiter({"a": Rate(1, 1), "b": Rate(1, 1)}, clock=clock)
    assert limiter.try_acquire("a") == 0.0
    assert limiter.try_acquire("a") > 0
    assert limiter.try_acquire("b") == 0.0
    assert limiter.try_acquire("a", key="tenant-2") == 0.0
    assert limiter.try_acquire("unlimited", 10**6) == 0.0  # families without a rate
    assert limiter.rate("unlimited") is None


def test_refilled_buckets_are_forgotten() -> None:
    clock = Clock()
    limiter = GcraLimiter({"a": Rate(1, 1)}, clock=clock)
    for key in range(5000):
        limiter.try_acquire("a", key=key)
    clock.now += 2
    limiter.try_acquire("a", key="new")
    assert len(limiter._tat) < 5000


@pytest.mark.parametrize(("burst", "per_second"), [(0, 1.0), (1, 0.0), (1, -1.0)])
def test_bad_rates(burst: int, per_second: float) -> None:
    with pytest.raises(ValueError, match="rate"):
        Rate(burst, per_second)
