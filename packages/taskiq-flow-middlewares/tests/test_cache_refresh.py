"""cache_refresh / TASKIQ_FLOW_CACHE_REFRESH: run under the lock and overwrite, once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from taskiq import InMemoryBroker

from taskiq_flow.cache import BaseCacheAdapter, InMemoryCacheAdapter
from taskiq_flow.cache.redis import RedisCacheAdapter
from taskiq_flow.middlewares import CacheMiddleware, MiddlewareConfigError, cache_key_for

REFRESH = {"cache_refresh": "true"}


class Node:
    """One broker with a CacheMiddleware over ``cache``, and a task counting its runs."""

    def __init__(self, cache: BaseCacheAdapter, counter: list[int]) -> None:
        self.broker = InMemoryBroker()
        self.middleware = CacheMiddleware(cache)
        self.broker.add_middlewares(self.middleware)

        @self.broker.task(task_name="version")
        async def version(x: int) -> int:
            counter[0] += 1
            await asyncio.sleep(0.2)
            return counter[0]

        self.task = version

    async def call(self, x: int, labels: dict[str, str] | None = None) -> Any:
        kicker = self.task.kicker()
        if labels:
            kicker = kicker.with_labels(**labels)
        result = await (await kicker.kiq(x)).wait_result(timeout=10)
        assert not result.is_err, result.error
        return result.return_value


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    made = Node(InMemoryCacheAdapter(), [0])
    await made.broker.startup()
    yield made
    await made.broker.shutdown()


async def test_refresh_runs_on_a_fresh_entry_and_overwrites_it(node: Node) -> None:
    assert await node.call(1) == 1
    assert await node.call(1) == 1  # fresh: a hit
    assert await node.call(1, REFRESH) == 2  # ran although fresh
    assert await node.call(1) == 2  # the entry is the new value
    assert await node.middleware.cache.get(cache_key_for(node.task, 1)) is not None


async def test_concurrent_refreshers_run_once(node: Node) -> None:
    assert await node.call(1) == 1
    results = await asyncio.gather(*(node.call(1, REFRESH) for _ in range(8)))
    assert results == [2] * 8
    assert await node.call(1) == 2


async def test_refresh_false_is_a_normal_call(node: Node) -> None:
    assert await node.call(1) == 1
    assert await node.call(1, {"cache_refresh": "false"}) == 1


async def test_environment_refreshes_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKIQ_FLOW_CACHE_REFRESH", "true")
    made = Node(InMemoryCacheAdapter(), [0])
    assert made.middleware.refresh_all
    await made.broker.startup()
    try:
        assert [await made.call(1) for _ in range(3)] == [1, 2, 3]
        # The label still says no for one call.
        assert await made.call(1, {"cache_refresh": "false"}) == 3
    finally:
        await made.broker.shutdown()
    monkeypatch.setenv("TASKIQ_FLOW_CACHE_REFRESH", "maybe")
    with pytest.raises(MiddlewareConfigError, match="TASKIQ_FLOW_CACHE_REFRESH"):
        CacheMiddleware(InMemoryCacheAdapter())


async def test_refreshers_on_two_nodes_sharing_redis_run_once(redis_url: str) -> None:
    counter = [0]
    nodes = [Node(RedisCacheAdapter(redis_url, key_prefix="refresh-test:"), counter) for _ in "ab"]
    for made in nodes:
        await made.broker.startup()
    try:
        assert await nodes[0].call(7) == 1
        assert await nodes[1].call(7) == 1  # shared entry
        results = await asyncio.gather(*(made.call(7, REFRESH) for made in nodes * 4))
        assert results == [2] * 8
        assert counter == [2]
        assert await nodes[1].call(7) == 2
    finally:
        for made in nodes:
            await made.middleware.cache.clear()
            await made.broker.shutdown()
