"""Fixtures: the contract suite runs every test over both adapters."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from taskiq_flow.cache import BaseCacheAdapter, InMemoryCacheAdapter

CacheFactory = Callable[..., BaseCacheAdapter]


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def make_cache(backend: str, request: pytest.FixtureRequest) -> AsyncIterator[CacheFactory]:
    """Build adapters of the parametrised kind; every one is closed at teardown."""
    made: list[BaseCacheAdapter] = []
    url = request.getfixturevalue("redis_url") if backend == "redis" else None

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
async def cache(make_cache: CacheFactory) -> BaseCacheAdapter:
    return make_cache()
