"""The contract every cache adapter keeps: run over the in-memory and the Redis adapter."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from taskiq_flow.cache import (
    BaseCacheAdapter,
    CacheError,
    CacheKeyError,
    CacheLockTimeout,
    CacheSerializationError,
    CacheValueError,
    Expiring,
    InMemoryCacheAdapter,
    _creation,
)
from taskiq_flow.cache.codec import encode_entry
from taskiq_flow.storage.kit.cluster import hash_tag

CacheFactory = Callable[..., BaseCacheAdapter]


async def write_raw(cache: BaseCacheAdapter, key: str, payload: bytes) -> None:
    """Put raw (possibly corrupt) bytes under ``key``, bypassing the codec."""
    if isinstance(cache, InMemoryCacheAdapter):
        await cache._commit(key, "", payload, None)  # the backend hook that stores bytes
    else:
        # On a Redis Cluster the key part of a name is a hash tag (kit.cluster.hash_tag).
        tagged = hash_tag(key) if cache.connection.is_cluster else key  # type: ignore[attr-defined]
        await cache.client.set(cache.key_prefix + "v:" + tagged, payload)  # type: ignore[attr-defined]


@dataclasses.dataclass
class Point:
    x: int
    y: int


# -- storage ---------------------------------------------------------------------------------


async def test_set_get_delete(cache: BaseCacheAdapter) -> None:
    assert await cache.get("missing") is None
    assert await cache.get("missing", default=7) == 7
    await cache.set("k", {"a": [1, 2, 3]})
    assert await cache.get("k") == {"a": [1, 2, 3]}
    assert await cache.delete("k") is True
    assert await cache.delete("k") is False
    assert await cache.get("k") is None


async def test_values_round_trip_including_bytes_and_none(cache: BaseCacheAdapter) -> None:
    values: dict[str, Any] = {
        "bytes": b"\x00\xffpre-encoded payload",
        "none": None,
        "int": 2**40,
        "float": 1.5,
        "str": "héllo",
        "list": [1, "a", None],
        "nested": {"k": {"j": [b"x"]}},
        "point": Point(1, 2),
    }
    for key, value in values.items():
        await cache.set(key, value)
    assert await cache.get("bytes") == values["bytes"]
    assert await cache.get("none", default="sentinel") is None
    assert await cache.get("nested") == {"k": {"j": [b"x"]}}
    assert await cache.get("point") == {"x": 1, "y": 2}


async def test_stored_value_is_a_copy(cache: BaseCacheAdapter) -> None:
    value = {"items": [1]}
    await cache.set("k", value)
    value["items"].append(2)
    assert await cache.get("k") == {"items": [1]}


async def test_invalidate_is_delete(cache: BaseCacheAdapter) -> None:
    await cache.set("k", 1)
    assert await cache.invalidate("k") is True
    assert await cache.get("k") is None
    assert await cache.invalidate("k") is False


async def test_clear_removes_every_entry(cache: BaseCacheAdapter) -> None:
    for i in range(5):
        await cache.set(f"k{i}", i)
    assert await cache.clear() == 5
    assert await cache.get("k0") is None
    assert await cache.clear() == 0


async def test_ttl_expiry(cache: BaseCacheAdapter) -> None:
    await cache.set("short", "v", ttl_seconds=1)
    await cache.set("long", "v", ttl_seconds=60)
    assert await cache.get("short") == "v"
    await asyncio.sleep(1.1)
    assert await cache.get("short") is None
    assert await cache.get("long") == "v"


async def test_default_ttl_applies(make_cache: CacheFactory) -> None:
    cache = make_cache(default_ttl=1)
    await cache.set("k", "v")
    await cache.get_or_create("g", lambda: "v")
    await asyncio.sleep(1.1)
    assert await cache.get("k") is None
    assert await cache.get("g") is None


# -- get_or_create -----------------------------------------------------------------------------


async def test_get_or_create_sync_creator_runs_in_a_thread(cache: BaseCacheAdapter) -> None:
    threads: list[int] = []

    def creator() -> str:
        threads.append(threading.get_ident())
        return "made"

    assert await cache.get_or_create("k", creator, 60) == "made"
    assert threads
    assert threads[0] != threading.get_ident()
    assert await cache.get_or_create("k", creator, 60) == "made"
    assert len(threads) == 1


async def test_get_or_create_async_creator_runs_in_the_callers_task(
    cache: BaseCacheAdapter,
) -> None:
    tasks: list[asyncio.Task[Any] | None] = []

    async def creator() -> list[int]:
        tasks.append(asyncio.current_task())
        return [1, 2]

    assert await cache.get_or_create("k", creator, 60) == [1, 2]
    assert tasks == [asyncio.current_task()]
    assert await cache.get_or_create("k", creator, 60) == [1, 2]
    assert len(tasks) == 1


async def test_get_or_create_returns_what_a_hit_returns(cache: BaseCacheAdapter) -> None:
    first = await cache.get_or_create("k", lambda: (1, Point(3, 4)), 60)
    second = await cache.get_or_create("k", lambda: "never", 60)
    assert first == second == [1, {"x": 3, "y": 4}]


async def test_stats_count_hits_misses_and_hit_rate(cache: BaseCacheAdapter) -> None:
    stats = cache.get_stats()
    assert stats["hits"] == 0
    assert stats["hit_rate"] == 0.0
    assert stats["scope"] == "process"
    await cache.get_or_create("k", lambda: 1, 60)  # miss + regeneration
    for _ in range(3):
        await cache.get_or_create("k", lambda: 1, 60)  # hits
    await cache.get("absent")  # miss
    stats = cache.get_stats()
    assert stats["hits"] == 3
    assert stats["misses"] == 2
    assert stats["hit_rate"] == pytest.approx(0.6)
    assert stats["regenerations"] == 1
    assert stats["errors"] == 0
    for name in ("stale_hits", "lock_waits", "regenerations", "errors"):
        assert isinstance(stats[name], int)


async def test_stampede_500_callers_one_creation_loop_never_blocked(
    cache: BaseCacheAdapter,
) -> None:
    calls = 0
    window: list[float] = []

    def creator() -> str:
        nonlocal calls
        calls += 1
        window.append(time.monotonic())
        time.sleep(0.6)  # a blocking creator: it must run off the event loop
        window.append(time.monotonic())
        return "expensive"

    ticks: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    ticking = asyncio.create_task(ticker())
    results = await asyncio.gather(*(cache.get_or_create("cold", creator, 60) for _ in range(500)))
    stop.set()
    await ticking
    assert calls == 1
    assert results == ["expensive"] * 500
    # While the creator sleeps 0.6 s, the loop keeps ticking every ~10 ms.
    during = [t for t in ticks if window[0] <= t <= window[1]]
    assert len(during) >= 15, f"only {len(during)} ticks while the creator ran"
    gaps = [b - a for a, b in itertools.pairwise(during)]
    assert max(gaps) < 0.25, f"event loop stalled for {max(gaps):.3f}s"
    stats = cache.get_stats()
    assert stats["regenerations"] == 1
    assert stats["lock_waits"] == 499


async def test_creator_error_reaches_every_waiter_nothing_cached_next_call_retries(
    cache: BaseCacheAdapter,
) -> None:
    class BoomError(RuntimeError):
        pass

    calls = 0

    async def failing() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.1)
        raise BoomError("creator failed")

    results = await asyncio.gather(
        *(cache.get_or_create("k", failing, 60) for _ in range(50)), return_exceptions=True
    )
    assert calls == 1
    assert all(type(r) is BoomError for r in results)
    assert await cache.get("k", default="absent") == "absent"
    assert cache.get_stats()["creator_errors"] == 1

    async def working() -> str:
        nonlocal calls
        calls += 1
        return "ok"

    assert await cache.get_or_create("k", working, 60) == "ok"
    assert calls == 2


async def test_sync_creator_error_propagates_with_its_type(cache: BaseCacheAdapter) -> None:
    def failing() -> int:
        raise KeyError("missing input")

    with pytest.raises(KeyError, match="missing input"):
        await cache.get_or_create("k", failing, 60)


async def test_callers_with_their_own_contextvars(cache: BaseCacheAdapter) -> None:
    caller = contextvars.ContextVar[int]("caller")
    seen: list[int] = []

    async def creator() -> int:
        seen.append(caller.get())
        await asyncio.sleep(0.05)
        return caller.get()

    def sync_creator() -> int:
        seen.append(caller.get())
        time.sleep(0.05)
        return caller.get()

    async def one(i: int, key: str, make: Callable[[], Any]) -> Any:
        caller.set(i)
        return await cache.get_or_create(key, make, 60)

    for key, make in (("async", creator), ("sync", sync_creator)):
        seen.clear()
        tasks = [asyncio.create_task(one(i, key, make)) for i in range(40)]
        results = await asyncio.gather(*tasks)
        assert len(seen) == 1
        assert set(results) == {seen[0]}


async def test_cancelled_leader_hands_over_to_a_waiter(cache: BaseCacheAdapter) -> None:
    calls = 0

    async def creator() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.3)
        return f"v{calls}"

    leader = asyncio.create_task(cache.get_or_create("k", creator, 60))
    await asyncio.sleep(0.05)
    waiters = [asyncio.create_task(cache.get_or_create("k", creator, 60)) for _ in range(5)]
    await asyncio.sleep(0.05)
    leader.cancel()
    results = await asyncio.gather(*waiters)
    assert results == ["v2"] * 5
    assert calls == 2
    assert leader.cancelled()


async def test_waiter_gives_up_after_max_wait(make_cache: CacheFactory) -> None:
    cache = make_cache(max_wait=0.3)

    async def slow() -> str:
        await asyncio.sleep(1.5)
        return "late"

    leader = asyncio.create_task(cache.get_or_create("k", slow, 60))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    with pytest.raises(CacheLockTimeout) as info:
        await cache.get_or_create("k", slow, 60)
    assert 0.25 < time.monotonic() - started < 1.2
    assert isinstance(info.value, TimeoutError)
    assert "k" in str(info.value)
    assert await leader == "late"  # the waiter giving up never cancels the creation
    assert cache.get_stats()["lock_timeouts"] == 1


@pytest.mark.parametrize("outcome", ["value", "error"])
async def test_a_flight_landing_as_the_wait_runs_out_is_the_waiters_outcome(
    make_cache: CacheFactory, monkeypatch: pytest.MonkeyPatch, outcome: str
) -> None:
    # Under load, asyncio.wait_for's timeout and the creator's end can fall in one loop
    # iteration: wait_for then cancels the shield and reports a timeout although the
    # flight holds its outcome. The joiner must take that outcome, not fail the call with
    # a bare TimeoutError (seen in CI: two of three identical tasks failed so).
    cache = make_cache(max_wait=5)
    release = asyncio.Event()

    async def creator() -> str:
        await release.wait()
        if outcome == "error":
            raise ValueError("the creator's own error")
        return "created"

    leader = asyncio.create_task(cache.get_or_create("race", creator, 60))
    await asyncio.sleep(0.05)  # the leader's flight is registered and running
    real_wait_for = asyncio.wait_for

    async def landing_as_it_times_out(awaitable: Any, timeout: float | None) -> Any:
        release.set()
        with contextlib.suppress(ValueError):
            await real_wait_for(asyncio.shield(leader), timeout=5)  # the flight lands
        awaitable.cancel()  # what wait_for does to the shield when its timer fires first
        raise TimeoutError

    monkeypatch.setattr(_creation, "_wait_for", landing_as_it_times_out)
    if outcome == "value":
        assert await cache.get_or_create("race", creator, 60) == "created"
        assert await leader == "created"
    else:
        with pytest.raises(ValueError, match="own error"):
            await cache.get_or_create("race", creator, 60)
        with pytest.raises(ValueError, match="own error"):
            await leader
    assert cache.get_stats()["lock_timeouts"] == 0


# -- stale-while-revalidate ----------------------------------------------------------------------


async def test_stale_while_revalidate(cache: BaseCacheAdapter) -> None:
    assert await cache.get_or_create("k", lambda: "old", 1, stale_ttl=30) == "old"
    await asyncio.sleep(1.05)
    calls = 0
    regenerated_at = 0.0

    async def regenerate() -> str:
        nonlocal calls, regenerated_at
        calls += 1
        await asyncio.sleep(0.6)
        regenerated_at = time.monotonic()
        return "new"

    async def timed() -> tuple[Any, float]:
        value = await cache.get_or_create("k", regenerate, 1, stale_ttl=30)
        return value, time.monotonic()

    results = await asyncio.gather(*(timed() for _ in range(20)))
    assert calls == 1
    fresh = [r for r in results if r[0] == "new"]
    stale = [r for r in results if r[0] == "old"]
    assert len(fresh) == 1
    assert len(stale) == 19
    # Every other caller got the stale value while the regeneration was still running.
    assert max(finished for _, finished in stale) < regenerated_at
    assert cache.get_stats()["stale_hits"] == 19
    assert await cache.get_or_create("k", regenerate, 1, stale_ttl=30) == "new"
    assert calls == 1


async def test_stale_entry_hard_expires_after_the_window(cache: BaseCacheAdapter) -> None:
    await cache.get_or_create("k", lambda: "old", 1, stale_ttl=1)
    await asyncio.sleep(2.1)
    assert await cache.get("k") is None


async def test_adapter_default_stale_ttl(make_cache: CacheFactory) -> None:
    cache = make_cache(stale_ttl=30)
    await cache.get_or_create("k", lambda: "old", 1)
    await asyncio.sleep(1.05)
    regenerating = asyncio.create_task(cache.get_or_create("k", _slow_new, 1))
    await asyncio.sleep(0.05)
    assert await cache.get_or_create("k", _slow_new, 1) == "old"
    assert await regenerating == "new"


async def _slow_new() -> str:
    await asyncio.sleep(0.3)
    return "new"


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("ttl", [0, -1, 1.5, "10", True])
async def test_bad_ttl_is_a_value_error(cache: BaseCacheAdapter, ttl: Any) -> None:
    with pytest.raises(CacheValueError) as info:
        await cache.set("k", 1, ttl_seconds=ttl)
    assert isinstance(info.value, ValueError)
    with pytest.raises(ValueError, match="ttl_seconds"):
        await cache.get_or_create("k", lambda: 1, ttl)
    with pytest.raises(ValueError, match="stale_ttl"):
        await cache.get_or_create("k", lambda: 1, 10, stale_ttl=ttl)
    assert await cache.get("k") is None


@pytest.mark.parametrize("key", ["", 5, None, b"k", "\udc80", "caf\u00e9\ud800"])
async def test_bad_key_is_a_cache_key_error_on_every_method(
    cache: BaseCacheAdapter, key: Any
) -> None:
    # One rule for every backend (the storage package's): the lone surrogates used to
    # pass the in-memory cache and crash the Redis one with a bare UnicodeEncodeError.
    created: list[int] = []
    for call in (
        lambda: cache.set(key, 1),
        lambda: cache.get(key),
        lambda: cache.delete(key),
        lambda: cache.invalidate(key),
        lambda: cache.get_or_create(key, lambda: created.append(1)),
    ):
        with pytest.raises(CacheKeyError) as info:
            await call()
        assert isinstance(info.value, CacheValueError)
        assert isinstance(info.value, TypeError | ValueError)
        assert info.value.key == key
    assert created == []


async def test_unencodable_value_is_a_serialization_error(cache: BaseCacheAdapter) -> None:
    with pytest.raises(CacheSerializationError) as info:
        await cache.set("k", object())
    assert isinstance(info.value, TypeError)
    assert "'k'" in str(info.value)
    assert "object" in str(info.value)
    assert await cache.get("k") is None

    results = await asyncio.gather(
        *(cache.get_or_create("k", lambda: {1, object()}, 60) for _ in range(10)),
        return_exceptions=True,
    )
    assert all(type(r) is CacheSerializationError for r in results)
    assert await cache.get("k") is None
    assert await cache.get_or_create("k", lambda: "fine", 60) == "fine"


async def test_corrupt_bytes_are_a_logged_miss(
    cache: BaseCacheAdapter, caplog: pytest.LogCaptureFixture
) -> None:
    await write_raw(cache, "k", b"\xc1\xc1 not msgpack")
    with caplog.at_level(logging.WARNING, logger="taskiq_flow.cache"):
        assert await cache.get("k", default="miss") == "miss"
        assert await cache.get_or_create("k", lambda: "rebuilt", 60) == "rebuilt"
    assert "corrupt" in caplog.text
    assert "'k'" in caplog.text
    assert await cache.get("k") == "rebuilt"
    assert cache.get_stats()["corrupt_entries"] == 2


async def test_errors_share_one_root() -> None:
    for exc_type in (CacheValueError, CacheSerializationError, CacheLockTimeout):
        assert issubclass(exc_type, CacheError)


async def test_stale_ttl_without_any_ttl_is_rejected(make_cache: CacheFactory) -> None:
    cache = make_cache(default_ttl=None)
    with pytest.raises(CacheValueError, match="stale_ttl"):
        await cache.get_or_create("k", lambda: 1, stale_ttl=5)


async def test_async_context_manager_closes(make_cache: CacheFactory) -> None:
    async with make_cache() as cache:
        await cache.set("k", 1)
        assert await cache.get("k") == 1


# -- the lease primitives the lock is built on -------------------------------------------------


async def test_acquire_lease_contract(cache: BaseCacheAdapter) -> None:
    first = await cache._acquire_lease("k", "token-a", ignore=None)
    assert first.acquired
    assert first.payload is None
    await cache._commit("k", "token-a", encode_entry("k", "v1"), 60_000)
    old = encode_entry("k", "v1")
    present = await cache._acquire_lease("k", "token-b", ignore=None)
    assert (present.payload, present.acquired) == (old, False)
    # The entry the caller already saw (stale or corrupt) does not count as a value...
    again = await cache._acquire_lease("k", "token-b", ignore=old)
    assert again.acquired
    await cache._commit("k", "token-b", encode_entry("k", "v2"), 60_000)
    # ...but a different one (refreshed meanwhile) is returned instead of a second lease.
    refreshed = await cache._acquire_lease("k", "token-c", ignore=old)
    assert refreshed.payload == encode_entry("k", "v2")
    assert not refreshed.acquired


# -- refresh and per-value TTLs (issue 17) ----------------------------------------------------


async def test_refresh_overwrites_a_fresh_entry_and_restarts_its_ttl(
    cache: BaseCacheAdapter,
) -> None:
    await cache.set("k", "old", ttl_seconds=1)
    assert await cache.refresh("k", lambda: "new", 60) == "new"
    await asyncio.sleep(1.1)
    assert await cache.get("k") == "new"  # the old TTL no longer applies
    assert await cache.get_or_create("k", lambda: "unused", 60) == "new"


async def test_concurrent_refreshers_run_the_creator_once(make_cache: CacheFactory) -> None:
    first = make_cache()
    # On Redis a second adapter is another process's view: the lease is shared.
    second = first if isinstance(first, InMemoryCacheAdapter) else make_cache()
    await first.set("k", "old", ttl_seconds=60)
    assert await second.get("k") == "old"  # both connected (a Cluster client maps slots first)
    runs = 0

    async def creator() -> str:
        nonlocal runs
        runs += 1
        # Long enough for every refresher to read the old entry before this one commits:
        # a refresh that starts after another has finished is a new refresh.
        await asyncio.sleep(1.0)
        return f"new{runs}"

    results = await asyncio.gather(
        *(cache.refresh("k", creator, 60) for cache in [first, second] * 10)
    )
    assert runs == 1
    assert set(results) == {"new1"}
    assert await second.get("k") == "new1"


async def test_refresh_error_keeps_the_old_entry(cache: BaseCacheAdapter) -> None:
    await cache.set("k", "old", ttl_seconds=60)

    def boom() -> str:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await cache.refresh("k", boom, 60)
    assert await cache.get("k") == "old"


async def test_refresh_checks_its_arguments(cache: BaseCacheAdapter) -> None:
    with pytest.raises(CacheKeyError):
        await cache.refresh("", lambda: 1, 60)
    with pytest.raises(CacheValueError):
        await cache.refresh("k", lambda: 1, 0)


async def test_creator_can_choose_its_entry_ttl(cache: BaseCacheAdapter) -> None:
    assert await cache.get_or_create("short", lambda: Expiring("v", 1), 3600) == "v"
    assert await cache.refresh("long", lambda: Expiring("w", 3600), 1) == "w"
    await asyncio.sleep(1.1)
    assert await cache.get("short") is None
    assert await cache.get("long") == "w"
    with pytest.raises(CacheValueError):
        await cache.get_or_create("bad", lambda: Expiring("v", 0), 60)
    assert await cache.get("bad") is None
