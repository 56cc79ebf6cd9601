"""The store benchmark's baseline: the SQLite store's hot-path SQL run directly on the calling
thread, with no thread hand-off, no overlay and no transaction grouping (the limit the
store could reach on one connection)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

from moonshard.store.sqlite import _KV_GET, _KV_INSERT, _KV_ROW, _KV_UPDATE
from moonshard.tenants import TenantId
from moonshard.values import dumps_json, loads_json

__all__ = ["sqlite_baseline", "sqlite_point_reads"]


def sqlite_baseline(path: Path, tenant: TenantId, seconds: float) -> tuple[float, float]:
    """(write transactions per second, gets per second), each measured for ``seconds``.

    Blocking: call it from a thread. Writes keys ``raw:<n>`` of ``tenant``.
    """
    conn = sqlite3.connect(path, isolation_level=None, timeout=10.0)
    kind, tenant_id = tenant.kind, tenant.id
    try:
        conn.execute("PRAGMA synchronous=NORMAL")
        done = 0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            key = f"raw:{done % 1000}"
            now = time.time()
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute(_KV_ROW, (kind, tenant_id, "default", key)).fetchone()
            # The last column is num_value (the leaderboard index), as the store keeps it.
            if row is None:
                conn.execute(_KV_INSERT, (kind, tenant_id, "default", key, dumps_json(done), 1,
                                          now, now, None, 0, float(done)))
            else:
                conn.execute(_KV_UPDATE, (dumps_json(done), row[1] + 1, row[2], now, None, 0,
                                          float(done), kind, tenant_id, "default", key))
            conn.execute("COMMIT")
            done += 1
        commits = done / (time.perf_counter() - started)
        gets = _point_reads(conn, tenant, [f"raw:{index}" for index in range(1000)], seconds)
    finally:
        conn.close()
    return round(commits, 1), round(gets, 1)


def sqlite_point_reads(path: Path, tenant: TenantId, keys: Sequence[str],
                       seconds: float) -> float:
    """Point reads per second of ``keys`` (scope ``default``), in turn, on a connection of
    the calling thread: the store's own read SQL and value decoding, nothing else. Blocking."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=10.0)
    try:
        return round(_point_reads(conn, tenant, keys, seconds), 1)
    finally:
        conn.close()


def _point_reads(conn: sqlite3.Connection, tenant: TenantId, keys: Sequence[str],
                 seconds: float) -> float:
    kind, tenant_id = tenant.kind, tenant.id
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        key = keys[done % len(keys)]
        found = conn.execute(_KV_GET, (kind, tenant_id, "default", key, time.time())).fetchone()
        if found is not None:
            loads_json(found[0])
        done += 1
    return done / (time.perf_counter() - started)
