"""CacheMiddleware owns a cache outage: tasks run uncached, each is counted, the log stays short.

Real parts: a taskiq ``InMemoryBroker``, a ``RedisCacheAdapter`` on a private
redis-server that is killed for ~5 s under load and started again.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter

import pytest
from prometheus_client import REGISTRY
from taskiq import InMemoryBroker

from taskiq_flow.cache import (
    CacheBackendError,
    CacheConnectionError,
    InMemoryCacheAdapter,
    RedisCacheAdapter,
)
from taskiq_flow.middlewares import CacheMiddleware

OUTAGE_SECONDS = 5.0
INTERVAL = 2.0
BURST = 30  # concurrent kiqs per round
KEYS = 45  # distinct arguments: later rounds hit what earlier rounds cached


def _outage_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name.startswith("taskiq_flow")
        and r.getMessage().startswith("taskiq-flow: cache backend ")
    ]


class FlakyCache(InMemoryCacheAdapter):
    """An in-memory cache whose reads or writes fail on demand, as a dead backend's do."""

    reads_down = False
    writes_down = False

    async def _read_raw(self, key: str) -> bytes | None:
        if self.reads_down:
            raise CacheConnectionError("get", "Connection refused")
        return await super()._read_raw(key)

    async def _commit(self, key, token, payload, ttl_ms) -> None:  # type: ignore[override]
        if self.writes_down and payload is not None:
            raise CacheBackendError("set", "READONLY You can't write against a read only replica")
        await super()._commit(key, token, payload, ttl_ms)


def _requests(task_name: str, result: str) -> float:
    labels = {"task_name": task_name, "result": result}
    return REGISTRY.get_sample_value("taskiq_flow_cache_requests_total", labels) or 0.0


async def _flaky_app(interval: float = 60.0):
    cache = FlakyCache()
    middleware = CacheMiddleware(cache=cache, answer_at_send=False, error_log_interval=interval)
    broker = InMemoryBroker(await_inplace=True)
    broker.add_middlewares(middleware)
    name = f"outage_{uuid.uuid4().hex[:8]}"  # the metrics registry outlives the test
    runs: Counter[int] = Counter()

    @broker.task(task_name=name)
    async def square(x: int) -> int:
        runs[x] += 1
        return x * x

    await broker.startup()
    return broker, cache, middleware, square, runs, name


async def _call(task, x: int) -> int:
    result = await (await task.kiq(x)).wait_result(timeout=5)
    assert not result.is_err, result.error
    return result.return_value


async def test_a_read_outage_runs_each_call_uncached_counts_it_once_and_logs_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="taskiq_flow")
    broker, cache, middleware, square, runs, name = await _flaky_app()
    try:
        cache.reads_down = True
        assert [await _call(square, x % 3) for x in range(10)] == [(x % 3) ** 2 for x in range(10)]
        counters = middleware.get_stats()["middleware"]
        assert sum(runs.values()) == 10  # nothing answered: every call ran, uncached
        assert counters["cache_failures"] == counters["executions"] == 10
        assert _requests(name, "error") == 10
        assert _requests(name, "miss") == 0  # no creator ran under the lock
        lines = [r.getMessage() for r in caplog.records if "cache backend" in r.getMessage()]
        assert len(lines) == 1, lines  # the first at once; the rest wait for the interval
        assert "runs uncached" in lines[0]
        assert name in lines[0]

        cache.reads_down = False
        assert await _call(square, 0) == 0  # a miss, cached: the outage is over
        assert await _call(square, 0) == 0  # a hit
        counters = middleware.get_stats()["middleware"]
        assert counters["cache_failures"] == 10
        assert counters["hits"] == 1
        assert runs[0] == 5
        lines = [r.getMessage() for r in caplog.records if "cache backend" in r.getMessage()]
        assert len(lines) == 2, lines
        assert "recovered after 10 failure(s)" in lines[1]
        # Nothing from the lock itself: the middleware owns the outage.
        assert not [r for r in caplog.records if r.name.startswith("taskiq_flow.cache")]
    finally:
        await broker.shutdown()


async def test_a_write_outage_returns_the_run_result_and_counts_it_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="taskiq_flow")
    broker, cache, middleware, square, runs, name = await _flaky_app()
    try:
        cache.writes_down = True
        assert await _call(square, 7) == 49
        assert runs[7] == 1  # not run a second time because the write failed
        counters = middleware.get_stats()["middleware"]
        assert counters["cache_failures"] == counters["executions"] == 1
        assert _requests(name, "error") == 1
        assert _requests(name, "miss") == 1
        lines = [r.getMessage() for r in caplog.records if "cache backend" in r.getMessage()]
        assert len(lines) == 1, lines
        assert "its result not cached" in lines[0]

        cache.writes_down = False
        assert await _call(square, 7) == 49  # not cached then: runs again, now cached
        assert await _call(square, 7) == 49
        assert runs[7] == 2
        assert middleware.get_stats()["middleware"]["cache_failures"] == 1
        assert middleware._resolver.outage.recoveries == 1
    finally:
        await broker.shutdown()


@pytest.mark.redis
@pytest.mark.parametrize("answer_at_send", [False, True], ids=["worker_only", "at_send"])
async def test_outage_runs_uncached_counts_each_call_and_logs_at_a_rate(
    redis_server, caplog: pytest.LogCaptureFixture, answer_at_send: bool
) -> None:
    caplog.set_level(logging.INFO, logger="taskiq_flow")
    # A refused connection fails at once whatever the timeouts; generous ones keep a busy
    # machine's slow reconnect after the restart from looking like a second outage.
    cache = RedisCacheAdapter(
        redis_server.url, socket_timeout=2.0, connect_timeout=2.0, lock_timeout=2
    )
    middleware = CacheMiddleware(
        cache=cache, answer_at_send=answer_at_send, error_log_interval=INTERVAL, metrics=False
    )
    broker = InMemoryBroker()
    broker.add_middlewares(middleware)
    executions: Counter[int] = Counter()

    @broker.task(task_name="outage.square")
    async def square(x: int) -> int:
        executions[x] += 1
        await asyncio.sleep(0.005)
        return x * x

    # The lock's commit, spied: a creator that ran but whose value could not be stored
    # counts in cache_failures too (the call "ran, its result not cached").
    commit = cache._commit
    commit_failures = 0

    async def spied_commit(*args: object, **kwargs: object) -> object:
        nonlocal commit_failures
        try:
            return await commit(*args, **kwargs)  # type: ignore[arg-type]
        except (CacheConnectionError, CacheBackendError):
            if args[2] is not None:  # a value, not a lease release
                commit_failures += 1
            raise

    cache._commit = spied_commit  # type: ignore[method-assign]

    async def outage() -> None:
        await asyncio.sleep(1.0)
        await asyncio.to_thread(redis_server.kill)
        await asyncio.sleep(OUTAGE_SECONDS)
        await asyncio.to_thread(redis_server.start)

    await broker.startup()
    try:
        fault = asyncio.create_task(outage())
        calls = 0
        rounds = 0
        started = time.monotonic()
        # Load until the server has been back for a while (the recovery must be seen).
        while not fault.done() or time.monotonic() - started < OUTAGE_SECONDS + 2.5:
            args = [(rounds * 7 + i) % KEYS for i in range(BURST)]
            tasks = [await square.kiq(x) for x in args]
            results = await asyncio.gather(*(t.wait_result(timeout=10) for t in tasks))
            for x, result in zip(args, results, strict=True):
                assert not result.is_err, result.error
                assert result.return_value == x * x
            calls += BURST
            rounds += 1
        await fault
    finally:
        await broker.shutdown()

    counters = middleware.get_stats()["middleware"]
    stats = cache.get_stats()
    ran = sum(executions.values())
    # Every run is one the middleware counted: as the lock's creator or uncached.
    assert counters["executions"] == ran
    # The creator runs that succeeded are the cache's regenerations; the rest ran uncached.
    uncached = ran - stats["regenerations"]
    assert uncached > 0  # the outage was felt
    # cache_failures: each call that ran uncached, plus each whose own result the cache
    # could not store; once each.
    assert counters["cache_failures"] == uncached + commit_failures
    assert middleware._resolver.outage.failures == counters["cache_failures"]
    # Calls answered from the cache (at send, or by the worker) ran nothing.
    answered = counters["hits"] + counters["answered_at_send"]
    assert answered > 0

    lines = _outage_lines(caplog)
    failed = [r for r in lines if "failed" in r.getMessage()]
    recovered = [r for r in lines if "recovered" in r.getMessage()]
    assert len(recovered) == 1, [r.getMessage() for r in lines]
    # First at once, then one per INTERVAL over the outage, then the recovery line.
    assert 1 <= len(failed) <= OUTAGE_SECONDS / INTERVAL + 2, [r.getMessage() for r in lines]
    assert len(lines) <= 6
    # Nothing else from taskiq-flow floods: the producer's gate backs off (one line per
    # 5 s back-off), other components report at their own rate (e.g. the shared stats
    # writer), the lock's own "uncached" line is not reached.
    noisy = [
        r
        for r in caplog.records
        if r.name.startswith("taskiq_flow") and r.levelno >= logging.WARNING and r not in lines
    ]
    assert len(noisy) <= 4, [r.getMessage() for r in noisy]
    print(  # the figures, for the record (-s)
        f"\n[{'at_send' if answer_at_send else 'worker_only'}] calls={calls} ran={ran} "
        f"regenerations={stats['regenerations']} uncached={uncached} "
        f"commit_failures={commit_failures} cache_failures={counters['cache_failures']} "
        f"hits={counters['hits']} answered_at_send={counters['answered_at_send']} "
        f"outage_lines={len(lines)} (failed={len(failed)}, recovered={len(recovered)}) "
        f"other_warnings={len(noisy)}"
    )
    for r in lines + noisy:
        print("   ", r.levelname, r.getMessage()[:160])
