"""cache_if and errors_ttl / cache_errors_ttl through a real InMemoryBroker."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from taskiq import InMemoryBroker

from taskiq_flow.cache import InMemoryCacheAdapter
from taskiq_flow.middlewares import (
    CacheMiddleware,
    MiddlewareConfigError,
    MiddlewareConfigTypeError,
)

Make = Callable[..., Any]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    brokers: list[InMemoryBroker] = []

    async def factory(**options: Any) -> tuple[InMemoryBroker, CacheMiddleware]:
        broker = InMemoryBroker()
        middleware = CacheMiddleware(InMemoryCacheAdapter(), **options)
        broker.add_middlewares(middleware)
        await broker.startup()
        brokers.append(broker)
        return broker, middleware

    yield factory
    for broker in brokers:
        await broker.shutdown()


async def test_cache_if_none_runs_again(make: Make) -> None:
    broker, middleware = await make(cache_if=lambda v: v is not None)
    runs: Counter[int] = Counter()

    @broker.task(task_name="find")
    async def find(x: int) -> int | None:
        runs[x] += 1
        return None if x < 0 else x

    for _ in range(3):
        assert (await (await find.kiq(-1)).wait_result(timeout=5)).return_value is None
        assert (await (await find.kiq(1)).wait_result(timeout=5)).return_value == 1
    assert runs == Counter({-1: 3, 1: 1})  # None ran every time; 1 was cached
    assert middleware.get_stats()["middleware"]["declined_results"] == 3


async def test_cache_if_that_raises_caches_nothing(make: Make, caplog: Any) -> None:
    def picky(value: Any) -> bool:
        raise RuntimeError("picky")

    broker, _ = await make(cache_if=picky)
    runs = [0]

    @broker.task(task_name="one")
    async def one() -> int:
        runs[0] += 1
        return 1

    with caplog.at_level(logging.WARNING, logger="taskiq_flow.middlewares"):
        for _ in range(2):
            assert (await (await one.kiq()).wait_result(timeout=5)).return_value == 1
    assert runs == [2]
    assert "cache_if raised" in caplog.text


async def test_errors_ttl_expires_errors_before_values(make: Make) -> None:
    broker, _ = await make(cache_errors=True, errors_ttl=1)
    runs: Counter[int] = Counter()

    @broker.task(task_name="flaky")
    async def flaky(x: int) -> int:
        runs[x] += 1
        if x < 0:
            raise ValueError("negative")
        return x

    for x in (-1, 1):
        for _ in range(2):
            await (await flaky.kiq(x)).wait_result(timeout=5)
    assert runs == Counter({-1: 1, 1: 1})  # the error is cached, as is the value
    await asyncio.sleep(1.1)
    for x in (-1, 1):
        await (await flaky.kiq(x)).wait_result(timeout=5)
    assert runs == Counter({-1: 2, 1: 1})  # the error expired after 1 s; the value did not


async def test_cache_errors_ttl_label(make: Make) -> None:
    broker, _ = await make(cache_errors=True)
    runs = [0]

    @broker.task(task_name="fails", cache_errors_ttl=1)
    async def fails() -> int:
        runs[0] += 1
        raise ValueError("no")

    for _ in range(2):
        assert (await (await fails.kiq()).wait_result(timeout=5)).is_err
    assert runs == [1]
    await asyncio.sleep(1.1)
    assert (await (await fails.kiq()).wait_result(timeout=5)).is_err
    assert runs == [2]


async def test_bad_options_are_config_errors() -> None:
    with pytest.raises(MiddlewareConfigTypeError, match="cache_if"):
        CacheMiddleware(cache_if="not callable")  # type: ignore[arg-type]
    for bad in (0, -1, 1.5, True, 10**12):
        with pytest.raises(MiddlewareConfigError, match="errors_ttl"):
            CacheMiddleware(errors_ttl=bad)  # type: ignore[arg-type]


async def test_bad_cache_errors_ttl_label_falls_back(make: Make, caplog: Any) -> None:
    broker, _ = await make(cache_errors=True)
    runs = [0]

    @broker.task(task_name="fails", cache_errors_ttl="soon")
    async def fails() -> int:
        runs[0] += 1
        raise ValueError("no")

    with caplog.at_level(logging.WARNING, logger="taskiq_flow.middlewares"):
        for _ in range(2):
            assert (await (await fails.kiq()).wait_result(timeout=5)).is_err
    assert runs == [1]  # cached with the call's TTL
    assert "cache_errors_ttl" in caplog.text
