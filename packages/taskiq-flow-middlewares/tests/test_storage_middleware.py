"""StorageMiddleware through a real broker: record shape, keys, cache hits, failures."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from datetime import datetime

import pytest
from taskiq import InMemoryBroker, TaskiqMessage, TaskiqMiddleware

from taskiq_flow.cache import InMemoryCacheAdapter
from taskiq_flow.middlewares import CacheMiddleware, StorageMiddleware
from taskiq_flow.storage import InMemoryStorageAdapter, SQLiteStorageAdapter


async def _wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def test_record_shape_under_task_key(stack) -> None:
    @stack.broker.task
    async def add(a: int, b: int) -> dict[str, int]:
        return {"sum": a + b}

    task = await add.kiq(1, 2)
    res = await task.wait_result(timeout=5)
    assert res.return_value == {"sum": 3}
    record = await stack.storage.storage.get(f"task:{task.task_id}")
    # The guide's six fields first and unchanged, then what a reader of history needs.
    assert list(record)[:6] == [
        "task_id",
        "pipeline_id",
        "is_err",
        "return_value",
        "error",
        "execution_time",
    ]
    assert set(record) == {
        "task_id",
        "pipeline_id",
        "is_err",
        "return_value",
        "error",
        "execution_time",
        "task_name",
        "started_at",
        "finished_at",
        "worker",
        "retries",
        "labels",
        "args",
        "kwargs",
    }
    assert json.loads(record["args"]) == [1, 2]
    assert json.loads(record["kwargs"]) == {}
    assert record["worker"] == f"{socket.gethostname()}:{os.getpid()}"
    assert record["retries"] == 0
    assert isinstance(record["labels"], dict)
    assert datetime.fromisoformat(record["started_at"]) <= datetime.fromisoformat(
        record["finished_at"]
    )
    assert record["task_id"] == task.task_id
    assert record["pipeline_id"] is None
    assert record["task_name"] == add.task_name
    assert record["is_err"] is False
    assert json.loads(record["return_value"]) == {"sum": 3}
    assert record["error"] is None
    assert isinstance(record["execution_time"], float)
    assert datetime.fromisoformat(record["finished_at"]).tzinfo is not None


async def test_error_record(stack) -> None:
    @stack.broker.task
    async def fail() -> None:
        raise ZeroDivisionError("nope")

    task = await fail.kiq()
    await task.wait_result(timeout=5)
    record = await stack.storage.storage.get(f"task:{task.task_id}")
    assert record["is_err"] is True
    assert record["return_value"] is None
    assert record["error"] == {"type": "builtins.ZeroDivisionError", "message": "nope"}


async def test_pipeline_label_gives_pipeline_key(stack) -> None:
    @stack.broker.task
    async def step(x: int) -> int:
        return x

    task = await step.kicker().with_labels(pipeline_id="audio_v1").kiq(3)
    await task.wait_result(timeout=5)
    keys = await stack.storage.storage.keys("pipeline:audio_v1:*")
    assert keys == [f"pipeline:audio_v1:task:{task.task_id}"]
    record = await stack.storage.storage.get(keys[0])
    assert record["pipeline_id"] == "audio_v1"
    assert await stack.storage.storage.keys("task:*") == []


async def test_cache_hit_not_stored_again(stack) -> None:
    @stack.broker.task
    async def task(x: int) -> int:
        return x

    first = await task.kiq(1)
    await first.wait_result(timeout=5)
    second = await task.kiq(1)
    await second.wait_result(timeout=5)
    assert await stack.storage.storage.keys("task:*") == [f"task:{first.task_id}"]


async def test_cache_hit_stored_on_pipeline_and_when_asked() -> None:
    broker = InMemoryBroker(await_inplace=True)
    storage = InMemoryStorageAdapter()
    broker.add_middlewares(
        CacheMiddleware(InMemoryCacheAdapter()),
        StorageMiddleware(storage, store_cache_hits=True),
    )

    @broker.task
    async def task(x: int) -> int:
        return x

    await broker.startup()
    first = await task.kiq(1)
    second = await task.kiq(1)
    piped = await task.kicker().with_labels(pipeline_id="p1").kiq(1)
    await broker.shutdown()
    assert (await storage.get(f"task:{first.task_id}")).get("cached") is None
    assert (await storage.get(f"task:{second.task_id}"))["cached"] is True
    assert (await storage.get(f"pipeline:p1:task:{piped.task_id}"))["cached"] is True


async def test_ttl_seconds_applies_to_records(tmp_path) -> None:
    broker = InMemoryBroker(await_inplace=True)
    storage = SQLiteStorageAdapter(str(tmp_path / "records.sqlite3"))
    broker.add_middlewares(StorageMiddleware(storage=storage, ttl_seconds=600))

    @broker.task
    async def task() -> str:
        return "ok"

    await broker.startup()
    sent = await task.kiq()
    await broker.shutdown()
    entry = await storage.get_entry(f"task:{sent.task_id}")
    assert entry is not None
    remaining = entry.remaining_ttl()
    assert remaining is not None
    assert 590 < remaining <= 600
    await storage.close()


async def test_storage_down_tasks_succeed_and_records_return(redis_server, caplog) -> None:
    from taskiq_flow.storage import RedisStorageAdapter

    storage = RedisStorageAdapter(redis_url=redis_server.url)
    middleware = StorageMiddleware(storage=storage, retry_interval=0.05, max_retry_interval=0.2)
    broker = InMemoryBroker(await_inplace=True)
    broker.add_middlewares(middleware)

    @broker.task
    async def task(x: int) -> int:
        return x * 10

    await broker.startup()
    try:
        before = await task.kiq(1)
        assert (await before.wait_result(timeout=5)).return_value == 10
        redis_server.kill()
        with caplog.at_level(logging.ERROR, logger="taskiq_flow.middlewares"):
            during = [await task.kiq(i) for i in range(2, 12)]
            for i, sent in enumerate(during, start=2):
                res = await sent.wait_result(timeout=5)
                assert not res.is_err
                assert res.return_value == i * 10
        stats = middleware.get_stats()
        assert stats["write_failures"] >= 1
        assert stats["records_buffered"] == 10
        # one error line per interval, not one per task
        assert len([r for r in caplog.records if "storage write failed" in r.getMessage()]) == 1
        redis_server.start()
        after = await task.kiq(99)
        await after.wait_result(timeout=5)

        async def all_written() -> bool:
            return middleware.get_stats()["records_buffered"] == 0

        await _wait_for(all_written, timeout=10)
        keys = set(await storage.keys("task:*"))
        expected = {f"task:{t.task_id}" for t in [*during, after]}
        assert expected <= keys  # the server restarted empty: the buffered ones were kept
    finally:
        await broker.shutdown()
        await storage.close()


async def test_shutdown_flushes_buffer(redis_server) -> None:
    from taskiq_flow.storage import RedisStorageAdapter

    storage = RedisStorageAdapter(redis_url=redis_server.url)
    middleware = StorageMiddleware(storage=storage, retry_interval=30)
    broker = InMemoryBroker(await_inplace=True)
    broker.add_middlewares(middleware)

    @broker.task
    async def task(x: int) -> int:
        return x

    await broker.startup()
    redis_server.kill()
    sent = [await task.kiq(i) for i in range(5)]
    assert middleware.get_stats()["records_buffered"] == 5
    redis_server.start()
    await broker.shutdown()
    assert middleware.get_stats()["records_buffered"] == 0
    assert len(await storage.keys("task:*")) == 5
    assert {k.split(":", 1)[1] for k in await storage.keys("task:*")} == {t.task_id for t in sent}
    await storage.close()


def test_constructor_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError, match="BaseStorageAdapter"):
        StorageMiddleware(storage={})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ttl_seconds"):
        StorageMiddleware(ttl_seconds=0)


async def test_buffer_drains_at_once_when_storage_returns(redis_server) -> None:
    # The backoff must apply to failed writes only: once the store answers, the whole
    # buffer (several batches) is written without waiting out the grown delay again.
    from taskiq_flow.storage import RedisStorageAdapter

    storage = RedisStorageAdapter(redis_url=redis_server.url)
    middleware = StorageMiddleware(
        storage=storage, retry_interval=0.05, max_retry_interval=3.0, buffer_size=5000
    )
    broker = InMemoryBroker(await_inplace=True)
    broker.add_middlewares(middleware)

    @broker.task
    async def task(x: int) -> int:
        return x

    await broker.startup()
    try:
        redis_server.kill()
        for i in range(1600):  # more than three flush batches
            await task.kiq(i)
        await asyncio.sleep(1.0)  # let the backoff grow while the server is down
        assert middleware.get_stats()["records_buffered"] == 1600
        redis_server.start()
        started = asyncio.get_running_loop().time()

        async def drained() -> bool:
            return middleware.get_stats()["records_buffered"] == 0

        await _wait_for(drained, timeout=10)
        elapsed = asyncio.get_running_loop().time() - started
        assert elapsed < 3.5  # one pending delay at most, then every batch back to back
        assert len(await storage.keys("task:*")) == 1600
        assert middleware.get_stats()["records_dropped"] == 0
    finally:
        await broker.shutdown()
        await storage.close()


def test_worker_process_with_sqlite_storage_exits(tmp_path) -> None:
    # An open aiosqlite connection runs a non-daemon thread: shutdown must close the
    # store, or the interpreter waits for that thread forever.
    import subprocess
    import sys
    import textwrap

    script = tmp_path / "app.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import asyncio
            from taskiq import InMemoryBroker
            from taskiq_flow.middlewares import StorageMiddleware
            from taskiq_flow.storage import SQLiteStorageAdapter

            async def main():
                broker = InMemoryBroker(await_inplace=True)
                store = SQLiteStorageAdapter({str(tmp_path / "s.db")!r})
                broker.add_middlewares(StorageMiddleware(store))

                @broker.task
                async def task() -> int:
                    return 1

                await broker.startup()
                await task.kiq()
                await broker.shutdown()
                print("done", flush=True)

            asyncio.run(main())
            """
        )
    )
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "done"


class _CopyingMiddleware(TaskiqMiddleware):
    """pre_execute may return another message object; taskiq goes on with that one."""

    def pre_execute(self, message: TaskiqMessage) -> TaskiqMessage:
        return message.model_copy(deep=True)


async def test_a_hit_is_known_when_a_later_middleware_copies_the_message() -> None:
    storage = InMemoryStorageAdapter()
    broker = InMemoryBroker(await_inplace=True)
    broker.add_middlewares(
        CacheMiddleware(InMemoryCacheAdapter()),
        _CopyingMiddleware(),
        StorageMiddleware(storage=storage),
    )
    runs = 0

    @broker.task
    async def square(x: int) -> int:
        nonlocal runs
        runs += 1
        return x * x

    await broker.startup()
    try:
        sent = [await square.kiq(3), await square.kiq(3)]
        first, second = [await s.wait_result(timeout=5) for s in sent]
    finally:
        await broker.shutdown()
    assert (first.return_value, second.return_value, runs) == (9, 9, 1)
    assert second.labels.get("cache_hit") == "true"
    # The hit is not stored again: the one record is the execution's.
    assert await storage.keys("task:*") == [f"task:{sent[0].task_id}"]
