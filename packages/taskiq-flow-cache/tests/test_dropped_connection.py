"""A dropped connection: every public method reports ``CacheConnectionError``.

No driver exception (``redis.exceptions.*``, a bare ``OSError``, msgspec's) may escape:
``pytest.raises(CacheConnectionError)`` lets any other exception through, so a failing
case shows the leaked exception. ``close()`` on a dropped connection returns quietly or
raises ``CacheConnectionError``, and may be called twice.

Real backend only: a private ``redis-server`` that the test kills under a pool of live
connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from taskiq_flow.cache import CacheConnectionError
from taskiq_flow.cache.redis import RedisCacheAdapter
from taskiq_flow_testing import RedisServer

pytestmark = pytest.mark.redis

PROMPT = 5.0  # seconds within which a dropped connection must be reported


class Creator:
    """A sync creator that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        return "created"


def _raises(call: Callable[[RedisCacheAdapter, Creator], Awaitable[Any]]) -> Case:
    async def check(cache: RedisCacheAdapter, creator: Creator) -> None:
        with pytest.raises(CacheConnectionError):
            await call(cache, creator)
        assert creator.calls == 0

    return check


async def _falls_back(cache: RedisCacheAdapter, creator: Creator) -> None:
    # Documented: with fallback_on_error the creator runs uncached and its value is returned.
    assert await cache.get_or_create("k", creator, 60, fallback_on_error=True) == "created"
    assert creator.calls == 1


async def _nothing(cache: RedisCacheAdapter, creator: Creator) -> None:
    """The ``close`` case: only the closing done by every case."""


Case = Callable[[RedisCacheAdapter, Creator], Awaitable[None]]

# Every public method that does I/O (ids are the method names).
CASES: dict[str, Case] = {
    "get": _raises(lambda c, _: c.get("k")),
    "set": _raises(lambda c, _: c.set("k", 1)),
    "delete": _raises(lambda c, _: c.delete("k")),
    "invalidate": _raises(lambda c, _: c.invalidate("k")),
    "clear": _raises(lambda c, _: c.clear()),
    "inventory": _raises(lambda c, _: c.inventory()),
    # Documented: the backend is down and no fallback asked for -> raise, creator not run.
    "get_or_create": _raises(
        lambda c, creator: c.get_or_create("k", creator, 60, fallback_on_error=False)
    ),
    "get_or_create_fallback": _falls_back,
    "close": _nothing,
}


def _adapter(server: RedisServer) -> RedisCacheAdapter:
    return RedisCacheAdapter(server.url, lock_timeout=2, socket_timeout=1, connect_timeout=1)


async def _close_twice(cache: RedisCacheAdapter) -> None:
    """Close may stay quiet or report the drop; any other exception fails the test."""
    for _ in range(2):
        started = time.monotonic()
        with contextlib.suppress(CacheConnectionError):
            await cache.close()
        assert time.monotonic() - started < PROMPT


@pytest.fixture
async def dropped(redis_server: RedisServer) -> AsyncIterator[RedisCacheAdapter]:
    """An adapter whose pool holds live connections to a server that was then killed."""
    cache = _adapter(redis_server)
    # Concurrent calls, so that the pool holds several connections, not one.
    await asyncio.gather(*(cache.set(f"k{i}", i) for i in range(4)))
    assert await cache.get_or_create("k", Creator(), 60) == "created"  # scripts loaded
    redis_server.kill()
    yield cache
    with contextlib.suppress(Exception):  # teardown only; the tests check close()
        await cache.close()


@pytest.mark.parametrize("method", list(CASES))
async def test_redis_dropped_connection(dropped: RedisCacheAdapter, method: str) -> None:
    started = time.monotonic()
    await CASES[method](dropped, Creator())
    assert time.monotonic() - started < PROMPT
    await _close_twice(dropped)


async def test_same_adapter_works_after_the_server_restarts(redis_server: RedisServer) -> None:
    cache = _adapter(redis_server)
    try:
        assert await cache.get_or_create("k", Creator(), 60) == "created"
        redis_server.kill()
        with pytest.raises(CacheConnectionError):
            await cache.get("k")
        redis_server.start()  # empty: nothing persists, the scripts are gone too

        creator = Creator()
        assert await cache.get_or_create("k", creator, 60) == "created"
        assert creator.calls == 1  # recreated and cached again
        assert await cache.get_or_create("k", creator, 60) == "created"
        assert creator.calls == 1
        await cache.set("s", 1)
        assert await cache.get("s") == 1
        assert await cache.inventory() == {"entries": 2, "leases": 0}
        assert await cache.delete("s")
        assert await cache.invalidate("k")
        await cache.set("t", 2)
        assert await cache.clear() == 1
        assert await cache.get("t") is None
    finally:
        await cache.close()
