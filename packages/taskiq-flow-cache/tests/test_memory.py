"""In-memory specifics: the LRU bound and expired entries not accumulating."""

from __future__ import annotations

import asyncio

import pytest

from taskiq_flow.cache import CacheValueError, InMemoryCacheAdapter
from taskiq_flow.cache.backend import LeaseResult
from taskiq_flow.cache.codec import encode_entry


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
    assert len(cache._store._expiries) <= 2 * len(cache) + 65
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
    assert cache._store.get("k", 0.0)[2] is None  # type: ignore[index]


async def test_a_write_without_ttl_drops_expired_entries_before_evicting_live_ones() -> None:
    cache = InMemoryCacheAdapter(max_entries=2, default_ttl=None)
    await cache.set("live", 1)
    await cache.set("short", 2, ttl_seconds=1)
    await asyncio.sleep(1.05)
    await cache.set("new", 3)  # no TTL: the expired entry must go, not the live one
    assert await cache.get("live") == 1
    assert await cache.get("new") == 3
    assert len(cache) == 2


class _Layered(InMemoryCacheAdapter):
    """A subclass that answers reads from a read-through layer of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.layer: dict[str, bytes] = {}
        self.reads: list[str] = []

    async def _read_raw(self, key: str) -> bytes | None:
        self.reads.append(key)
        found = self.layer.get(key)
        return found if found is not None else await super()._read_raw(key)


async def test_a_subclass_overriding_the_read_hook_is_honoured_by_get_or_create() -> None:
    # The lock has one path for every backend: no in-memory shortcut bypasses _read_raw.
    cache = _Layered()
    cache.layer["warm"] = encode_entry("warm", "from the layer")
    calls: list[str] = []

    async def creator() -> str:
        calls.append("ran")
        return "created"

    assert await cache.get_or_create("warm", creator, 60) == "from the layer"
    assert calls == []
    assert await cache.get_or_create("cold", creator, 60) == "created"
    assert calls == ["ran"]
    assert "warm" in cache.reads
    assert cache.reads.count("cold") >= 1


async def test_close_keeps_the_entries_and_clear_removes_them() -> None:
    # One rule for both in-memory adapters: close() releases connections (none here).
    cache = InMemoryCacheAdapter()
    await cache.set("k", 1)
    await cache.close()
    await cache.close()
    assert await cache.get("k") == 1
    assert await cache.clear() == 1
    assert await cache.get("k") is None


class _SlowRead(InMemoryCacheAdapter):
    """A subclass whose read hook awaits (as a read through I/O or metrics would)."""

    async def _read_raw(self, key: str) -> bytes | None:
        payload = await super()._read_raw(key)
        await asyncio.sleep(0.05)
        return payload


async def test_a_value_landed_during_a_suspended_read_is_not_created_again() -> None:
    # The late caller's read starts before the first caller commits and returns after
    # its flight is gone: without a re-read it would run the creator a second time.
    cache = _SlowRead()
    runs = 0

    async def creator() -> int:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.03)
        return runs

    async def late() -> int:
        await asyncio.sleep(0.06)
        return int(await cache.get_or_create("k", creator, 60))

    assert await asyncio.gather(cache.get_or_create("k", creator, 60), late()) == [1, 1]
    assert runs == 1


async def test_a_stale_entry_refreshed_during_a_suspended_read_is_not_regenerated_again() -> None:
    cache = _SlowRead()
    runs = 0

    async def creator() -> int:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.03)
        return runs

    assert await cache.get_or_create("t", creator, 1, stale_ttl=60) == 1
    await asyncio.sleep(1.05)  # past the soft expiry, inside the stale window

    async def late() -> int:
        await asyncio.sleep(0.06)
        return int(await cache.get_or_create("t", creator, 1, stale_ttl=60))

    first, second = await asyncio.gather(cache.get_or_create("t", creator, 1, stale_ttl=60), late())
    assert runs == 2  # the first run, then exactly one regeneration
    assert (first, second) == (2, 2)


def test_a_lease_hook_without_a_lease_period_is_refused_at_class_creation() -> None:
    # The lock calls the lease hooks only when _lease_seconds is not None: overriding
    # one without it would be silently ignored, so the class itself is refused.
    with pytest.raises(TypeError, match="_acquire_lease"):

        class _Leasing(InMemoryCacheAdapter):
            async def _acquire_lease(
                self, key: str, token: str, *, ignore: bytes | None
            ) -> LeaseResult:
                return await super()._acquire_lease(key, token, ignore=ignore)


async def test_a_subclass_with_a_lease_period_gets_its_lease_hooks_called() -> None:
    calls: list[str] = []

    class _Leasing(InMemoryCacheAdapter):
        @property
        def _lease_seconds(self) -> float | None:
            return 5.0

        async def _acquire_lease(
            self, key: str, token: str, *, ignore: bytes | None
        ) -> LeaseResult:
            calls.append(token)
            return await super()._acquire_lease(key, token, ignore=ignore)

    cache = _Leasing()
    assert await cache.get_or_create("k", lambda: 7, 60) == 7
    assert len(calls) == 1
    assert calls[0]  # a real token: the lease path ran
