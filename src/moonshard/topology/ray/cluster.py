"""The Ray cluster a pool runs on: connected to (``RAY_ADDRESS``) or started here, and left.

Ray itself is imported only here, when a pool of the ray topology starts: it is an optional
extra (``pip install 'moonshard[ray]'``) and heavy to import.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import uuid
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from moonshard.errors import ConfigurationError
from moonshard.topology.ray.actor import SlotActor
from moonshard.topology.ray.options import RayOptions

__all__ = ["RayCluster"]


class RayCluster:
    """One pool's hold on Ray: it shuts down only the local Ray it started itself."""

    def __init__(self, options: RayOptions) -> None:
        self.options = options
        # In every actor name, so two pools (two servers, two engines) on one cluster never
        # share a slot. Random, not derived from anything secret.
        self.pool_id = uuid.uuid4().hex[:12]
        self._ray: ModuleType | None = None
        self._actor_class: Any = None
        self._started_here = False

    @property
    def ray(self) -> ModuleType:
        assert self._ray is not None, "connect() first"
        return self._ray

    def connect(self, workers: int) -> str:
        """Joins the cluster (or starts a local Ray); returns what it did, to be said."""
        try:
            import ray  # noqa: PLC0415 - the optional extra, imported when used
        except ImportError:
            raise ConfigurationError("the ray topology needs Ray: pip install "
                                     "'moonshard[ray]'") from None
        self._ray = ray
        if ray.is_initialized():
            return "using the Ray this process is already connected to"
        address = self.options.address
        if address is not None:
            try:
                with _signals_kept():
                    ray.init(address=address, logging_level=logging.WARNING)
            except (ConnectionError, RuntimeError, ValueError) as error:
                reason = str(error).strip().splitlines()[0] if str(error).strip() else \
                    type(error).__name__
                raise ConfigurationError(
                    f"cannot join the Ray cluster at {address}: {reason}") from None
            nodes = [node for node in ray.nodes() if node.get("Alive")]
            cpus = ray.cluster_resources().get("CPU", 0)
            return f"joined the Ray cluster at {address} ({len(nodes)} nodes, {cpus:g} CPUs)"
        cpus = self.options.local_cpus or max(os.cpu_count() or 1,
                                              int(workers * self.options.num_cpus + 0.999))
        # "local": a new Ray for this process, even when RAY_ADDRESS is in the environment.
        with _signals_kept():
            ray.init(address="local", num_cpus=cpus, include_dashboard=False,
                     object_store_memory=self.options.local_object_store_bytes,
                     logging_level=logging.WARNING)
        self._started_here = True
        return (f"started a local Ray ({cpus} CPUs) for the workers; set RAY_ADDRESS to run "
                "them on a cluster")

    def actor_name(self, index: int) -> str:
        return f"moonshard-{self.pool_id}-worker-{index}"

    @property
    def actor_class(self) -> Any:
        if self._actor_class is None:
            self._actor_class = self.ray.remote(SlotActor)
        return self._actor_class

    def disconnect(self) -> None:
        if self._started_here and self._ray is not None:
            self._ray.shutdown()
            self._started_here = False


@contextlib.contextmanager
def _signals_kept() -> Iterator[None]:
    """``ray.init`` makes SIGTERM exit the process at once; the server's own handler (drain,
    then stop) must stay."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    kept = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if kept is not None:
            signal.signal(signal.SIGTERM, kept)
