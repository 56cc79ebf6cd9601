"""Ray for the ray topology's tests: one local Ray per test module, shared by its tests.

Ray is a test dependency (``pip install -e '.[test]'``): without it these tests fail, never
skip. They need PostgreSQL too (the ray topology refuses SQLite).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import ray

from tests.support import database_urls


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    # Small: two cores shared with other work; the CPUs are Ray's scheduling tokens only.
    ray.init(address="local", num_cpus=4, object_store_memory=80 * 1024 * 1024,
             include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture
async def postgres(tmp_path: Path) -> AsyncIterator[str]:
    async for url in database_urls("postgres", tmp_path):
        yield url
