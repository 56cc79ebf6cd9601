"""The Ray topology: each worker slot a named Ray actor, placed by Ray's scheduler."""

from __future__ import annotations

from moonshard.topology.ray.options import RayOptions

__all__ = ["RayOptions"]
