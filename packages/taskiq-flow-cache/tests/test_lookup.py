"""lookup / wait_for_release / release_lease / get_or_create(lease_token=...), both backends."""

from __future__ import annotations

import asyncio
import time

import pytest

from taskiq_flow.cache import BaseCacheAdapter, CacheLookup

from .conftest import CacheFactory


async def test_lookup_hit_and_miss(cache: BaseCacheAdapter) -> None:
    assert await cache.lookup("k") == CacheLookup("miss")
    await cache.set("k", {"a": 1})
    assert await cache.lookup("k") == CacheLookup("hit", {"a": 1})
    found = await cache.lookup("k", claim=True)
    assert (found.state, found.value, found.token) == ("hit", {"a": 1}, None)
    assert cache.get_stats()["hits"] == 2


async def test_claim_then_adopt(cache: BaseCacheAdapter, backend: str) -> None:
    found = await cache.lookup("c", claim=True)
    assert found.state == "miss"
    if backend == "memory":
        assert found.token is None  # no cross-process lease to claim
        assert not cache.shares_leases
        return
    assert cache.shares_leases
    assert found.token is not None
    # Another lookup now sees the call in flight, held by that token.
    other = await cache.lookup("c", claim=True)
    assert (other.state, other.holder) == ("in_flight", found.token)

    waiter = asyncio.create_task(cache.wait_for_release("c", found.token, 5.0))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    # The creator adopts the lease (no wait for it to lapse) and its commit wakes waiters.
    value = await cache.get_or_create("c", lambda: 42, 60, lease_token=found.token)
    assert value == 42
    await waiter
    assert time.monotonic() - started < 0.5  # pushed, not the 2 s lease
    assert await cache.lookup("c", claim=True) == CacheLookup("hit", 42)


async def test_release_lease_frees_the_key(cache: BaseCacheAdapter, backend: str) -> None:
    found = await cache.lookup("r", claim=True)
    if found.token is None:
        pytest.skip("no lease on this backend")
    await cache.release_lease("r", found.token)
    again = await cache.lookup("r", claim=True)
    assert again.state == "miss"
    assert again.token is not None
    assert again.token != found.token
    await cache.release_lease("r", found.token)  # no longer its: a no-op
    assert (await cache.lookup("r", claim=True)).holder == again.token


async def test_release_lease_soon_frees_the_key_by_close(
    make_cache: CacheFactory, backend: str
) -> None:
    # A producer releasing at send must not wait on the cache; close() lets the release
    # finish instead of cutting it off.
    one = make_cache()
    found = await one.lookup("soon", claim=True)
    if found.token is None:
        pytest.skip("no lease on this backend")
    one.release_lease_soon("soon", found.token)  # returns at once
    await one.close()
    other = make_cache()
    again = await other.lookup("soon", claim=True)
    assert again.state == "miss"
    assert again.token is not None  # taken by other: the first lease was given back


async def test_stale_lookup_claims_one_refresh(make_cache: CacheFactory, backend: str) -> None:
    cache = make_cache(stale_ttl=60)
    await cache.get_or_create("s", lambda: "old", 1)
    await asyncio.sleep(1.05)
    first = await cache.lookup("s", claim=True)
    second = await cache.lookup("s", claim=True)
    assert (first.state, first.value) == ("stale", "old")
    assert (second.state, second.value, second.token) == ("stale", "old", None)
    if backend == "memory":
        assert first.token is None
        return
    assert first.token is not None
    # The worker that gets the refresh adopts the claimed lease and regenerates.
    assert await cache.get_or_create("s", lambda: "new", 1, lease_token=first.token) == "new"
    assert (await cache.lookup("s")).value == "new"


async def test_in_memory_flight_is_in_flight(make_cache: CacheFactory, backend: str) -> None:
    if backend != "memory":
        pytest.skip("in-process flights are the in-memory backend's in_flight")
    cache = make_cache()
    gate = asyncio.Event()

    async def creator() -> int:
        await gate.wait()
        return 7

    running = asyncio.create_task(cache.get_or_create("f", creator, 60))
    await asyncio.sleep(0)
    assert await cache.lookup("f") == CacheLookup("in_flight", holder="")
    waiter = asyncio.create_task(cache.wait_for_release("f", "", 5.0))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    gate.set()
    await waiter
    assert await running == 7
    assert (await cache.lookup("f")).value == 7


async def test_corrupt_entry_looks_like_a_miss(cache: BaseCacheAdapter, backend: str) -> None:
    if backend != "redis":
        pytest.skip("needs a raw write")
    await cache.set("x", 1)
    client = cache.client  # type: ignore[attr-defined]
    await client.set(f"{cache.key_prefix}v:x", b"\xc1")  # type: ignore[attr-defined]
    found = await cache.lookup("x", claim=True)
    assert (found.state, found.token) == ("miss", None)
