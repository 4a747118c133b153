"""StorageMiddleware's spool: records the store refuses are on disk before the task ends.

Real parts: a private redis-server killed and restarted, spool files in ``tmp_path``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
from taskiq import InMemoryBroker

from taskiq_flow.middlewares import StorageMiddleware, StorageResultBackend
from taskiq_flow.storage import RedisStorageAdapter, SQLiteStorageAdapter
from taskiq_flow.storage.kit.spool import SPOOL_SUPPORTED

pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(not SPOOL_SUPPORTED, reason="spools need fcntl.flock"),
]


def _app(middleware: StorageMiddleware) -> tuple[InMemoryBroker, object]:
    broker = InMemoryBroker(await_inplace=True)
    broker.add_middlewares(middleware)

    @broker.task(task_name="spool.echo")
    async def echo(x: int, pad: str = "") -> dict[str, object]:
        return {"x": x, "pad": pad}

    return broker, echo


async def test_overflow_keeps_the_rest_in_memory_and_loses_nothing(
    redis_server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    storage = RedisStorageAdapter(redis_url=redis_server.url)
    middleware = StorageMiddleware(
        storage,
        spool_dir=tmp_path / "spool",
        spool_max_bytes=4000,
        retry_interval=0.05,
        max_retry_interval=0.2,
    )
    broker, echo = _app(middleware)
    await broker.startup()
    try:
        redis_server.kill()
        with caplog.at_level(logging.ERROR, logger="taskiq_flow.middlewares"):
            sent = [await echo.kiq(i, "p" * 300) for i in range(30)]
        stats = middleware.get_stats()
        assert stats["records_buffered"] == 30
        assert 0 < stats["records_in_spool"] < 30  # the spool took what fits in 4000 bytes
        assert stats["records_spooled"] == stats["records_in_spool"]
        assert stats["spool_overflows"] == 30 - stats["records_spooled"]
        assert stats["records_dropped"] == 0
        full = [r for r in caplog.records if "is full" in r.getMessage()]
        assert len(full) == 1  # rate-limited: one line for every overflow of the interval
        assert "spool_max_bytes" in full[0].getMessage()
        redis_server.start()
        assert await middleware.flush()
        keys = {f"task:{t.task_id}" for t in sent}
        assert keys <= set(await storage.keys("task:*"))
        assert middleware.get_stats()["records_buffered"] == 0
    finally:
        await broker.shutdown()
        await storage.close()
    assert list((tmp_path / "spool").glob("spool-*")) == []  # empty spool: removed


async def test_shutdown_leaves_the_spool_and_a_later_start_writes_it(
    redis_server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    storage = RedisStorageAdapter(redis_url=redis_server.url)
    spool_dir = tmp_path / "spool"
    first = StorageMiddleware(storage, spool_dir=spool_dir, retry_interval=30)
    broker, echo = _app(first)
    await broker.startup()
    redis_server.kill()
    sent = [await echo.kiq(i) for i in range(10)]
    assert first.get_stats()["records_in_spool"] == 10
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="taskiq_flow.middlewares"):
        await broker.shutdown()
    # Nothing to wait for: the records are on disk, and the log says where.
    assert time.monotonic() - started < 3
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "10 record(s) stay in the spool directory" in said
    assert str(spool_dir) in said
    assert len(list(spool_dir.glob("spool-*.sqlite3"))) == 1

    redis_server.start()
    storage = RedisStorageAdapter(redis_url=redis_server.url)
    second = StorageMiddleware(storage, spool_dir=spool_dir)
    broker, _ = _app(second)
    await broker.startup()
    try:
        deadline = time.monotonic() + 10
        while second.get_stats()["records_buffered"] and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert second.get_stats()["records_replayed"] == 10
        assert set(await storage.keys("task:*")) == {f"task:{t.task_id}" for t in sent}
    finally:
        await broker.shutdown()
        await storage.close()
    assert list(spool_dir.glob("spool-*")) == []


async def test_another_stores_spool_is_left_alone(redis_server, tmp_path: Path) -> None:
    storage = RedisStorageAdapter(redis_url=redis_server.url)
    spool_dir = tmp_path / "spool"
    middleware = StorageMiddleware(storage, spool_dir=spool_dir, retry_interval=30)
    broker, echo = _app(middleware)
    await broker.startup()
    redis_server.kill()
    await echo.kiq(1)
    await broker.shutdown()
    redis_server.start()
    other = SQLiteStorageAdapter(tmp_path / "other.sqlite3")
    broker, _ = _app(StorageMiddleware(other, spool_dir=spool_dir))
    await broker.startup()
    await asyncio.sleep(0.1)
    await broker.shutdown()
    assert await other.keys("*") == []
    await other.close()
    assert len(list(spool_dir.glob("spool-*.sqlite3"))) == 1  # still waiting for its store


async def test_result_backend_results_survive_in_the_spool(redis_server, tmp_path: Path) -> None:
    storage = RedisStorageAdapter(redis_url=redis_server.url)
    spool_dir = tmp_path / "spool"
    backend = StorageResultBackend(storage, spool_dir=spool_dir)
    broker = InMemoryBroker(await_inplace=True).with_result_backend(backend)

    @broker.task(task_name="spool.square")
    async def square(x: int) -> int:
        return x * x

    await broker.startup()
    redis_server.kill()
    sent = await square.kiq(7)
    assert backend.writer.spooled == 1
    await broker.shutdown()
    redis_server.start()
    storage = RedisStorageAdapter(redis_url=redis_server.url)
    backend = StorageResultBackend(storage, spool_dir=spool_dir)
    await backend.startup()
    try:
        deadline = time.monotonic() + 10
        while not await backend.is_result_ready(sent.task_id) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert (await backend.get_result(sent.task_id)).return_value == 49
    finally:
        await backend.shutdown()
