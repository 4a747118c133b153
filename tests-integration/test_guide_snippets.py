"""Every code block of the user guide (spec/storage-cache-guide.txt), run as written.

Each block is copied below verbatim from the guide (its indentation is the guide's
own). The only edit allowed is the one the guide needs to be runnable at all: blocks
with a top-level ``await`` run inside an ``async def``. Each test then asserts what
the guide says happens.

Redis: the guide hardcodes ``redis://localhost:6379``, which on this machine is a
shared server that tests must never write to or flush. Those blocks run with that one
URL string replaced by the private test server's URL (the ``redis_url`` fixture) —
nothing else in them changes.

One block cannot run as written: "TTL and Expiration" builds
``StorageEntry(key=..., value=..., ...)`` with a literal ``...`` after keyword
arguments, which is a ``SyntaxError`` in Python. The test proves that, then runs the
block with the placeholder filled in (see ``test_ttl_and_expiration``); docs/guide.md
shows the runnable form.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import textwrap
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

GUIDE_URL = "redis://localhost:6379"

# -- the guide's blocks, verbatim ------------------------------------------------------

INSTALLATION = """\
# For Redis backend
pip install redis
# SQLite backend included via aiosqlite (bundled)
"""

STORAGE_BASIC_USAGE = """\
from taskiq import InMemoryBroker
from taskiq_flow import PipelineMiddleware, DataflowPipeline, pipeline_task
from taskiq_flow.middlewares import StorageMiddleware
from taskiq_flow.storage import InMemoryStorageAdapter
broker = InMemoryBroker(await_inplace=True)
# central persistence layer — store all task results automatically
storage = InMemoryStorageAdapter()
broker.add_middlewares(
StorageMiddleware(storage=storage, enabled=True),
PipelineMiddleware(),
)
"""

PRODUCTION_WITH_REDIS = """\
from taskiq_flow.middlewares import StorageMiddleware
from taskiq_flow.storage import RedisStorageAdapter
broker.add_middlewares(
StorageMiddleware(
storage=RedisStorageAdapter(
redis_url="redis://localhost:6379",
ttl_seconds=86400, # 24-hour retention
),
),
PipelineMiddleware(),
)
"""

STORED_VALUE_SHAPE = """\
{
"task_id": "abc123",
"pipeline_id": "audio_v1",
"is_err": false,
"return_value": "{...}",
"error": null,
"execution_time": 0.42
}
"""

MANUAL_INSPECTOR_USAGE = """\
storage = InMemoryStorageAdapter()
await storage.set("my_key", {"status": "running"}, ttl_seconds=600)
# Later...
result = await storage.get("my_key")
exists = await storage.exists("my_key")
# Pattern-based listing
keys = await storage.keys("pipeline:my_run:*")
# Cleanup expired entries
deleted = await storage.cleanup(ttl_seconds=3600)
"""

TTL_AND_EXPIRATION = """\
# Store with 24-hour TTL
await storage.set("status", {"running": True}, ttl_seconds=86_400)
# Check remaining time before it expires
entry = StorageEntry(key="status", value={"running": True}, ...)
seconds_left = entry.remaining_ttl()
"""

CACHE_BASIC_USAGE = """\
from taskiq_flow.middlewares import CacheMiddleware
from taskiq_flow.cache import InMemoryCacheAdapter
# Task results are cached for 1 hour by default
broker.add_middlewares(
CacheMiddleware(
cache=InMemoryCacheAdapter(),
default_ttl=3600,
enabled=True,
)
)
"""

MIDDLEWARE_ORDERING = """\
# Correct ordering — cache checked first, then storage
broker.add_middlewares(
CacheMiddleware(), # ← checked first (pre_execute runs first)
StorageMiddleware(), # ← persisted if not cached
PipelineMiddleware(), # ← orchestrates downstream
)
"""

PER_TASK_OVERRIDES = """\
# In a task, override cache TTL for this execution
result = await some_task.kiq(
input_data,
labels={"cache_ttl": "7200", "cache_errors": "true"},
)
"""

FACTORY_ZERO_CONFIG = """\
from taskiq_flow.storage.factory import StorageAdapterFactory
from taskiq_flow.config import TaskiqFlowConfig
# Get both middlewares in one call — sensible defaults
config = TaskiqFlowConfig(
storage_type="redis", # "redis" | "sqlite" | "inmemory" | "auto"
storage_redis_url="redis://localhost:6379",
storage_ttl_seconds=86_400, # 24 h
cache_type="redis",
cache_redis_url="redis://localhost:6379",
cache_default_ttl=3600,
)
middlewares = StorageAdapterFactory.create_default_middlewares(config=config)
broker.add_middlewares(
middlewares["cache"], # CacheMiddleware
middlewares["storage"], # StorageMiddleware
PipelineMiddleware(),
)
"""

USE_BOTH_TOGETHER = """\
from taskiq_flow.storage.factory import StorageAdapterFactory
from taskiq_flow.config import TaskiqFlowConfig
config = TaskiqFlowConfig(
storage_type="redis",
storage_redis_url="redis://localhost:6379",
cache_type="redis",
cache_redis_url="redis://localhost:6379",
)
middlewares = StorageAdapterFactory.create_default_middlewares(config=config)
broker.add_middlewares(
middlewares["cache"],
middlewares["storage"],
PipelineMiddleware(),
)
"""

MONITORING_HIT_RATE = """\
stats = cache.get_stats()
print(f"Hit rate: {stats['hit_rate']:.1%}") # 94.5%
print(f"Hits: {stats['hits']}, Misses: {stats['misses']}")
"""

MONITORING_STORAGE_SIZE = """\
all_keys = await storage.keys("*")
print(f"Total stored entries: {len(all_keys)}")
"""

# -- running them -----------------------------------------------------------------------


def run_block(source: str, namespace: dict[str, Any]) -> None:
    """Run a block that has no top-level await, as a module body would."""
    exec(compile(source, "<guide>", "exec"), namespace)  # noqa: S102


async def run_async_block(source: str, namespace: dict[str, Any]) -> None:
    """Run a block with top-level awaits: the one edit, wrapping it in a coroutine."""
    wrapped = "async def __guide_block__():\n" + textwrap.indent(source, "    ")
    wrapped += "    return locals()\n"
    exec(compile(wrapped, "<guide>", "exec"), namespace)  # noqa: S102
    namespace.update(await namespace.pop("__guide_block__")())


def private(source: str, redis_url: str) -> str:
    """Point the guide's localhost URL at the private test server (the only change)."""
    assert GUIDE_URL in source
    return source.replace(GUIDE_URL, redis_url.rstrip("/").removesuffix("/0"))


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


class Stack:
    """A namespace to run blocks in, with whatever the guide assumes is already there."""

    def __init__(self, namespace: dict[str, Any]) -> None:
        self.ns = namespace
        self.calls: dict[Any, int] = {}
        self.closables: list[Any] = []

    def add_counting_task(self, name: str = "guide.add") -> Any:
        calls = self.calls

        async def add(a: int, b: int) -> int:
            calls[a, b] = calls.get((a, b), 0) + 1
            return a + b

        return self.ns["broker"].task(task_name=name)(add)

    def middleware(self, type_name: str) -> list[Any]:
        return [m for m in self.ns["broker"].middlewares if type(m).__name__ == type_name]

    async def close(self) -> None:
        await self.ns["broker"].shutdown()
        for middleware in self.ns["broker"].middlewares:
            for attr in ("storage", "cache"):
                adapter = getattr(middleware, attr, None)
                if adapter is not None:
                    await adapter.close()
        for closable in self.closables:
            await closable.close()


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    from taskiq import InMemoryBroker

    from taskiq_flow import PipelineMiddleware

    # What the guide's later blocks take as already defined: a broker, and the names the
    # Basic Usage block imported.
    made = Stack(
        {"broker": InMemoryBroker(await_inplace=True), "PipelineMiddleware": PipelineMiddleware}
    )
    try:
        yield made
    finally:
        await made.close()


# -- Installation -----------------------------------------------------------------------


def test_installation() -> None:
    """`pip install redis` gives the Redis backends; SQLite needs nothing (aiosqlite)."""
    assert "pip install redis" in INSTALLATION
    assert importlib.util.find_spec("redis") is not None
    assert importlib.util.find_spec("aiosqlite") is not None
    from taskiq_flow.storage import RedisStorageAdapter, SQLiteStorageAdapter

    assert RedisStorageAdapter.__name__ == "RedisStorageAdapter"

    async def sqlite_works() -> Any:
        storage = SQLiteStorageAdapter(":memory:")
        try:
            await storage.set("k", {"v": 1})
            return await storage.get("k")
        finally:
            await storage.close()

    assert asyncio.run(sqlite_works()) == {"v": 1}


# -- StorageMiddleware -------------------------------------------------------------------


async def test_storage_basic_usage_stores_every_result_and_pipeline_history() -> None:
    ns: dict[str, Any] = {}
    run_block(STORAGE_BASIC_USAGE, ns)
    stack = Stack(ns)
    try:
        broker, storage = ns["broker"], ns["storage"]
        add = stack.add_counting_task()
        await broker.startup()
        task = await add.kiq(2, 3)
        assert (await task.wait_result(timeout=5)).return_value == 5
        # "store all task results automatically": under task:{task_id}.
        assert await storage.keys("task:*") == [f"task:{task.task_id}"]
        record = await storage.get(f"task:{task.task_id}")
        assert json.loads(record["return_value"]) == 5

        # The block imported the pipeline API: a run's steps land under pipeline:{id}:task:{id}.
        pipeline_task, dataflow = ns["pipeline_task"], ns["DataflowPipeline"]

        @broker.task
        @pipeline_task(output="features")
        async def extract(data: list[int]) -> dict[str, int]:
            return {"n": len(data)}

        @broker.task
        @pipeline_task(output="total")
        async def total(features: dict[str, int], data: list[int]) -> int:
            return sum(data) * features["n"]

        run = await dataflow.from_tasks(broker, [extract, total]).kiq(
            data=[1, 2, 3], pipeline_id="audio_v1"
        )
        assert (await run.wait_result(timeout=5)).return_value == {
            "features": {"n": 3},
            "total": 18,
        }
        assert sorted(await storage.keys("pipeline:audio_v1:task:*")) == sorted(
            f"pipeline:audio_v1:task:{tid}" for tid in run.task_ids.values()
        )
    finally:
        await stack.close()


async def test_production_with_redis(stack: Stack, redis_url: str, raw: aioredis.Redis) -> None:
    run_block(private(PRODUCTION_WITH_REDIS, redis_url), stack.ns)
    (middleware,) = stack.middleware("StorageMiddleware")
    add = stack.add_counting_task()
    await stack.ns["broker"].startup()
    task = await add.kiq(1, 1)
    assert (await task.wait_result(timeout=5)).return_value == 2
    # The record is in Redis, with the block's 24-hour retention.
    assert await middleware.storage.get(f"task:{task.task_id}") is not None
    raw_keys = [k async for k in raw.scan_iter("*task:*")]
    assert raw_keys == [f"taskiq_flow:task:{task.task_id}"]
    assert 86_000_000 < await raw.pttl(raw_keys[0]) <= 86_400_000


async def test_task_result_keys_and_stored_value_shape() -> None:
    ns: dict[str, Any] = {}
    run_block(STORAGE_BASIC_USAGE, ns)
    stack = Stack(ns)
    try:
        broker, storage = ns["broker"], ns["storage"]
        await broker.startup()

        @broker.task
        @ns["pipeline_task"](output="features")
        async def extract(data: list[int]) -> dict[str, int]:
            return {"n": len(data)}

        run = (
            await ns["DataflowPipeline"]
            .from_tasks(broker, [extract])
            .kiq(data=[1], pipeline_id="audio_v1")
        )
        await run.wait_result(timeout=5)
        task_id = run.task_ids["extract"]
        # pipeline:{pipeline_id}:task:{task_id}  e.g. pipeline:audio_v1:task:abc123
        record = await storage.get(f"pipeline:audio_v1:task:{task_id}")
        shape = json.loads(STORED_VALUE_SHAPE)
        assert set(shape) <= set(record)
        assert record["task_id"] == task_id
        assert record["pipeline_id"] == "audio_v1"
        assert record["is_err"] is False
        assert isinstance(record["return_value"], str)  # JSON text, as "{...}" shows
        assert json.loads(record["return_value"]) == {"n": 1}
        assert record["error"] is None
        assert isinstance(record["execution_time"], float)

        # task:{task_id}  e.g. task:abc123 — no pipeline, no pipeline_id.
        add = Stack(ns).add_counting_task()
        task = await add.kiq(1, 2)
        await task.wait_result(timeout=5)
        plain = await storage.get(f"task:{task.task_id}")
        assert set(shape) <= set(plain)
        assert plain["pipeline_id"] is None
    finally:
        await stack.close()


async def test_manual_inspector_usage() -> None:
    from taskiq_flow.storage import InMemoryStorageAdapter

    ns: dict[str, Any] = {"InMemoryStorageAdapter": InMemoryStorageAdapter}
    await run_async_block(MANUAL_INSPECTOR_USAGE, ns)
    assert ns["result"] == {"status": "running"}
    assert ns["exists"] is True
    assert ns["keys"] == []  # nothing under pipeline:my_run: yet
    assert ns["deleted"] == 0  # my_key is neither expired nor an hour old
    storage = ns["storage"]
    await storage.set("pipeline:my_run:task:1", 1)
    await storage.set("pipeline:other:task:1", 1)
    assert await storage.keys("pipeline:my_run:*") == ["pipeline:my_run:task:1"]
    entry = await storage.get_entry("my_key")
    assert entry is not None
    assert 590 < entry.remaining_ttl() <= 600
    await storage.close()


async def test_ttl_and_expiration() -> None:
    from datetime import UTC, datetime, timedelta

    from taskiq_flow.storage import InMemoryStorageAdapter, StorageEntry

    # As written, the block is not Python: `...` after keyword arguments.
    with pytest.raises(SyntaxError, match="positional argument follows keyword argument"):
        compile(TTL_AND_EXPIRATION, "<guide>", "exec")
    # Filled in with what the placeholder stands for (the entry's timestamps):
    now = datetime.now(UTC)
    filled = TTL_AND_EXPIRATION.replace(
        ", ...)", ", created_at=now, expires_at=now + timedelta(seconds=86_400))"
    )
    storage = InMemoryStorageAdapter()
    ns: dict[str, Any] = {
        "storage": storage,
        "StorageEntry": StorageEntry,
        "now": now,
        "timedelta": timedelta,
    }
    await run_async_block(filled, ns)
    assert 86_399 < ns["seconds_left"] <= 86_400
    # The stored entry says the same: per-key TTL, lazily expired on access.
    stored = await storage.get_entry("status")
    assert stored is not None
    assert 86_399 < stored.remaining_ttl() <= 86_400
    await storage.set("short", 1, ttl_seconds=1)
    await asyncio.sleep(1.05)
    assert await storage.get("short") is None
    await storage.close()


# -- CacheMiddleware ------------------------------------------------------------------------


async def test_cache_basic_usage_second_identical_call_does_not_run(stack: Stack) -> None:
    run_block(CACHE_BASIC_USAGE, stack.ns)
    (middleware,) = stack.middleware("CacheMiddleware")
    assert middleware.default_ttl == 3600
    add = stack.add_counting_task()
    await stack.ns["broker"].startup()
    first = await (await add.kiq(2, 3)).wait_result(timeout=5)
    second = await (await add.kiq(2, 3)).wait_result(timeout=5)
    assert first.return_value == second.return_value == 5
    assert stack.calls == {(2, 3): 1}  # "reduced to a cache lookup"
    assert second.labels.get("cache_hit") == "true"
    await (await add.kiq(3, 2)).wait_result(timeout=5)
    assert stack.calls == {(2, 3): 1, (3, 2): 1}  # other inputs still run


async def test_middleware_ordering_cache_hits_are_not_persisted(stack: Stack) -> None:
    from taskiq_flow.middlewares import CacheMiddleware, StorageMiddleware

    stack.ns.update(CacheMiddleware=CacheMiddleware, StorageMiddleware=StorageMiddleware)
    run_block(MIDDLEWARE_ORDERING, stack.ns)
    (storage_mw,) = stack.middleware("StorageMiddleware")
    add = stack.add_counting_task()
    await stack.ns["broker"].startup()
    tasks = [await add.kiq(4, 4) for _ in range(3)]
    for task in tasks:
        assert (await task.wait_result(timeout=5)).return_value == 8
    assert stack.calls == {(4, 4): 1}
    # The two hits short-circuited before any persistence write.
    assert await storage_mw.storage.keys("task:*") == [f"task:{tasks[0].task_id}"]
    assert storage_mw.get_stats()["records_written"] == 1


async def test_per_task_overrides(stack: Stack, redis_url: str, raw: aioredis.Redis) -> None:
    from taskiq_flow.cache import RedisCacheAdapter
    from taskiq_flow.middlewares import CacheMiddleware

    broker = stack.ns["broker"]
    broker.add_middlewares(CacheMiddleware(cache=RedisCacheAdapter(redis_url=redis_url)))
    runs: list[str] = []

    @broker.task(task_name="guide.some_task")
    async def some_task(data: str) -> str:
        runs.append(data)
        if data == "bad":
            raise ValueError("bad input")
        return data.upper()

    stack.ns.update(some_task=some_task, input_data="ok")
    await broker.startup()
    await run_async_block(PER_TASK_OVERRIDES, stack.ns)
    assert (await stack.ns["result"].wait_result(timeout=5)).return_value == "OK"
    # cache_ttl: this execution's entry lives 7200 s instead of the default 3600.
    ttls = [await raw.pttl(k) async for k in raw.scan_iter("taskiq_flow_cache:*")]
    assert any(7_100_000 < t <= 7_200_000 for t in ttls), ttls

    # cache_errors="true": an error result is cached too; the second call re-raises it
    # without running the task.
    stack.ns["input_data"] = "bad"
    for _ in range(2):
        await run_async_block(PER_TASK_OVERRIDES, stack.ns)
        failed = await stack.ns["result"].wait_result(timeout=5)
        assert failed.is_err
        assert isinstance(failed.error, ValueError)
    assert runs == ["ok", "bad"]


# -- StorageAdapterFactory ---------------------------------------------------------------------


async def _assert_redis_stack(stack: Stack, raw: aioredis.Redis, storage_ttl: int | None) -> None:
    from taskiq_flow.cache import RedisCacheAdapter
    from taskiq_flow.middlewares import CacheMiddleware, StorageMiddleware
    from taskiq_flow.storage import RedisStorageAdapter

    middlewares = stack.ns["middlewares"]
    assert isinstance(middlewares["cache"], CacheMiddleware)
    assert isinstance(middlewares["storage"], StorageMiddleware)
    assert isinstance(middlewares["cache"].cache, RedisCacheAdapter)
    assert isinstance(middlewares["storage"].storage, RedisStorageAdapter)
    assert middlewares["cache"].default_ttl == 3600
    add = stack.add_counting_task()
    await stack.ns["broker"].startup()
    first = await (await add.kiq(5, 6)).wait_result(timeout=5)
    again = await (await add.kiq(5, 6)).wait_result(timeout=5)
    assert first.return_value == again.return_value == 11
    assert stack.calls == {(5, 6): 1}
    records = [k async for k in raw.scan_iter("taskiq_flow:task:*")]
    assert len(records) == 1
    ttl = await raw.pttl(records[0])
    if storage_ttl is None:
        assert ttl == -1  # kept until cleaned up
    else:
        assert storage_ttl * 1000 - 100_000 < ttl <= storage_ttl * 1000
    cached = [k async for k in raw.scan_iter("taskiq_flow_cache:*")]
    assert cached
    value_ttls = [await raw.pttl(k) for k in cached if ":v:" in k]
    assert value_ttls
    assert all(3_500_000 < t <= 3_600_000 for t in value_ttls), value_ttls


async def test_factory_zero_config_block(stack: Stack, redis_url: str, raw: aioredis.Redis) -> None:
    run_block(private(FACTORY_ZERO_CONFIG, redis_url), stack.ns)
    assert stack.ns["config"].storage_ttl_seconds == 86_400
    await _assert_redis_stack(stack, raw, storage_ttl=86_400)


async def test_use_both_together_block(stack: Stack, redis_url: str, raw: aioredis.Redis) -> None:
    run_block(private(USE_BOTH_TOGETHER, redis_url), stack.ns)
    await _assert_redis_stack(stack, raw, storage_ttl=None)


def test_factory_block_never_touches_the_shared_server() -> None:
    """Guard for the substitution above: it is the only change, and it is total."""
    for block in (PRODUCTION_WITH_REDIS, FACTORY_ZERO_CONFIG, USE_BOTH_TOGETHER):
        replaced = private(block, "redis://127.0.0.1:1/0")
        assert GUIDE_URL not in replaced
        assert replaced.replace("redis://127.0.0.1:1", GUIDE_URL) == block


# -- Comparison: dogpile stampede protection -------------------------------------------------


async def test_concurrent_identical_tasks_execute_once() -> None:
    """The comparison table's "Dogpile stampede: Yes" for CacheMiddleware."""
    from taskiq import InMemoryBroker

    from taskiq_flow.cache import InMemoryCacheAdapter
    from taskiq_flow.middlewares import CacheMiddleware

    broker = InMemoryBroker()  # tasks run concurrently in the background
    broker.add_middlewares(CacheMiddleware(cache=InMemoryCacheAdapter(), default_ttl=3600))
    calls: list[int] = []

    @broker.task(task_name="guide.slow")
    async def slow(x: int) -> int:
        calls.append(x)
        await asyncio.sleep(0.2)
        return x * 2

    await broker.startup()
    handles = [await slow.kiq(7) for _ in range(20)]
    results = await asyncio.gather(
        *(h.wait_result(timeout=10, check_interval=0.01) for h in handles)
    )
    assert [r.return_value for r in results] == [14] * 20
    assert calls == [7]
    await broker.shutdown()


# -- Monitoring ------------------------------------------------------------------------------


async def test_monitoring_hit_rate(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    run_block(CACHE_BASIC_USAGE, stack.ns)
    (middleware,) = stack.middleware("CacheMiddleware")
    stack.ns["cache"] = middleware.cache
    add = stack.add_counting_task()
    await stack.ns["broker"].startup()
    for a in (1, 1, 1, 2):  # 2 misses, 2 hits
        await (await add.kiq(a, 0)).wait_result(timeout=5)
    run_block(MONITORING_HIT_RATE, stack.ns)
    assert capsys.readouterr().out.splitlines() == ["Hit rate: 50.0%", "Hits: 2, Misses: 2"]


async def test_monitoring_storage_size(capsys: pytest.CaptureFixture[str]) -> None:
    ns: dict[str, Any] = {}
    run_block(STORAGE_BASIC_USAGE, ns)
    stack = Stack(ns)
    try:
        add = stack.add_counting_task()
        await ns["broker"].startup()
        for a in range(3):
            await (await add.kiq(a, 0)).wait_result(timeout=5)
        await run_async_block(MONITORING_STORAGE_SIZE, ns)
        assert capsys.readouterr().out == "Total stored entries: 3\n"
    finally:
        await stack.close()


# -- Troubleshooting ---------------------------------------------------------------------------


async def test_troubleshooting_storage_ttl_and_cleanup() -> None:
    """ "Set ttl_seconds on StorageMiddleware; run cleanup() periodically" bounds the store."""
    from taskiq import InMemoryBroker

    from taskiq_flow.middlewares import StorageMiddleware
    from taskiq_flow.storage import InMemoryStorageAdapter

    storage = InMemoryStorageAdapter()
    broker = InMemoryBroker(await_inplace=True)
    broker.add_middlewares(StorageMiddleware(storage=storage, ttl_seconds=1))
    stack = Stack({"broker": broker})
    add = stack.add_counting_task()
    await broker.startup()
    for a in range(5):
        await (await add.kiq(a, 0)).wait_result(timeout=5)
    assert len(await storage.keys("task:*")) == 5
    await asyncio.sleep(1.05)
    assert await storage.cleanup() == 5
    assert await storage.keys("*") == []
    await stack.close()
