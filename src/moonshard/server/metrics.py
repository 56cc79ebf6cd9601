"""The service's Prometheus metrics, in a registry the app owns (never the global one).

``Metrics`` is also the engine's ``DispatchObserver``: it counts every dispatch by outcome,
times it, and keeps small per-tenant counters for ``GET /v1/tenants/{tenant}``. Worker
figures (resident VMs, memory, queues, restarts) are read from ``engine.status()`` at each
scrape. ``observe_timer_lateness`` is the hook the durable timers feed.

Metric names:

| name | kind | labels |
| --- | --- | --- |
| ``moonshard_dispatches_total`` | counter | ``outcome`` (see ``dispatch_outcome``) |
| ``moonshard_dispatch_seconds`` | histogram | (dispatches a worker answered) |
| ``moonshard_events_dropped_total`` | counter | ``reason``: no_subscriber, no_tenant |
| ``moonshard_timer_lateness_seconds`` | histogram | fed by ``observe_timer_lateness`` |
| ``moonshard_timers_held`` / ``moonshard_timers_fired_total`` | gauge / counter | ``worker`` |
| ``moonshard_timer_batches_total`` | counter | ``worker`` |
| ``moonshard_timer_lateness_p50_seconds`` / ``_p99_seconds`` | gauge | ``worker`` |
| ``moonshard_http_requests_total`` | counter | ``method``, ``route``, ``status`` |
| ``moonshard_worker_up`` / ``moonshard_worker_healthy`` | gauge | ``worker`` |
| ``moonshard_worker_restarts_total`` | counter | ``worker`` |
| ``moonshard_resident_vms`` / ``moonshard_vm_memory_bytes`` | gauge | ``worker`` |
| ``moonshard_queue_depth`` | gauge | ``worker`` (events queued in its mailboxes) |
| ``moonshard_background_dispatches`` | gauge | dispatches accepted without waiting, not done |
| ``moonshard_log_followers`` | gauge | open ``logs?follow=true`` streams |
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from moonshard.errors import Overloaded, TenantQuarantined, WorkerCrashed, WorkerUnavailable

if TYPE_CHECKING:
    from moonshard.contracts.worker import DispatchReply
    from moonshard.events import Event
    from moonshard.tenants import TenantId

__all__ = ["CONTENT_TYPE", "Metrics", "TenantCounters", "dispatch_outcome"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0)
_LATENESS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


def dispatch_outcome(reply: DispatchReply | None, error: BaseException | None) -> str:
    """The ``outcome`` label of one dispatch: ok, handler_error, no_subscriber, overloaded,
    worker_crashed, worker_unavailable, quarantined, cancelled or error."""
    if reply is not None:
        if reply.dropped is not None:
            return "no_subscriber"
        return "ok" if all(result.ok for result in reply.results) else "handler_error"
    if isinstance(error, TenantQuarantined):
        return "quarantined"
    if isinstance(error, Overloaded):
        return "overloaded"
    if isinstance(error, WorkerCrashed):
        return "worker_crashed"
    if isinstance(error, WorkerUnavailable):
        return "worker_unavailable"
    if isinstance(error, asyncio.CancelledError):
        return "cancelled"
    return "error"


@dataclasses.dataclass(slots=True)
class TenantCounters:
    """What the service counted for one tenant since it started."""

    dispatched: int = 0
    ok: int = 0
    handler_errors: int = 0
    dropped: int = 0
    failed: int = 0

    def to_json(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class _WorkerCollector(Collector):
    """Serves the worker figures of the last ``engine.status()`` snapshot."""

    def __init__(self) -> None:
        self.workers: Sequence[Mapping[str, Any]] = ()
        self.background = 0
        self.followers = 0

    def collect(self) -> Iterator[Metric]:
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            "up": GaugeMetricFamily("moonshard_worker_up", "1 while the worker runs",
                                    labels=["worker"]),
            "healthy": GaugeMetricFamily(
                "moonshard_worker_healthy", "1 while the worker is within its restart budget",
                labels=["worker"]),
            "restarts": CounterMetricFamily("moonshard_worker_restarts",
                                            "Times the worker was restarted after it ended",
                                            labels=["worker"]),
            "resident_vms": GaugeMetricFamily("moonshard_resident_vms",
                                              "Tenant VMs resident in the worker",
                                              labels=["worker"]),
            "vm_memory_bytes": GaugeMetricFamily("moonshard_vm_memory_bytes",
                                                 "Memory used by the worker's tenant VMs",
                                                 labels=["worker"]),
            "queued": GaugeMetricFamily("moonshard_queue_depth",
                                        "Events queued in the worker's tenant mailboxes",
                                        labels=["worker"]),
        }
        # The workers' own timer figures (a worker may be another process: it reports them).
        timer_families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            "held": GaugeMetricFamily("moonshard_timers_held",
                                      "Timers the worker holds in memory (the next window)",
                                      labels=["worker"]),
            "fired": CounterMetricFamily("moonshard_timers_fired",
                                         "Timers the worker fired", labels=["worker"]),
            "batches": CounterMetricFamily(
                "moonshard_timer_batches", "Mailbox jobs the worker fired its timers in",
                labels=["worker"]),
            "lateness_p50": GaugeMetricFamily(
                "moonshard_timer_lateness_p50_seconds",
                "Median lateness of the worker's recent first firings", labels=["worker"]),
            "lateness_p99": GaugeMetricFamily(
                "moonshard_timer_lateness_p99_seconds",
                "99th percentile lateness of the worker's recent first firings",
                labels=["worker"]),
        }
        for worker in self.workers:
            label = [str(worker.get("index", "?"))]
            _add(families, worker, label)
            timers = worker.get("timers")
            if isinstance(timers, Mapping):
                _add(timer_families, timers, label)
        yield from families.values()
        yield from timer_families.values()
        yield GaugeMetricFamily("moonshard_background_dispatches",
                                "Dispatches accepted without waiting and not finished",
                                value=self.background)
        yield GaugeMetricFamily("moonshard_log_followers", "Open log follow streams",
                                value=self.followers)


def _add(families: Mapping[str, GaugeMetricFamily | CounterMetricFamily],
         values: Mapping[str, Any], label: list[str]) -> None:
    """Adds each family's value from ``values`` (by the family's key), when it is a number."""
    for key, family in families.items():
        value = values.get(key)
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, int | float):
            family.add_metric(label, float(value))


class Metrics:
    """The service's metrics and the engine's dispatch observer."""

    def __init__(self, *, max_tenants: int = 10_000) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._dispatches = Counter("moonshard_dispatches", "Dispatches by outcome",
                                   ["outcome"], registry=self.registry)
        self._dispatch_seconds = Histogram(
            "moonshard_dispatch_seconds", "Time from dispatch to the worker's answer",
            buckets=_LATENCY_BUCKETS, registry=self.registry)
        self._dropped = Counter("moonshard_events_dropped",
                                "Events dropped before any VM: no tenant or no subscriber",
                                ["reason"], registry=self.registry)
        self._timer_lateness = Histogram(
            "moonshard_timer_lateness_seconds", "How late a durable timer fired after its due "
            "time", buckets=_LATENESS_BUCKETS, registry=self.registry)
        self._http = Counter("moonshard_http_requests", "HTTP API requests",
                             ["method", "route", "status"], registry=self.registry)
        self._workers = _WorkerCollector()
        self.registry.register(self._workers)
        self._max_tenants = max_tenants
        self._tenants: collections.OrderedDict[TenantId, TenantCounters] = \
            collections.OrderedDict()

    # -- the engine's observer -------------------------------------------------------------
    def dispatch_finished(
        self, tenant: TenantId, event: Event, reply: DispatchReply | None,
        error: BaseException | None, seconds: float,
    ) -> None:
        outcome = dispatch_outcome(reply, error)
        self._dispatches.labels(outcome).inc()
        if reply is not None:
            self._dispatch_seconds.observe(seconds)
        counters = self._counters(tenant)
        counters.dispatched += 1
        if outcome == "no_subscriber":
            self._dropped.labels("no_subscriber").inc()
            counters.dropped += 1
        elif outcome == "ok":
            counters.ok += 1
        elif outcome == "handler_error":
            counters.handler_errors += 1
        else:
            counters.failed += 1

    # -- other feeds -----------------------------------------------------------------------
    def observe_timer_lateness(self, seconds: float) -> None:
        """For the durable timers: how long after its due time a timer was dispatched."""
        self._timer_lateness.observe(max(0.0, seconds))

    def event_dropped(self, reason: str, tenant: TenantId | None = None) -> None:
        """An event dropped before reaching a worker (``no_tenant``, ``no_subscriber``)."""
        self._dropped.labels(reason).inc()
        if tenant is not None:
            self._counters(tenant).dropped += 1

    def http_request(self, method: str, route: str, status: int) -> None:
        self._http.labels(method, route, str(status)).inc()

    def update_workers(self, workers: Sequence[Mapping[str, Any]], *, background: int,
                       followers: int) -> None:
        """The worker snapshot the next scrape reports."""
        self._workers.workers = tuple(workers)
        self._workers.background = background
        self._workers.followers = followers

    # -- reading ---------------------------------------------------------------------------
    def tenant_counters(self, tenant: TenantId) -> TenantCounters:
        return self._tenants.get(tenant) or TenantCounters()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def _counters(self, tenant: TenantId) -> TenantCounters:
        counters = self._tenants.get(tenant)
        if counters is None:
            counters = self._tenants[tenant] = TenantCounters()
            while len(self._tenants) > self._max_tenants:
                self._tenants.popitem(last=False)
        else:
            self._tenants.move_to_end(tenant)
        return counters
