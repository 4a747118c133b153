"""CacheMiddleware.invalidate / invalidate_task / invalidate_tag through a real broker."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from taskiq import InMemoryBroker

from taskiq_flow.cache import (
    BaseCacheAdapter,
    CacheConnectionError,
    CacheKeyError,
    CacheValueError,
    InMemoryCacheAdapter,
)
from taskiq_flow.middlewares import CacheMiddleware, cache_key_for


class Setup:
    def __init__(self, broker: InMemoryBroker, middleware: CacheMiddleware) -> None:
        self.broker = broker
        self.mw = middleware
        self.runs: Counter[tuple[str, int]] = Counter()


@pytest.fixture(
    params=[("memory", True), ("memory", False), ("redis", True), ("redis", False)],
    ids=["memory-at_send", "memory-worker_only", "redis-at_send", "redis-worker_only"],
)
async def setup(request: pytest.FixtureRequest) -> AsyncIterator[Setup]:
    backend, at_send = request.param
    cache: BaseCacheAdapter
    if backend == "memory":
        cache = InMemoryCacheAdapter()
    else:
        from taskiq_flow.cache.redis import RedisCacheAdapter

        cache = RedisCacheAdapter(request.getfixturevalue("redis_url"))
    broker = InMemoryBroker()
    middleware = CacheMiddleware(cache, answer_at_send=at_send, metrics=False)
    broker.add_middlewares(middleware)
    await broker.startup()
    yield Setup(broker, middleware)
    await broker.shutdown()


def declare(s: Setup, name: str, **labels: Any) -> Any:
    @s.broker.task(task_name=name, **labels)
    async def task(x: int) -> int:
        s.runs[name, x] += 1
        return x * 10

    return task


async def call(task: Any, x: int, **labels: Any) -> int:
    kicker = task.kicker().with_labels(**labels) if labels else task
    result = await (await kicker.kiq(x)).wait_result(timeout=10)
    assert not result.is_err, result.error
    return int(result.return_value)


async def test_invalidate_one_call(setup: Setup) -> None:
    double = declare(setup, "double")
    for x in (3, 4, 3, 4):
        assert await call(double, x) == x * 10
    assert setup.runs == Counter({("double", 3): 1, ("double", 4): 1})
    assert await setup.mw.invalidate(double, 3) is True
    assert await setup.mw.invalidate(double, 3) is False
    assert await setup.mw.invalidate(double, 99) is False
    assert await call(double, 3) == 30  # runs again
    assert await call(double, 4) == 40  # still a hit
    assert setup.runs == Counter({("double", 3): 2, ("double", 4): 1})
    assert await setup.mw.cache.get(cache_key_for(double, 3)) is not None


async def test_invalidate_task_covers_every_call_and_no_other_task(setup: Setup) -> None:
    double = declare(setup, "double")
    # Names that begin like "double" must keep their entries.
    lookalikes = [declare(setup, name) for name in ("double2", "double:x", "doub*")]
    for x in (1, 2, 3):
        await call(double, x)
        for other in lookalikes:
            await call(other, x)
    await call(double, 7, cache_key="seven")  # an explicit key is the task's too
    assert await setup.mw.invalidate_task(double) == 4
    assert await setup.mw.invalidate_task("double") == 0
    for x in (1, 2, 3):
        await call(double, x)
        for other in lookalikes:
            await call(other, x)
    await call(double, 7, cache_key="seven")
    assert setup.runs["double", 1] == setup.runs["double", 7] == 2
    assert all(setup.runs[o.task_name, x] == 1 for o in lookalikes for x in (1, 2, 3))
    # By name, for a task this process does not know.
    assert await setup.mw.invalidate_task("doub*") == 3
    assert await setup.mw.invalidate_task("double2") == 3


async def test_invalidate_tag_from_every_way_of_giving_it(setup: Setup) -> None:
    users = declare(setup, "users", cache_tags="users")
    orders = declare(setup, "orders")
    plain = declare(setup, "plain")
    await call(users, 1)  # at declaration
    await call(orders, 1, cache_tags="users, orders")  # with_labels
    await (await orders.kiq(2, labels={"cache_tags": "orders"})).wait_result(timeout=10)
    await call(plain, 1)
    assert await setup.mw.invalidate_tag("users") == 2
    await call(users, 1)
    await call(orders, 1, cache_tags="users, orders")
    await (await orders.kiq(2, labels={"cache_tags": "orders"})).wait_result(timeout=10)
    await call(plain, 1)
    assert setup.runs == Counter(
        {("users", 1): 2, ("orders", 1): 2, ("orders", 2): 1, ("plain", 1): 1}
    )
    assert await setup.mw.invalidate_tag("orders") == 2
    assert await setup.mw.invalidate_tag("users") == 1  # orders(1) went already
    assert await setup.mw.invalidate_tag("orders") == 0


async def test_tags_are_written_on_a_miss_only(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    tagged: list[tuple[str, tuple[str, ...], int | None]] = []
    real_tag = setup.mw.cache.tag

    async def spy(key: str, tags: Any, ttl_seconds: int | None = None) -> None:
        tagged.append((key, tuple(tags), ttl_seconds))
        await real_tag(key, tags, ttl_seconds)

    monkeypatch.setattr(setup.mw.cache, "tag", spy)
    task = declare(setup, "t", cache_tags="a,b", cache_ttl=120)
    for _ in range(5):
        await call(task, 1)
    # Before the run (an invalidation during it must find the key) and after (the TTL
    # counted from the write); never on the four hits.
    assert tagged == [(cache_key_for(task, 1), ("a", "b"), 120)] * 2


@pytest.mark.parametrize(
    "tags",
    ["", "a,,b", " , ", ",".join(f"t{i}" for i in range(10_000)), "x" * 300],
    ids=["empty", "empty-item", "blank", "10000-tags", "too-long"],
)
async def test_an_unusable_tags_label_runs_uncached_with_one_warning(
    setup: Setup, tags: str, caplog: pytest.LogCaptureFixture
) -> None:
    task = declare(setup, "bad", cache_tags=tags)
    with caplog.at_level(logging.WARNING, "taskiq_flow.middlewares"):
        for _ in range(3):
            await call(task, 1)
    assert setup.runs["bad", 1] == 3
    warnings = [r for r in caplog.records if "cache_tags label is unusable" in r.getMessage()]
    assert len(warnings) == 1
    assert await setup.mw.cache.keys() == []


async def test_invalidating_a_run_in_flight_keeps_its_result_out(setup: Setup) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    runs = 0

    @setup.broker.task(task_name="slow", cache_tags="slow")
    async def slow(x: int) -> int:
        nonlocal runs
        runs += 1
        started.set()
        await release.wait()
        return runs

    for invalidate in (
        lambda: setup.mw.invalidate(slow, 1),
        lambda: setup.mw.invalidate_task(slow),
        lambda: setup.mw.invalidate_tag("slow"),
    ):
        started.clear()
        release.clear()
        before = runs
        pending = await slow.kiq(1)
        await started.wait()
        await invalidate()
        release.set()
        assert (await pending.wait_result(timeout=10)).return_value == before + 1
        assert await setup.mw.cache.get(cache_key_for(slow, 1)) is None
    assert runs == 3


async def test_bad_arguments_raise_our_errors(setup: Setup) -> None:
    task = declare(setup, "t")
    with pytest.raises(CacheValueError, match="must not be empty"):
        await setup.mw.invalidate_tag("")
    with pytest.raises(CacheValueError, match="longer than 256"):
        await setup.mw.invalidate_tag("x" * 257)
    with pytest.raises(CacheKeyError):
        await setup.mw.invalidate_task("")
    with pytest.raises(TypeError):
        await setup.mw.invalidate_task(42)
    with pytest.raises(TypeError):
        await setup.mw.invalidate(lambda x: x, 1)
    with pytest.raises(CacheKeyError):
        await setup.mw.invalidate(task, object())  # no key for these arguments


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_invalidation_while_redis_is_down_is_a_connection_error() -> None:
    from taskiq_flow.cache.redis import RedisCacheAdapter

    cache = RedisCacheAdapter(
        f"redis://127.0.0.1:{_closed_port()}/0", connect_timeout=0.5, retries=0
    )
    broker = InMemoryBroker()
    middleware = CacheMiddleware(cache, metrics=False)
    broker.add_middlewares(middleware)

    @broker.task(task_name="t")
    async def task(x: int) -> int:
        return x

    try:
        for attempt in (
            lambda: middleware.invalidate(task, 1),
            lambda: middleware.invalidate_task(task),
            lambda: middleware.invalidate_tag("t"),
        ):
            with pytest.raises(CacheConnectionError, match="unavailable"):
                await attempt()
    finally:
        await cache.close()
