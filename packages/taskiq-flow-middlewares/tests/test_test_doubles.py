"""Test doubles of our adapters (``MagicMock(spec=...)``, ``create_autospec``) are accepted.

People test their apps with mocks of the adapters; both middlewares (and the result
backend) take them, and StorageMiddleware drives one like the real thing.

The mocks here are the feature under test, not stand-ins for a backend: issue 15 promises
that a user's ``MagicMock(spec=...)`` / ``create_autospec`` double of our adapters is
accepted. No test elsewhere uses a mock in place of a real Redis or SQLite.
"""

from __future__ import annotations

from unittest.mock import MagicMock, create_autospec

import pytest
from taskiq import InMemoryBroker

from taskiq_flow.cache import InMemoryCacheAdapter, RedisCacheAdapter
from taskiq_flow.middlewares import CacheMiddleware, StorageMiddleware, StorageResultBackend
from taskiq_flow.storage import InMemoryStorageAdapter, RedisStorageAdapter, SQLiteStorageAdapter


def _doubles(cls: type) -> list[object]:
    return [MagicMock(spec=cls), create_autospec(cls, instance=True)]


@pytest.mark.parametrize("cls", [InMemoryCacheAdapter, RedisCacheAdapter])
def test_cache_middleware_takes_a_cache_double(cls: type) -> None:
    for double in _doubles(cls):
        middleware = CacheMiddleware(cache=double)  # type: ignore[arg-type]
        assert middleware.cache is double
        assert "middleware" in middleware.get_stats()


@pytest.mark.parametrize("cls", [InMemoryStorageAdapter, SQLiteStorageAdapter, RedisStorageAdapter])
async def test_storage_middleware_writes_through_a_storage_double(cls: type) -> None:
    for double in _doubles(cls):
        middleware = StorageMiddleware(storage=double)  # type: ignore[arg-type]
        assert middleware.writer.spool_dir is None  # a double names no store: no spool
        broker = InMemoryBroker(await_inplace=True)
        broker.add_middlewares(middleware)

        @broker.task(task_name="doubles.add")
        async def add(a: int, b: int) -> int:
            return a + b

        await broker.startup()
        sent = await add.kiq(2, 3)
        assert (await sent.wait_result(timeout=5)).return_value == 5
        await broker.shutdown()
        double.set.assert_awaited_once()  # type: ignore[attr-defined]
        key, record, _ttl = double.set.await_args.args  # type: ignore[attr-defined]
        assert key == f"task:{sent.task_id}"
        assert record["return_value"] == "5"
        assert middleware.get_stats()["records_written"] == 1


@pytest.mark.parametrize("cls", [InMemoryStorageAdapter, RedisStorageAdapter])
def test_result_backend_takes_a_storage_double(cls: type) -> None:
    for double in _doubles(cls):
        backend = StorageResultBackend(double)  # type: ignore[arg-type]
        assert backend.storage is double


def test_other_objects_are_still_refused() -> None:
    with pytest.raises(TypeError, match="BaseCacheAdapter"):
        CacheMiddleware(cache=MagicMock())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="BaseStorageAdapter"):
        StorageMiddleware(storage=MagicMock(spec=dict))  # type: ignore[arg-type]
