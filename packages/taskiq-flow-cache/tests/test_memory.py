"""In-memory specifics: the LRU bound and expired entries not accumulating."""

from __future__ import annotations

import asyncio

import pytest

from taskiq_flow.cache import CacheValueError, InMemoryCacheAdapter


async def test_max_entries_evicts_the_least_recently_used() -> None:
    cache = InMemoryCacheAdapter(max_entries=3)
    for key in ("a", "b", "c"):
        await cache.set(key, key)
    assert await cache.get("a") == "a"  # a is now the most recently used
    await cache.set("d", "d")
    assert len(cache) == 3
    assert await cache.get("b") is None
    assert [await cache.get(k) for k in ("a", "c", "d")] == ["a", "c", "d"]
    await cache.get_or_create("e", lambda: "e")
    assert len(cache) == 3


async def test_expired_entries_do_not_accumulate() -> None:
    cache = InMemoryCacheAdapter()
    for i in range(200):
        await cache.set(f"k{i}", i, ttl_seconds=1)
    assert len(cache) == 200
    await asyncio.sleep(1.05)
    await cache.set("fresh", 1, ttl_seconds=60)
    assert len(cache) == 1
    assert await cache.clear() == 1


async def test_overwrites_keep_the_expiry_index_bounded() -> None:
    cache = InMemoryCacheAdapter()
    for i in range(5000):
        await cache.set("same", i, ttl_seconds=60)
    assert len(cache) == 1
    assert len(cache._expiries) <= 2 * len(cache) + 65
    assert await cache.get("same") == 4999


@pytest.mark.parametrize("bad", [0, -5, 1.5, "3"])
def test_bad_max_entries(bad: object) -> None:
    with pytest.raises(CacheValueError):
        InMemoryCacheAdapter(max_entries=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("option", ["default_ttl", "stale_ttl"])
def test_bad_default_ttls(option: str) -> None:
    with pytest.raises(CacheValueError):
        InMemoryCacheAdapter(**{option: 0})  # type: ignore[arg-type]


def test_bad_max_wait() -> None:
    with pytest.raises(CacheValueError):
        InMemoryCacheAdapter(max_wait=0)


async def test_no_expiry_when_default_ttl_is_none() -> None:
    cache = InMemoryCacheAdapter(default_ttl=None)
    await cache.set("k", 1)
    assert cache._entries["k"][1] is None


async def test_a_write_without_ttl_drops_expired_entries_before_evicting_live_ones() -> None:
    cache = InMemoryCacheAdapter(max_entries=2, default_ttl=None)
    await cache.set("live", 1)
    await cache.set("short", 2, ttl_seconds=1)
    await asyncio.sleep(1.05)
    await cache.set("new", 3)  # no TTL: the expired entry must go, not the live one
    assert await cache.get("live") == 1
    assert await cache.get("new") == 3
    assert len(cache) == 2
