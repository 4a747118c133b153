"""A dropped connection: every public method reports ``StorageConnectionError``.

No driver exception (``redis.exceptions.*``, ``OSError``, ``sqlite3.Error``, msgspec's)
may escape: ``pytest.raises(StorageConnectionError)`` lets any other exception through,
so a failing case shows the leaked exception. ``close()`` on a dropped connection returns
quietly or raises ``StorageConnectionError``, and may be called twice.

Real backends only: a private ``redis-server`` that the test kills, and a SQLite file
whose directory the test removes.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from taskiq_flow.storage import BaseStorageAdapter, SQLiteStorageAdapter, StorageConnectionError
from taskiq_flow.storage.redis import RedisStorageAdapter
from taskiq_flow_testing import RedisServer

PROMPT = 5.0  # seconds within which a dropped connection must be reported

Call = Callable[[BaseStorageAdapter], Awaitable[Any]]


async def _iter_all(storage: BaseStorageAdapter) -> list[str]:
    return [key async for key in storage.iter_keys()]


# Every public method that does I/O, with small arguments (ids are the method names).
CALLS: dict[str, Call] = {
    "set": lambda s: s.set("k", 1),
    "add": lambda s: s.add("fresh", 1),
    "get": lambda s: s.get("k"),
    "get_entry": lambda s: s.get_entry("k"),
    "exists": lambda s: s.exists("k"),
    "delete": lambda s: s.delete("k"),
    "keys": lambda s: s.keys(),
    "iter_keys": _iter_all,
    "get_many": lambda s: s.get_many(["k", "j"]),
    "set_many": lambda s: s.set_many({"a": 1, "b": 2}),
    "set_many_ttl": lambda s: s.set_many({"a": 1, "b": 2}, ttl_seconds=60),
    "delete_many": lambda s: s.delete_many(["k", "j"]),
    "cleanup_ttl": lambda s: s.cleanup(ttl_seconds=60),
}
# SQLite has no native expiry: a plain cleanup() does I/O there too.
SQLITE_CALLS: dict[str, Call] = {**CALLS, "cleanup": lambda s: s.cleanup()}


async def _assert_reported(
    storage: BaseStorageAdapter, method: str, calls: dict[str, Call]
) -> None:
    started = time.monotonic()
    with pytest.raises(StorageConnectionError):
        await calls[method](storage)
    assert time.monotonic() - started < PROMPT


async def _close_twice(storage: BaseStorageAdapter) -> None:
    """Close may stay quiet or report the drop; any other exception fails the test."""
    for _ in range(2):
        started = time.monotonic()
        with contextlib.suppress(StorageConnectionError):
            await storage.close()
        assert time.monotonic() - started < PROMPT


# -- Redis: the server is killed under a pool of live connections ---------------------------


def _redis_adapter(server: RedisServer) -> RedisStorageAdapter:
    return RedisStorageAdapter(redis_url=server.url, connect_timeout=1, socket_timeout=1)


@pytest.fixture
async def dropped_redis(redis_server: RedisServer) -> AsyncIterator[RedisStorageAdapter]:
    """An adapter whose pool holds live connections to a server that was then killed."""
    storage = _redis_adapter(redis_server)
    # Concurrent calls, so that the pool holds several connections, not one.
    await asyncio.gather(*(storage.set(f"k{i}", i) for i in range(4)))
    await storage.set_many({"a": 1}, ttl_seconds=60)  # the script is loaded too
    assert await storage.get("k0") == 0
    redis_server.kill()
    yield storage
    with contextlib.suppress(Exception):  # teardown only; the tests check close()
        await storage.close()


@pytest.mark.redis
@pytest.mark.parametrize("method", [*CALLS, "close"])
async def test_redis_dropped_connection(dropped_redis: RedisStorageAdapter, method: str) -> None:
    if method != "close":
        await _assert_reported(dropped_redis, method, CALLS)
    await _close_twice(dropped_redis)


@pytest.mark.redis
async def test_redis_cleanup_without_ttl_does_no_io(dropped_redis: RedisStorageAdapter) -> None:
    # Redis expires natively: nothing to remove, and no round trip (the server is gone).
    assert dropped_redis.expires_natively
    assert await dropped_redis.cleanup() == 0
    await _close_twice(dropped_redis)


@pytest.mark.redis
async def test_redis_same_adapter_works_after_the_server_restarts(
    redis_server: RedisServer,
) -> None:
    storage = _redis_adapter(redis_server)
    try:
        await storage.set_many({"a": 1}, ttl_seconds=60)
        await storage.cleanup(ttl_seconds=60)  # both scripts loaded before the crash
        redis_server.kill()
        with pytest.raises(StorageConnectionError):
            await storage.get("a")
        redis_server.start()  # empty: nothing persists, the scripts are gone too

        await storage.set("k", 1)
        assert await storage.add("fresh", 2)
        assert await storage.get("k") == 1
        entry = await storage.get_entry("k")
        assert entry is not None
        assert entry.value == 1
        assert await storage.exists("k")
        await storage.set_many({"a": 1, "b": 2})
        await storage.set_many({"t": 3}, ttl_seconds=60)
        assert await storage.keys() == ["a", "b", "fresh", "k", "t"]
        assert sorted(await _iter_all(storage)) == ["a", "b", "fresh", "k", "t"]
        assert await storage.get_many(["a", "t", "missing"]) == {"a": 1, "t": 3}
        assert await storage.delete("k")
        assert await storage.delete_many(["a", "b"]) == 2
        assert await storage.cleanup(ttl_seconds=60) == 0
        assert await storage.keys() == ["fresh", "t"]
    finally:
        await storage.close()


# -- SQLite: the database file can no longer be opened ----------------------------------------


@pytest.fixture
async def dropped_sqlite(tmp_path: Path) -> AsyncIterator[SQLiteStorageAdapter]:
    """An adapter that was used, closed, and whose database directory was then removed.

    The adapter reconnects lazily on its next call, and cannot.
    """
    directory = tmp_path / "db"
    directory.mkdir()
    storage = SQLiteStorageAdapter(directory / "storage.db")
    await storage.set("k", 1)
    assert await storage.get("k") == 1
    await storage.close()
    shutil.rmtree(directory)
    yield storage
    with contextlib.suppress(Exception):  # teardown only; the tests check close()
        await storage.close()


@pytest.mark.parametrize("method", [*SQLITE_CALLS, "close"])
async def test_sqlite_dropped_connection(dropped_sqlite: SQLiteStorageAdapter, method: str) -> None:
    if method != "close":
        await _assert_reported(dropped_sqlite, method, SQLITE_CALLS)
    await _close_twice(dropped_sqlite)


async def test_sqlite_same_adapter_works_once_the_directory_is_back(
    dropped_sqlite: SQLiteStorageAdapter,
) -> None:
    with pytest.raises(StorageConnectionError):
        await dropped_sqlite.get("k")
    Path(dropped_sqlite.path).parent.mkdir()
    await dropped_sqlite.set("k", 2)  # a new, empty file
    assert await dropped_sqlite.keys() == ["k"]
    await _close_twice(dropped_sqlite)
