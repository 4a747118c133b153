"""Fixtures: the contract suite runs every test over both adapters."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from taskiq_flow.cache import BaseCacheAdapter, InMemoryCacheAdapter

CacheFactory = Callable[..., BaseCacheAdapter]


# Redis three times: one server, a three-primary Cluster and a Sentinel-watched master
# (each topology started once per session, see taskiq_flow_testing.topologies).
BACKENDS = [
    "memory",
    "redis",
    pytest.param("redis-cluster", marks=[pytest.mark.redis, pytest.mark.redis_cluster]),
    pytest.param("redis-sentinel", marks=[pytest.mark.redis, pytest.mark.redis_sentinel]),
]
REDIS_URL_FIXTURES = {
    "redis": "redis_url",
    "redis-cluster": "redis_cluster_url",
    "redis-sentinel": "redis_sentinel_url",
}


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def make_cache(backend: str, request: pytest.FixtureRequest) -> AsyncIterator[CacheFactory]:
    """Build adapters of the parametrised kind; every one is closed at teardown."""
    made: list[BaseCacheAdapter] = []
    fixture = REDIS_URL_FIXTURES.get(backend)
    url = request.getfixturevalue(fixture) if fixture else None

    def factory(**options: Any) -> BaseCacheAdapter:
        adapter: BaseCacheAdapter
        if backend == "memory":
            options.pop("lock_timeout", None)
            options.pop("poll_interval", None)
            adapter = InMemoryCacheAdapter(**options)
        else:
            from taskiq_flow.cache.redis import RedisCacheAdapter

            options.pop("max_entries", None)
            options.setdefault("lock_timeout", 2)
            adapter = RedisCacheAdapter(url, **options)
        made.append(adapter)
        return adapter

    yield factory
    for adapter in made:
        await adapter.close()


@pytest.fixture
async def cache(make_cache: CacheFactory, backend: str) -> BaseCacheAdapter:
    adapter = make_cache()
    if backend in {"redis-cluster", "redis-sentinel"}:
        # A cluster client's first command first maps the slots and connects to every
        # node, a Sentinel one first asks a sentinel for the master; the timing tests (a
        # leader cancelled 0.1 s in) assume a ready client, as the other backends give.
        await adapter.connection.commands.ping()  # type: ignore[attr-defined]
    return adapter
