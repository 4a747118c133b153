"""Lock waits (histogram, span attribute, event) and the per-task counts CacheMiddleware adds
up across workers in Redis (``get_stats(scope="cluster")``)."""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from types import SimpleNamespace

import pytest
import redis.asyncio as aioredis
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from taskiq import InMemoryBroker
from taskiq.middlewares.opentelemetry_middleware import OpenTelemetryMiddleware

from taskiq_flow.cache import InMemoryCacheAdapter, RedisCacheAdapter
from taskiq_flow.cache.shared_stats import SEPARATOR
from taskiq_flow.middlewares import CacheMiddleware, StorageMiddleware
from taskiq_flow.middlewares._metrics import (
    LOCK_WAIT_BUCKETS,
    _batch_observer,
    _incrementer,
    _metric,
)
from taskiq_flow.middlewares.errors import MiddlewareConfigError
from taskiq_flow.storage import InMemoryStorageAdapter
from taskiq_flow_testing import RedisServer


def unique(prefix: str) -> str:
    """A task name no other test uses: the default registry lives as long as the process."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def waits(task_name: str) -> tuple[float, float]:
    """(count, sum) of ``taskiq_flow_cache_lock_wait_seconds`` for ``task_name``."""
    labels = {"task_name": task_name}
    count = REGISTRY.get_sample_value("taskiq_flow_cache_lock_wait_seconds_count", labels)
    total = REGISTRY.get_sample_value("taskiq_flow_cache_lock_wait_seconds_sum", labels)
    return count or 0.0, total or 0.0


async def test_taskiq_otel_spans_carry_our_attributes() -> None:
    """taskiq's own OpenTelemetryMiddleware, added first, and an in-memory SDK exporter."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    broker = InMemoryBroker()  # each call in a task of its own, as in a worker
    broker.add_middlewares(
        # First: taskiq runs post_execute hooks in reverse order, so its post_execute (which
        # ends the span) comes after StorageMiddleware's has tagged it.
        OpenTelemetryMiddleware(tracer_provider=provider),
        CacheMiddleware(InMemoryCacheAdapter(), answer_at_send=False),
        StorageMiddleware(InMemoryStorageAdapter(), store_cache_hits=True),
    )
    name = unique("traced")

    @broker.task(task_name=name)
    async def slow(x: int) -> int:
        await asyncio.sleep(0.2)
        return x * 2

    await broker.startup()
    try:
        # Two identical calls at once: one runs (miss), the other waits for it (hit).
        first, second = await asyncio.gather(slow.kiq(4), slow.kiq(4))
        assert (await first.wait_result(timeout=5)).return_value == 8
        assert (await second.wait_result(timeout=5)).return_value == 8
        # Then a plain hit.
        assert (await (await slow.kiq(4)).wait_result(timeout=5)).return_value == 8
    finally:
        await broker.shutdown()
        provider.shutdown()
    spans = [s for s in exporter.get_finished_spans() if s.name == f"execute/{name}"]
    assert len(spans) == 3
    attributes = [dict(s.attributes or {}) for s in spans]
    assert sorted(a["taskiq_flow.cache.hit"] for a in attributes) == [False, True, True]
    assert all(a["taskiq_flow.storage.written"] is True for a in attributes)
    assert all(str(a["taskiq_flow.cache.key"]).startswith(f"{name}:") for a in attributes)
    waited = [s for s in spans if "taskiq_flow.cache.lock_wait_ms" in (s.attributes or {})]
    assert len(waited) == 1
    assert waited[0].attributes["taskiq_flow.cache.hit"] is True
    assert 100 < waited[0].attributes["taskiq_flow.cache.lock_wait_ms"] < 2000
    assert [e.name for e in waited[0].events] == ["taskiq_flow.cache.lock_wait"]
    event = waited[0].events[0].attributes
    assert event["taskiq_flow.task_name"] == name
    assert (
        event["taskiq_flow.cache.lock_wait_ms"]
        == waited[0].attributes["taskiq_flow.cache.lock_wait_ms"]
    )


async def test_lock_waits_are_observed_per_task() -> None:
    broker = InMemoryBroker()
    broker.add_middlewares(CacheMiddleware(InMemoryCacheAdapter(), answer_at_send=False))
    name = unique("waited")

    @broker.task(task_name=name)
    async def slow(x: int) -> int:
        await asyncio.sleep(0.15)
        return x

    await broker.startup()
    try:
        sent = await asyncio.gather(*(slow.kiq(1) for _ in range(4)))
        results = await asyncio.gather(*(t.wait_result(timeout=5) for t in sent))
        # A call that does not wait is not observed.
        await (await slow.kiq(1)).wait_result(timeout=5)
    finally:
        await broker.shutdown()
    assert [r.return_value for r in results] == [1] * 4
    count, total = waits(name)
    assert count == 3
    assert 0.3 < total < 3


async def test_metrics_off_still_feeds_the_cluster_stats(redis_url: str) -> None:
    cache = RedisCacheAdapter(redis_url, key_prefix="off:", cluster_stats_interval=60)
    broker = InMemoryBroker(await_inplace=True)
    broker.add_middlewares(CacheMiddleware(cache, metrics=False, answer_at_send=False))

    @broker.task(task_name="off.echo")
    async def echo(x: int) -> int:
        return x

    await broker.startup()
    try:
        for _ in range(3):
            await (await echo.kiq(1)).wait_result(timeout=5)
    finally:
        await broker.shutdown()  # closes the adapter: its counts are written
    reader = RedisCacheAdapter(redis_url, key_prefix="off:")
    try:
        stats = await reader.get_stats(scope="cluster")
    finally:
        await reader.close()
    assert stats["by_task"]["off.echo"]["hits"] == 2
    assert stats["by_task"]["off.echo"]["misses"] == 1


async def test_answers_at_send_count_as_hits_in_the_cluster_stats(redis_url: str) -> None:
    """A call answered at kiq() never reaches a worker: the producer counts its hit."""
    cache = RedisCacheAdapter(redis_url, key_prefix="at-send:", cluster_stats_interval=60)
    broker = InMemoryBroker(await_inplace=True)
    broker.add_middlewares(CacheMiddleware(cache))

    @broker.task(task_name="send.echo")
    async def echo(x: int) -> int:
        return x

    await broker.startup()
    try:
        for _ in range(3):
            await (await echo.kiq(1)).wait_result(timeout=5)
    finally:
        await broker.shutdown()
    reader = RedisCacheAdapter(redis_url, key_prefix="at-send:")
    try:
        stats = await reader.get_stats(scope="cluster")
    finally:
        await reader.close()
    assert stats["by_task"]["send.echo"]["hits"] == 2
    assert stats["by_task"]["send.echo"]["misses"] == 1


async def test_two_workers_add_up_in_redis(redis_url: str) -> None:
    """Two brokers (two workers' worth), one Redis: every call counted once, per task."""
    brokers = []
    for _ in range(2):
        cache = RedisCacheAdapter(
            redis_url, key_prefix="two:", lock_timeout=5, cluster_stats_interval=0.2
        )
        broker = InMemoryBroker()
        broker.add_middlewares(CacheMiddleware(cache, answer_at_send=False))

        @broker.task(task_name="two.square")
        async def square(x: int) -> int:
            await asyncio.sleep(0.1)
            return x * x

        @broker.task(task_name="two.cube")
        async def cube(x: int) -> int:
            return x**3

        brokers.append(broker)
    client = aioredis.from_url(redis_url)
    loop = asyncio.get_running_loop()
    for broker in brokers:
        await broker.startup()
    started = loop.time()
    try:
        sent = []
        for broker in brokers:
            square_task, cube_task = broker.find_task("two.square"), broker.find_task("two.cube")
            assert square_task is not None
            assert cube_task is not None
            sent += [await square_task.kiq(i % 5) for i in range(25)]
            sent += [await cube_task.kiq(i % 2) for i in range(4)]
        results = await asyncio.gather(*(t.wait_result(timeout=30) for t in sent))
        assert not any(r.is_err for r in results)
        # Counted in memory; each worker writes them within an interval.
        deadline = loop.time() + 10
        while loop.time() < deadline:
            raw = await client.hgetall("two:stats")
            if raw.get(f"two.square{SEPARATOR}hits".encode()) == b"45":
                break
            await asyncio.sleep(0.05)
        elapsed = loop.time() - started
        writes = [b.middlewares[0].cache.shared_stats.writes for b in brokers]
    finally:
        for broker in brokers:
            await broker.shutdown()
    reader = RedisCacheAdapter(redis_url, key_prefix="two:")
    try:
        stats = await reader.get_stats(scope="cluster")
    finally:
        await reader.close()
        await client.aclose()
    square_row, cube_row = stats["by_task"]["two.square"], stats["by_task"]["two.cube"]
    assert (square_row["hits"], square_row["misses"]) == (45, 5)
    assert square_row["hit_rate"] == 0.9
    assert (cube_row["hits"], cube_row["misses"]) == (6, 2)
    assert (stats["hits"], stats["misses"]) == (51, 7)
    # Identical calls overlapped, in one worker and across the two.
    assert square_row["lock_waits"] >= 1
    assert square_row["lock_wait_seconds"] > 0
    # At most one write per worker per interval (0.2 s), and none while idle.
    for count in writes:
        assert 1 <= count <= elapsed / 0.2 + 1


async def test_redis_down_while_flushing_keeps_the_counts(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    cache = RedisCacheAdapter(
        redis_server.url,
        key_prefix="down:",
        cluster_stats_interval=1.0,
        connect_timeout=0.5,
        socket_timeout=0.5,
        retries=0,
    )
    middleware = CacheMiddleware(cache, answer_at_send=False)
    broker = InMemoryBroker(await_inplace=True)
    broker.add_middlewares(middleware)

    @broker.task(task_name="down.double")
    async def double(x: int) -> int:
        return 2 * x

    shared = cache.shared_stats
    assert shared is not None
    await broker.startup()
    try:
        for _ in range(2):  # a miss, then a hit: counted, not yet written
            assert (await (await double.kiq(3)).wait_result(timeout=5)).return_value == 6
        redis_server.kill()
        with caplog.at_level(logging.WARNING, logger="taskiq_flow.cache"):
            # The task is unaffected: the cache is down too, so it runs uncached.
            assert (await (await double.kiq(4)).wait_result(timeout=5)).return_value == 8
            await asyncio.sleep(2.5)  # two failed writes at least
        assert shared.writes == 0
        assert shared.pending == {"down.double": {"misses": 1, "hits": 1, "uncached": 1}}
        assert any("cache stats write failed" in r.getMessage() for r in caplog.records)
        redis_server.start()
        deadline = asyncio.get_running_loop().time() + 10
        while shared.pending and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
        assert shared.writes == 1
    finally:
        await broker.shutdown()
    client = aioredis.from_url(redis_server.url)
    try:
        raw = await client.hgetall("down:stats")
    finally:
        await client.aclose()
    assert raw == {
        f"down.double{SEPARATOR}misses".encode(): b"1",
        f"down.double{SEPARATOR}hits".encode(): b"1",
        f"down.double{SEPARATOR}uncached".encode(): b"1",
    }


def test_the_lock_wait_histogram_is_reused_or_refused() -> None:
    registry = CollectorRegistry()
    prom = SimpleNamespace(
        Histogram=functools.partial(Histogram, registry=registry), REGISTRY=registry
    )
    name = "taskiq_flow_cache_lock_wait_seconds"
    ours = _metric(prom, "Histogram", name, "doc", ("task_name",), buckets=LOCK_WAIT_BUCKETS)
    assert (
        _metric(prom, "Histogram", name, "doc", ("task_name",), buckets=LOCK_WAIT_BUCKETS) is ours
    )
    # Someone else's metric of that name, with other labels: a clear error, not a clash.
    other = CollectorRegistry()
    Histogram(name, "someone else's", ["queue"], registry=other)
    prom = SimpleNamespace(Histogram=functools.partial(Histogram, registry=other), REGISTRY=other)
    with pytest.raises(MiddlewareConfigError, match="metrics=False"):
        _metric(prom, "Histogram", name, "doc", ("task_name",), buckets=LOCK_WAIT_BUCKETS)


def test_the_fast_paths_count_as_the_public_methods() -> None:
    registry = CollectorRegistry()
    ours = Histogram("ours_seconds", "d", registry=registry, buckets=LOCK_WAIT_BUCKETS)
    public = Histogram("public_seconds", "d", registry=registry, buckets=LOCK_WAIT_BUCKETS)
    observe = _batch_observer(ours)
    values = (0, 0.005, 0.0051, 0.3, 59.9, 60, 61, 1e9)
    observe(values[:1])  # one at a time and several at once
    observe(values[1:])
    for value in values:
        public.observe(value)

    def samples(name: str) -> list[tuple[str, dict[str, str], float]]:
        family = next(f for f in registry.collect() if f.name == name)
        return [
            (s.name.removeprefix(name), s.labels, s.value)
            for s in family.samples
            if not s.name.endswith("_created")
        ]

    assert samples("ours_seconds") == samples("public_seconds")
    counter = Counter("c", "d", ["x"], registry=registry)
    inc = _incrementer(counter.labels("1"))
    for _ in range(3):
        inc(1)
    assert registry.get_sample_value("c_total", {"x": "1"}) == 3
    # A prometheus-client whose internals differ gets the public methods.
    seen: list[float] = []
    odd = SimpleNamespace(inc=print, observe=seen.append)
    assert _incrementer(odd) is print
    _batch_observer(odd)((1.0, 2.0))
    assert seen == [1.0, 2.0]
