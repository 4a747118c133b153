"""SharedStats: per-task counts buffered in memory, written at most once per interval."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from taskiq_flow.cache import CacheConnectionError
from taskiq_flow.cache.shared_stats import SEPARATOR, SharedStats, summarize


class FakeBackend:
    """A hash in a dict; ``down`` makes every write fail as a dead server would."""

    def __init__(self) -> None:
        self.hash: dict[str, int] = {}
        self.writes: list[list[tuple[str, int]]] = []
        self.down = False

    async def write(self, pairs: list[tuple[str, int]]) -> None:
        if self.down:
            raise CacheConnectionError("stats write", "Connection refused")
        self.writes.append(pairs)
        for field, n in pairs:
            self.hash[field] = self.hash.get(field, 0) + n

    async def read(self) -> dict[bytes, bytes]:
        if self.down:
            raise CacheConnectionError("stats read", "Connection refused")
        return {k.encode(): str(v).encode() for k, v in self.hash.items()}


async def test_counting_writes_nothing_until_the_interval() -> None:
    backend = FakeBackend()
    stats = SharedStats(backend.write, backend.read, interval=0.2)
    for _ in range(1000):
        stats.add("square", "hits")
    stats.add("square", "misses", 20)
    assert backend.writes == []
    assert stats.pending == {"square": {"hits": 1000, "misses": 20}}
    await asyncio.sleep(0.5)
    # One batch for everything counted in the first interval, none while idle.
    assert len(backend.writes) == 1
    assert sorted(backend.writes[0]) == [
        (f"square{SEPARATOR}hits", 1000),
        (f"square{SEPARATOR}misses", 20),
    ]
    assert stats.pending == {}
    await stats.close()


async def test_at_most_one_write_per_interval_under_load() -> None:
    backend = FakeBackend()
    stats = SharedStats(backend.write, backend.read, interval=0.1)
    loop = asyncio.get_running_loop()
    end = loop.time() + 0.55
    while loop.time() < end:
        stats.add("t", "hits")
        await asyncio.sleep(0.001)
    await stats.close()
    # 0.55 s at 0.1 s per write: at most 5 from the background task, plus close()'s.
    assert 4 <= len(backend.writes) <= 6
    assert backend.hash[f"t{SEPARATOR}hits"] == sum(n for batch in backend.writes for _, n in batch)


async def test_a_failed_write_keeps_the_counts_for_the_next(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = FakeBackend()
    stats = SharedStats(backend.write, backend.read, interval=0.05)
    backend.down = True
    with caplog.at_level(logging.WARNING, logger="taskiq_flow.cache"):
        stats.add("t", "hits", 3)
        await asyncio.sleep(0.2)  # several failed writes
        stats.add("t", "hits", 2)
        stats.add("t", "misses")
        assert stats.pending == {"t": {"hits": 5, "misses": 1}}
        backend.down = False
        await asyncio.sleep(0.15)
    assert backend.hash == {f"t{SEPARATOR}hits": 5, f"t{SEPARATOR}misses": 1}
    assert stats.pending == {}
    failed = [r for r in caplog.records if "cache stats write failed" in r.getMessage()]
    assert len(failed) == 1  # the first failure; the rest are within the minute
    assert any("recovered" in r.getMessage() for r in caplog.records)
    await stats.close()


async def test_close_writes_what_is_left_and_stops_the_writer() -> None:
    backend = FakeBackend()
    stats = SharedStats(backend.write, backend.read, interval=60)
    stats.add("a", "hits")
    stats.add("b", "lock_waits")
    stats.add("b", "lock_wait_ms", 250)
    await stats.close()
    assert backend.hash == {
        f"a{SEPARATOR}hits": 1,
        f"b{SEPARATOR}lock_waits": 1,
        f"b{SEPARATOR}lock_wait_ms": 250,
    }
    assert stats._flusher is None
    # Counting again after close starts a new writer (adapters are reusable after close).
    stats.add("a", "hits")
    assert stats._flusher is not None
    await stats.close()
    assert backend.hash[f"a{SEPARATOR}hits"] == 2


async def test_close_while_the_backend_is_down_keeps_the_counts() -> None:
    backend = FakeBackend()
    stats = SharedStats(backend.write, backend.read, interval=60)
    stats.add("a", "hits", 7)
    backend.down = True
    await stats.close()  # no error
    assert stats.pending == {"a": {"hits": 7}}
    backend.down = False
    assert await stats.flush()
    assert backend.hash == {f"a{SEPARATOR}hits": 7}


def test_counting_outside_an_event_loop_waits_for_a_flush() -> None:
    backend = FakeBackend()
    stats = SharedStats(backend.write, backend.read)
    stats.add("sync", "misses")
    assert stats._flusher is None
    asyncio.run(stats.flush())
    assert backend.hash == {f"sync{SEPARATOR}misses": 1}


async def test_read_includes_this_process_pending_counts() -> None:
    backend = FakeBackend()
    backend.hash = {f"a{SEPARATOR}hits": 9, f"a{SEPARATOR}misses": 1, "not ours": 5}
    stats = SharedStats(backend.write, backend.read, interval=60)
    stats.add("b", "misses")
    result = await stats.read()
    assert result["hits"] == 9
    assert result["misses"] == 2
    assert result["by_task"]["a"]["hit_rate"] == 0.9
    assert result["by_task"]["b"]["hit_rate"] == 0.0
    await stats.close()


async def test_a_cancelled_write_gives_its_counts_back() -> None:
    started = asyncio.Event()

    async def hanging_write(pairs: list[tuple[str, int]]) -> None:
        started.set()
        await asyncio.sleep(60)

    async def read() -> dict[Any, Any]:
        return {}

    stats = SharedStats(hanging_write, read, interval=0.01)
    stats.add("t", "hits", 4)
    await started.wait()
    assert stats.pending == {}
    flusher = stats._flusher
    assert flusher is not None
    flusher.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flusher
    assert stats.pending == {"t": {"hits": 4}}


def test_summarize_totals_and_rows() -> None:
    result = summarize(
        {
            "b": {"hits": 90, "misses": 10, "lock_waits": 3, "lock_wait_ms": 1500},
            "a": {"misses": 5, "uncached": 2, "lock_timeouts": 1, "unknown": 8},
        }
    )
    assert list(result["by_task"]) == ["a", "b"]
    assert result["hits"] == 90
    assert result["misses"] == 15
    assert result["hit_rate"] == 90 / 105
    assert result["lock_waits"] == 3
    assert result["lock_wait_seconds"] == 1.5
    assert result["lock_timeouts"] == 1
    assert result["uncached"] == 2
    assert result["scope"] == "cluster"
    assert result["by_task"]["b"] == {
        "hits": 90,
        "misses": 10,
        "lock_waits": 3,
        "lock_timeouts": 0,
        "uncached": 0,
        "hit_rate": 0.9,
        "lock_wait_seconds": 1.5,
    }
    assert summarize({})["hit_rate"] == 0.0


# -- on the adapters (every backend of the contract suite) --------------------------------


async def test_cluster_stats_add_up_every_adapter(make_cache, backend: str) -> None:
    first, second = make_cache(), make_cache()
    if backend == "memory":
        assert first.shared_stats is None
        await first.get_or_create("k", lambda: 1)
        await first.get_or_create("k", lambda: 1)
        stats = await first.get_stats(scope="cluster")
        assert stats == {**first.get_stats(), "by_task": {}}
        assert stats["scope"] == "process"
        return
    assert first.shared_stats is not None
    assert second.shared_stats is not None
    first.shared_stats.add("square", "hits", 90)
    first.shared_stats.add("square", "misses", 10)
    second.shared_stats.add("square", "hits", 90)
    second.shared_stats.add("square", "misses", 10)
    second.shared_stats.add("other", "misses")
    await first.close()  # writes its counts
    # The second's are still pending: a read includes the reader's own.
    stats = await second.get_stats(scope="cluster")
    assert (stats["hits"], stats["misses"]) == (180, 21)
    assert stats["by_task"]["square"]["hit_rate"] == 0.9
    assert stats["by_task"]["other"] == {
        "hits": 0,
        "misses": 1,
        "lock_waits": 0,
        "lock_timeouts": 0,
        "uncached": 0,
        "hit_rate": 0.0,
        "lock_wait_seconds": 0.0,
    }
    assert stats["scope"] == "cluster"
    # A fresh adapter (the CLI) reads the same totals; clear() leaves them.
    reader = make_cache()
    assert await reader.clear() >= 0
    assert await reader.get_stats(scope="cluster") == stats


async def test_a_bad_scope_is_refused(make_cache) -> None:
    from taskiq_flow.cache import CacheValueError

    with pytest.raises(CacheValueError, match="scope"):
        make_cache().get_stats(scope="world")  # type: ignore[call-overload]


@pytest.mark.redis
async def test_no_stats_write_rides_on_a_hit(redis_url: str) -> None:
    import redis.asyncio as aioredis

    from taskiq_flow.cache import RedisCacheAdapter

    cache = RedisCacheAdapter(redis_url, key_prefix="nohit:", cluster_stats_interval=60)
    client = aioredis.from_url(redis_url)
    try:
        await cache.get_or_create("k", lambda: 1)
        assert cache.shared_stats is not None
        for _ in range(50):
            assert await cache.get_or_create("k", lambda: 2) == 1
            cache.shared_stats.add("t", "hits")
        assert not await client.exists("nohit:stats")  # counted, not written yet
        await cache.close()
        assert await client.hgetall("nohit:stats") == {f"t{SEPARATOR}hits".encode(): b"50"}
    finally:
        await client.aclose()


@pytest.mark.redis
def test_cluster_stats_can_be_turned_off(redis_url: str) -> None:
    from taskiq_flow.cache import CacheValueError, RedisCacheAdapter

    assert RedisCacheAdapter(redis_url, cluster_stats_interval=None).shared_stats is None
    with pytest.raises(CacheValueError, match="cluster_stats_interval"):
        RedisCacheAdapter(redis_url, cluster_stats_interval=0)
