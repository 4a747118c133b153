from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

import pytest
from taskiq import InMemoryBroker

from taskiq_flow.cache import InMemoryCacheAdapter
from taskiq_flow.middlewares import CacheMiddleware, StorageMiddleware
from taskiq_flow.storage import InMemoryStorageAdapter


class Stack:
    """A broker with both middlewares and a per-task execution counter."""

    def __init__(self, broker: InMemoryBroker, cache: CacheMiddleware, storage: StorageMiddleware):
        self.broker = broker
        self.cache = cache
        self.storage = storage
        self.runs: Counter[str] = Counter()


@pytest.fixture(params=[True, False], ids=["await_inplace", "background"])
async def stack(request: pytest.FixtureRequest) -> AsyncIterator[Stack]:
    broker = InMemoryBroker(await_inplace=request.param)
    cache_mw = CacheMiddleware(cache=InMemoryCacheAdapter(), default_ttl=3600)
    storage_mw = StorageMiddleware(storage=InMemoryStorageAdapter())
    broker.add_middlewares(cache_mw, storage_mw)
    s = Stack(broker, cache_mw, storage_mw)
    await broker.startup()
    yield s
    await broker.shutdown()
