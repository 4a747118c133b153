"""Fixtures: the contract suite runs every test over memory, Redis and a SQLite file.

Redis three times: one server, a three-primary Redis Cluster (``redis+cluster://``) and
a Sentinel-watched master (``redis+sentinel://``), each topology started once per
session (see taskiq_flow_testing.topologies). The tests of what happens before a byte
leaves the client (value encoding, key and TTL validation) run on the single server
only: the topology changes where bytes go, not which bytes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from taskiq_flow.storage import BaseStorageAdapter, InMemoryStorageAdapter, SQLiteStorageAdapter

StorageFactory = Callable[..., BaseStorageAdapter]
BACKENDS = [
    "memory",
    "redis",
    "sqlite",
    pytest.param("redis-cluster", marks=[pytest.mark.redis, pytest.mark.redis_cluster]),
    pytest.param("redis-sentinel", marks=[pytest.mark.redis, pytest.mark.redis_sentinel]),
]
REDIS_URL_FIXTURES = {
    "redis": "redis_url",
    "redis-cluster": "redis_cluster_url",
    "redis-sentinel": "redis_sentinel_url",
}


TOPOLOGIES = {"redis-cluster", "redis-sentinel"}
CLIENT_SIDE_ONLY = {
    "test_round_trip",
    "test_any_value_round_trips",
    "test_nan_round_trips",
    "test_typed_get_mismatch",
    "test_bad_ttl",
    "test_bad_key",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the client-side-only contract tests on the Cluster and Sentinel."""
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_topology = callspec is not None and callspec.params.get("backend") in TOPOLOGIES
        name = getattr(item, "originalname", item.name)
        (drop if on_topology and name in CLIENT_SIDE_ONLY else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def make_storage(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[StorageFactory]:
    """Build adapters of the parametrised kind; every one is closed at teardown.

    Redis adapters share the test's (flushed) server; SQLite adapters share one real file.
    """
    made: list[BaseStorageAdapter] = []
    fixture = REDIS_URL_FIXTURES.get(backend)
    url = request.getfixturevalue(fixture) if fixture else None
    db_file = tmp_path / "storage.db"

    def factory(**options: Any) -> BaseStorageAdapter:
        adapter: BaseStorageAdapter
        if backend == "memory":
            adapter = InMemoryStorageAdapter(**options)
        elif url is not None:
            from taskiq_flow.storage.redis import RedisStorageAdapter

            adapter = RedisStorageAdapter(url, **options)
        else:
            adapter = SQLiteStorageAdapter(db_file, **options)
        made.append(adapter)
        return adapter

    yield factory
    for adapter in made:
        await adapter.close()


@pytest.fixture
def storage(make_storage: StorageFactory) -> BaseStorageAdapter:
    return make_storage()
