"""Redis-only behaviour: one command per hit, push wake-up, key isolation, a dead server."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
import zlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from taskiq_flow.cache import (
    CacheBackendError,
    CacheConnectionError,
    CacheLockTimeout,
    CacheValueError,
)
from taskiq_flow.cache._lease import claim_age, claim_token
from taskiq_flow.cache.redis import DEFAULT_KEY_PREFIX, RedisCacheAdapter
from taskiq_flow.cache.stats import LOCK_WAIT
from taskiq_flow_testing import RedisServer, free_port

pytestmark = pytest.mark.redis

STORAGE_DEFAULT_PREFIX = "taskiq_flow:"


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    raw = aioredis.Redis.from_url(redis_url)
    yield raw
    await raw.aclose()


async def _commands_since_reset(client: aioredis.Redis) -> dict[str, int]:
    info: dict[str, Any] = await client.info("commandstats")
    ignored = {"cmdstat_info", "cmdstat_config|resetstat"}
    return {name: stat["calls"] for name, stat in info.items() if name not in ignored}


async def test_a_fresh_hit_is_exactly_one_command(client: aioredis.Redis) -> None:
    cache = RedisCacheAdapter(client=client)
    assert await cache.get_or_create("k", lambda: {"v": 1}, 60) == {"v": 1}
    await client.config_resetstat()
    assert await cache.get_or_create("k", lambda: {"v": 2}, 60) == {"v": 1}
    # One round trip: the read-or-acquire script, which found the entry (its GET inside).
    assert await _commands_since_reset(client) == {"cmdstat_evalsha": 1, "cmdstat_get": 1}

    await client.config_resetstat()
    assert await cache.get("k") == {"v": 1}
    assert await _commands_since_reset(client) == {"cmdstat_get": 1}
    await cache.close()
    assert await client.ping()  # a borrowed client stays open


async def test_a_miss_takes_the_lease_in_one_script(client: aioredis.Redis) -> None:
    cache = RedisCacheAdapter(client=client)
    await cache.get_or_create("warm-up", lambda: 1, 60)  # loads the scripts
    await client.config_resetstat()
    await cache.get_or_create("k", lambda: 1, 60)
    info: dict[str, Any] = await client.info("commandstats")
    # Two round trips: EVALSHA read-or-acquire (GET, GET lease, SET NX lease), EVALSHA
    # commit (GET lease, SET value, DEL lease, RPUSH + PEXPIRE wake). commandstats also
    # counts the commands the scripts run inside Redis: those are all it lists besides.
    assert info["cmdstat_evalsha"]["calls"] == 2
    assert info["cmdstat_evalsha"]["failed_calls"] == 0
    inside = {"cmdstat_get", "cmdstat_set", "cmdstat_del", "cmdstat_rpush", "cmdstat_pexpire"}
    assert set(info) - {"cmdstat_evalsha", "cmdstat_config|resetstat"} <= inside
    assert "cmdstat_script|load" not in info


async def test_a_coalesced_batch_of_hits_and_misses_is_one_round_trip(
    client: aioredis.Redis,
) -> None:
    """Read-or-acquire is declared repeatable, so concurrent first looks share a pipeline."""
    cache = RedisCacheAdapter(client=client)
    await cache.get_or_create("warm-up", lambda: 1, 60)
    for i in range(5):
        await cache.set(f"hit-{i}", i)
    batches = cache.connection.coalescer.batches
    values = await asyncio.gather(
        *(cache.get_or_create(f"hit-{i}", lambda: -1, 60) for i in range(5)),
        *(cache.get_or_create(f"miss-{i}", lambda i=i: i * 10, 60) for i in range(5)),
    )
    assert values == [0, 1, 2, 3, 4, 0, 10, 20, 30, 40]
    # The ten first looks left as one batch; the five commits (AsyncScript: not
    # coalesced) one by one.
    assert cache.connection.coalescer.batches == batches + 1


async def test_concurrent_claims_at_send_share_one_round_trip(client: aioredis.Redis) -> None:
    """A producer kicking many calls at once: their looks (lookup with claim) coalesce."""
    cache = RedisCacheAdapter(client=client)
    await cache.get_or_create("warm-up", lambda: 1, 60)
    await cache.set("hit", "cached")
    batches = cache.connection.coalescer.batches
    found = await asyncio.gather(
        cache.lookup("hit", claim=True), *(cache.lookup(f"m{i}", claim=True) for i in range(9))
    )
    assert found[0].state == "hit"
    assert [f.state for f in found[1:]] == ["miss"] * 9
    assert all(f.token is not None for f in found[1:])
    assert cache.connection.coalescer.batches == batches + 1


async def test_a_repeated_read_or_acquire_takes_its_own_lease_for_acquired(
    client: aioredis.Redis,
) -> None:
    """What a retried batch does: the script runs again with the same token."""
    cache = RedisCacheAdapter(client=client, lock_timeout=5)
    first = await cache._read_or_acquire("k", "tok")
    await client.pexpire(DEFAULT_KEY_PREFIX + "lock:k", 1000)  # most of the lease used up
    again = await cache._read_or_acquire("k", "tok")
    other = await cache._read_or_acquire("k", "someone-else")
    assert first.acquired
    # Its own lease: reported acquired, and renewed to the full lease (5 s) on the way.
    assert again.acquired
    assert await client.pttl(DEFAULT_KEY_PREFIX + "lock:k") > 4000
    assert other.holder == "tok"
    assert not other.acquired
    # The lock creates under it, once, and releases it.
    calls = 0

    def creator() -> str:
        nonlocal calls
        calls += 1
        return "made"

    assert await cache.get_or_create("k", creator, 60, lease_token="tok") == "made"  # noqa: S106
    assert calls == 1
    assert await client.exists(DEFAULT_KEY_PREFIX + "lock:k") == 0


async def test_a_fresh_claim_is_adopted_without_a_look(client: aioredis.Redis) -> None:
    """A worker adopting the lease a producer claimed at send moments ago: the claim was
    the look, so the miss costs the worker only its commit."""
    cache = RedisCacheAdapter(client=client, lock_timeout=5)
    await cache.get_or_create("warm-up", lambda: 1, 60)  # loads the scripts
    claimed = await cache.lookup("k", claim=True)
    assert claimed.token is not None
    misses = cache.get_stats()["misses"]
    await client.config_resetstat()
    assert await cache.get_or_create("k", lambda: "made", 60, lease_token=claimed.token) == "made"
    info: dict[str, Any] = await client.info("commandstats")
    assert info["cmdstat_evalsha"]["calls"] == 1  # the commit
    assert await cache.get("k") == "made"
    assert await client.exists(DEFAULT_KEY_PREFIX + "lock:k") == 0
    assert cache.get_stats()["misses"] == misses + 1


async def test_an_older_claim_is_looked_at_and_renewed_first(client: aioredis.Redis) -> None:
    """A claim a third of the lease old or more (its message waited in the queue): the
    first look renews it to a full lease (in the same script), then the commit."""
    cache = RedisCacheAdapter(client=client, lock_timeout=5)
    await cache.get_or_create("warm-up", lambda: 1, 60)
    old = _claim("k", age=2, lease_ms=5000)  # drawn 2 s ago: past 5 s / 3
    assert claim_age(old, "k") == (pytest.approx(2, abs=0.5), 5)
    assert (await cache._read_or_acquire("k", old)).acquired
    await client.pexpire(DEFAULT_KEY_PREFIX + "lock:k", 1000)  # 3 s of it used up (and more)
    lease_left: list[int] = []

    async def creator() -> str:
        lease_left.append(await client.pttl(DEFAULT_KEY_PREFIX + "lock:k"))
        return "made"

    await client.config_resetstat()
    assert await cache.get_or_create("k", creator, 60, lease_token=old) == "made"
    info: dict[str, Any] = await client.info("commandstats")
    assert lease_left[0] > 4000  # renewed to the full lease before the creator ran
    assert info["cmdstat_evalsha"]["calls"] == 2  # first look (renewing), commit
    assert await cache.get("k") == "made"


async def test_a_fresh_claim_whose_lease_went_elsewhere_stores_nothing(
    client: aioredis.Redis,
) -> None:
    """What the skipped look would have seen, the commit sees: the lease is not the
    claim's any more (invalidated, then taken by another caller), so the adopting worker's
    value is returned to its caller but not written over the other holder's call."""
    cache = RedisCacheAdapter(client=client, lock_timeout=5)
    claimed = await cache.lookup("k", claim=True)
    assert claimed.token is not None
    await client.set(DEFAULT_KEY_PREFIX + "lock:k", "someone-else", px=5000)
    assert await cache.get_or_create("k", lambda: "mine", 60, lease_token=claimed.token) == "mine"
    assert await client.exists(DEFAULT_KEY_PREFIX + "v:k") == 0
    assert await client.get(DEFAULT_KEY_PREFIX + "lock:k") == b"someone-else"


def _claim(key: str, *, age: float, lease_ms: int) -> str:
    """A claim token for ``key`` drawn ``age`` seconds ago (what claim_token makes)."""
    drawn = int((time.time() - age) * 1000)
    return f"{drawn:x}.{lease_ms:x}.{zlib.crc32(key.encode()):08x}.{'ab' * 10}"


async def test_a_fresh_claim_gets_its_first_renewal_a_third_of_the_lease_after_the_claim(
    client: aioredis.Redis,
) -> None:
    """No look: nothing is asked before the creator runs, and the heartbeat's first beat
    is due a third of the lease after the claim, not after the worker started."""
    cache = RedisCacheAdapter(client=client, lock_timeout=3)
    await cache.get_or_create("warm-up", lambda: 1, 60)
    token = _claim("k", age=0.9, lease_ms=3000)  # first renewal due 0.1 s from now
    assert (await cache._read_or_acquire("k", token)).acquired
    await client.pexpire(DEFAULT_KEY_PREFIX + "lock:k", 2100)  # the claim's lease, 0.9 s on
    seen: dict[str, int] = {}

    async def creator() -> str:
        info: dict[str, Any] = await client.info("commandstats")
        seen["scripts_before"] = info.get("cmdstat_evalsha", {}).get("calls", 0)
        await asyncio.sleep(0.5)
        seen["lease_left"] = await client.pttl(DEFAULT_KEY_PREFIX + "lock:k")
        return "made"

    await client.config_resetstat()
    assert await cache.get_or_create("k", creator, 60, lease_token=token) == "made"
    assert seen["scripts_before"] == 0  # no first look
    assert seen["lease_left"] > 2300  # renewed to 3 s at ~0.1 s (else ~1,600 ms left)
    assert await cache.get("k") == "made"


async def test_a_claim_for_another_key_is_looked_at(client: aioredis.Redis) -> None:
    """A worker that computed another key than its producer (a changed task under
    key_version="source") does not create under the producer's claim: its first look
    takes the key's lease, and the value is stored."""
    cache = RedisCacheAdapter(client=client, lock_timeout=5)
    claimed = await cache.lookup("producer-key", claim=True)
    assert claimed.token is not None
    assert claim_age(claimed.token, "worker-key") is None
    assert (
        await cache.get_or_create("worker-key", lambda: "v", 60, lease_token=claimed.token) == "v"
    )
    assert await cache.get("worker-key") == "v"


async def test_a_claim_takes_the_shorter_of_the_two_leases(client: aioredis.Redis) -> None:
    """A producer with a 1 s lease, a worker with 9 s: the worker's first renewal is due
    a third of the claim's 1 s, so a 1.2 s creator keeps the lease and its value is stored."""
    producer = RedisCacheAdapter(client=client, lock_timeout=1)
    worker = RedisCacheAdapter(client=client, lock_timeout=9)
    claimed = await producer.lookup("k", claim=True)
    assert claimed.token is not None

    async def creator() -> str:
        await asyncio.sleep(1.2)
        return "slow"

    assert await worker.get_or_create("k", creator, 60, lease_token=claimed.token) == "slow"
    assert await worker.get("k") == "slow"


async def test_a_stale_entrys_regeneration_claim_serves_the_stale_value_meanwhile(
    client: aioredis.Redis,
) -> None:
    """The claim of a stale entry's one regeneration is not claim-shaped: the worker
    regenerating it takes the first look, so its process's other callers get the stale
    value at once instead of waiting for the new one."""
    cache = RedisCacheAdapter(client=client, lock_timeout=5)
    assert await cache.get_or_create("s", lambda: "old", 1, stale_ttl=60) == "old"
    await asyncio.sleep(1.1)
    found = await cache.lookup("s", claim=True)
    assert (found.state, found.value) == ("stale", "old")
    assert found.token is not None
    assert claim_age(found.token, "s") is None

    async def regenerate() -> str:
        await asyncio.sleep(0.5)
        return "new"

    refresh = asyncio.create_task(
        cache.get_or_create("s", regenerate, 1, stale_ttl=60, lease_token=found.token)
    )
    await asyncio.sleep(0.1)
    # "new" would mean it joined the regeneration and waited for it.
    assert await cache.get_or_create("s", lambda: "other", 1, stale_ttl=60) == "old"
    assert await refresh == "new"


async def test_a_failing_creator_under_a_fresh_claim_fails_its_joiners_and_releases(
    client: aioredis.Redis,
) -> None:
    cache = RedisCacheAdapter(client=client, lock_timeout=5)
    claimed = await cache.lookup("f", claim=True)
    assert claimed.token is not None

    async def failing() -> str:
        await asyncio.sleep(0.2)
        raise ValueError("boom")

    leader = asyncio.create_task(cache.get_or_create("f", failing, 60, lease_token=claimed.token))
    await asyncio.sleep(0.05)
    joiner = asyncio.create_task(cache.get_or_create("f", lambda: "never", 60))
    with pytest.raises(ValueError, match="boom"):
        await leader
    with pytest.raises(ValueError, match="boom"):
        await joiner
    assert await client.exists(DEFAULT_KEY_PREFIX + "lock:f") == 0


def test_claim_age_reads_only_claim_tokens() -> None:
    token = claim_token("k", 5000)
    assert claim_age(token, "k") == (pytest.approx(0, abs=1), 5)
    assert claim_age(token, "other") is None
    others = ("tok", "", "...", "zz.1388.00000000." + "ab" * 10, "1.2.3", " " + token, 42)
    for other in (*others, token.upper(), token + "0"):
        assert claim_age(other, "k") is None


async def test_a_commit_whose_lease_was_removed_stores_nothing(client: aioredis.Redis) -> None:
    """The rule behind invalidation: only the lease's holder may write the entry."""
    cache = RedisCacheAdapter(client=client, lock_timeout=5)
    started = asyncio.Event()

    async def creator() -> str:
        started.set()
        await asyncio.sleep(0.3)
        return "outdated"

    creation = asyncio.create_task(cache.get_or_create("k", creator, 60))
    await started.wait()
    await client.delete(DEFAULT_KEY_PREFIX + "lock:k")  # what an invalidation does
    assert await creation == "outdated"  # the caller still gets its value
    assert await client.exists(DEFAULT_KEY_PREFIX + "v:k") == 0


async def test_lease_key_is_released_after_success_and_failure(client: aioredis.Redis) -> None:
    cache = RedisCacheAdapter(client=client)
    await cache.get_or_create("ok", lambda: 1, 60)

    def failing() -> int:
        raise RuntimeError

    with pytest.raises(RuntimeError):
        await cache.get_or_create("bad", failing, 60)
    assert await client.exists(DEFAULT_KEY_PREFIX + "lock:ok") == 0
    assert await client.exists(DEFAULT_KEY_PREFIX + "lock:bad") == 0
    assert await client.exists(DEFAULT_KEY_PREFIX + "v:bad") == 0
    assert 0 < await client.pttl(DEFAULT_KEY_PREFIX + "v:ok") <= 60_000


async def test_waiters_in_other_adapters_are_woken_by_push(redis_url: str) -> None:
    """Three other "processes" (adapters) wait; they return right after the commit.

    The poll interval is 5 s, so returning within a fraction of it proves the push.
    """
    holder = RedisCacheAdapter(redis_url, lock_timeout=10, poll_interval=5)
    waiters = [RedisCacheAdapter(redis_url, lock_timeout=10, poll_interval=5) for _ in range(3)]
    committed_at = 0.0

    async def creator() -> str:
        nonlocal committed_at
        await asyncio.sleep(0.4)
        committed_at = time.monotonic()
        return "pushed"

    async def wait_on(adapter: RedisCacheAdapter) -> tuple[Any, float]:
        value = await adapter.get_or_create("k", lambda: "not me", 60)
        return value, time.monotonic()

    try:
        leader = asyncio.create_task(holder.get_or_create("k", creator, 60))
        await asyncio.sleep(0.1)
        results = await asyncio.gather(*(wait_on(w) for w in waiters))
        assert await leader == "pushed"
        for value, finished in results:
            assert value == "pushed"
            assert finished - committed_at < 1.0  # the poll would take 5 s
        assert [w.get_stats()["lock_waits"] for w in waiters] == [1, 1, 1]
    finally:
        for adapter in (holder, *waiters):
            await adapter.close()


async def test_cross_process_waiter_times_out(redis_url: str) -> None:
    holder = RedisCacheAdapter(redis_url)
    waiter = RedisCacheAdapter(redis_url, max_wait=0.3)

    async def slow() -> str:
        await asyncio.sleep(0.8)
        return "late"

    try:
        leader = asyncio.create_task(holder.get_or_create("k", slow, 60))
        await asyncio.sleep(0.05)
        with pytest.raises(CacheLockTimeout):
            await waiter.get_or_create("k", slow, 60)
        assert await leader == "late"
        assert await waiter.get_or_create("k", slow, 60) == "late"
    finally:
        await holder.close()
        await waiter.close()


async def test_default_prefix_is_disjoint_from_storage(client: aioredis.Redis) -> None:
    assert not DEFAULT_KEY_PREFIX.startswith(STORAGE_DEFAULT_PREFIX)
    await client.set(STORAGE_DEFAULT_PREFIX + "task:1", b"storage record")
    await client.set("unrelated", b"x")
    cache = RedisCacheAdapter(client=client)
    other = RedisCacheAdapter(client=client, key_prefix="other_app:")
    await cache.set("task:1", "cached")
    await other.set("task:1", "other")
    storage_view = [k async for k in client.scan_iter(match=STORAGE_DEFAULT_PREFIX + "*")]
    assert storage_view == [(STORAGE_DEFAULT_PREFIX + "task:1").encode()]
    assert await cache.clear() == 1
    assert await client.get(STORAGE_DEFAULT_PREFIX + "task:1") == b"storage record"
    assert await client.get("unrelated") == b"x"
    assert await other.get("task:1") == "other"


async def test_clear_escapes_glob_characters_in_the_prefix(client: aioredis.Redis) -> None:
    star = RedisCacheAdapter(client=client, key_prefix="app*:")
    plain = RedisCacheAdapter(client=client, key_prefix="appX:")
    await star.set("k", 1)
    await plain.set("k", 2)
    assert await star.clear() == 1
    assert await plain.get("k") == 2


async def test_constructor_rejects_bad_options(redis_url: str, client: aioredis.Redis) -> None:
    with pytest.raises(CacheValueError):
        RedisCacheAdapter()
    with pytest.raises(CacheValueError):
        RedisCacheAdapter(redis_url, client=client)
    with pytest.raises(CacheValueError):
        RedisCacheAdapter(redis_url, key_prefix="")
    for bad in (0, -1, "10", True):
        with pytest.raises(CacheValueError):
            RedisCacheAdapter(redis_url, lock_timeout=bad)
    with pytest.raises(CacheValueError):
        RedisCacheAdapter(redis_url, default_ttl=0)
    with pytest.raises(CacheValueError):
        RedisCacheAdapter("not a url")
    decoding = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        with pytest.raises(CacheValueError, match="decode_responses"):
            RedisCacheAdapter(client=decoding)
    finally:
        await decoding.aclose()


async def test_a_key_prefix_utf8_cannot_hold_is_refused_up_front(
    redis_url: str, client: aioredis.Redis
) -> None:
    # Every Redis key is the prefix plus a checked key: a lone surrogate in the prefix
    # used to let a bare UnicodeEncodeError out of get, get_or_create and clear.
    for bad in ("p\udc80:", "\ud800"):
        with pytest.raises(CacheValueError, match="key_prefix") as info:
            RedisCacheAdapter(redis_url, key_prefix=bad)
        assert isinstance(info.value.__cause__, UnicodeEncodeError)
        with pytest.raises(CacheValueError, match="key_prefix"):
            RedisCacheAdapter(client=client, key_prefix=bad)
    # Any prefix UTF-8 can hold works end to end.
    cache = RedisCacheAdapter(redis_url, key_prefix="café☕:")
    try:
        await cache.set("k", 1)
        assert await cache.get("k") == 1
        assert await cache.get_or_create("other", lambda: 2) == 2
        assert await client.exists("café☕:v:k".encode())
        await cache.clear()
        assert await cache.get("k") is None
    finally:
        await cache.close()


async def test_repr_hides_the_password() -> None:
    cache = RedisCacheAdapter("redis://user:s3cret@127.0.0.1:1/0")
    assert "s3cret" not in repr(cache)
    assert "127.0.0.1" in repr(cache)
    await cache.close()


# -- a server that is down -------------------------------------------------------------------


async def test_unreachable_server_fails_promptly_or_falls_back() -> None:
    cache = RedisCacheAdapter(f"redis://127.0.0.1:{free_port()}/0", connect_timeout=0.5)
    try:
        started = time.monotonic()
        with pytest.raises(CacheConnectionError):
            await cache.get("k")
        with pytest.raises(CacheConnectionError):
            await cache.set("k", 1)
        with pytest.raises(CacheConnectionError):
            await cache.get_or_create("k", lambda: 1, 60)
        assert time.monotonic() - started < 3

        assert await cache.get_or_create("k", lambda: "uncached", 60, fallback_on_error=True) == (
            "uncached"
        )
        stats = cache.get_stats()
        assert stats["backend_errors"] >= 4
        assert stats["errors"] >= 4
    finally:
        await cache.close()


async def test_killed_and_restarted_server(redis_server: RedisServer) -> None:
    cache = RedisCacheAdapter(redis_server.url, fallback_on_error=True, connect_timeout=0.5)
    try:
        await cache.set("k", "v")
        redis_server.kill()
        started = time.monotonic()
        with pytest.raises(CacheConnectionError):
            await cache.get("k")
        calls = 0

        def creator() -> str:
            nonlocal calls
            calls += 1
            return "computed"

        assert await cache.get_or_create("k", creator, 60) == "computed"
        with pytest.raises(CacheConnectionError):
            await cache.get_or_create("k", creator, 60, fallback_on_error=False)
        assert time.monotonic() - started < 3
        assert calls == 1

        redis_server.start()
        assert await cache.get_or_create("k", creator, 60) == "computed"
        assert calls == 2
        assert await cache.get("k") == "computed"
    finally:
        await cache.close()


async def test_a_hung_server_times_out(redis_server: RedisServer) -> None:
    cache = RedisCacheAdapter(redis_server.url, socket_timeout=0.5, connect_timeout=0.5)
    pid = redis_server._proc.pid  # type: ignore[union-attr]
    try:
        await cache.set("k", "v")
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(CacheConnectionError):
                await cache.get("k")
            assert time.monotonic() - started < 2.5
        finally:
            os.kill(pid, signal.SIGCONT)
    finally:
        await cache.close()


async def test_lease_reports_its_holder_renews_and_lapses(redis_url: str) -> None:
    one = RedisCacheAdapter(redis_url, lock_timeout=1)
    two = RedisCacheAdapter(redis_url, lock_timeout=1)
    try:
        assert (await one._acquire_lease("k", "token-a", ignore=None)).acquired
        held = await two._acquire_lease("k", "token-b", ignore=None)
        assert (held.acquired, held.holder) == (False, "token-a")
        assert await one._renew_lease("k", "token-a") is True
        assert await two._renew_lease("k", "token-b") is False
        await asyncio.sleep(1.1)  # no renewal: the lease lapses
        assert (await two._acquire_lease("k", "token-b", ignore=None)).acquired
        await one._commit("k", "token-a", None, None)  # a late release must not free b's
        assert (await one._acquire_lease("k", "token-c", ignore=None)).holder == "token-b"
    finally:
        await one.close()
        await two.close()


async def test_a_redis_error_reply_is_a_backend_error(client: aioredis.Redis) -> None:
    cache = RedisCacheAdapter(client=client)
    await client.lpush(DEFAULT_KEY_PREFIX + "v:k", b"not a string")  # WRONGTYPE for GET
    with pytest.raises(CacheBackendError, match="WRONGTYPE") as info:
        await cache.get("k")
    assert isinstance(info.value.__cause__, redis.exceptions.ResponseError)
    with pytest.raises(CacheBackendError):
        await cache.get_or_create("k", lambda: 1, 60)
    assert cache.get_stats()["backend_errors"] == 2


async def test_an_outage_logs_once_and_counts_every_uncached_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """fallback_on_error: each call runs its creator; the log gets one line, not fifty."""
    cache = RedisCacheAdapter(
        f"redis://127.0.0.1:{free_port()}", fallback_on_error=True, retries=0, connect_timeout=0.2
    )
    caplog.set_level(logging.WARNING, logger="taskiq_flow.cache")
    try:
        values = [await cache.get_or_create(f"k{i}", lambda i=i: i, 60) for i in range(50)]
    finally:
        await cache.close()
    assert values == list(range(50))
    stats = cache.get_stats()
    assert stats["uncached"] == 50
    lines = [r for r in caplog.records if "uncached" in r.getMessage()]
    assert len(lines) == 1
    assert "cache backend failed" in lines[0].getMessage()


async def test_a_waiter_reports_how_long_it_waited(redis_url: str) -> None:
    """LOCK_WAIT: set in the waiter's own context only; the stats sum every wait."""
    holder = RedisCacheAdapter(redis_url, lock_timeout=5)
    waiter = RedisCacheAdapter(redis_url, lock_timeout=5)

    async def slow() -> str:
        await asyncio.sleep(0.3)
        return "v"

    async def waited_for(adapter: RedisCacheAdapter) -> float:
        await adapter.get_or_create("wait-k", slow, 60)
        return LOCK_WAIT.get(0.0)

    try:
        leader = asyncio.create_task(waited_for(holder))
        await asyncio.sleep(0.05)
        wait = await asyncio.create_task(waited_for(waiter))
        assert await leader == 0.0  # the creator did not wait
        assert 0.15 < wait < 1.0
        assert waiter.get_stats()["lock_wait_seconds"] == pytest.approx(wait)
        assert LOCK_WAIT.get(0.0) == 0.0  # each task waited in its own context
    finally:
        await holder.close()
        await waiter.close()


async def test_a_refresh_never_joins_a_concurrent_read(client: aioredis.Redis) -> None:
    """A read in flight is a flight too; a refresh waits it out and creates anew."""
    cache = RedisCacheAdapter(client=client, lock_timeout=5)
    await cache.set("k", "old")
    reading = asyncio.create_task(cache.get_or_create("k", lambda: "unused", 60))
    refreshed = await cache.refresh("k", lambda: "new", 60)
    assert await reading == "old"
    assert refreshed == "new"
    assert await cache.get("k") == "new"


async def test_a_caller_cancelled_during_its_first_look_gives_the_lease_back(
    client: aioredis.Redis,
) -> None:
    cache = RedisCacheAdapter(client=client, lock_timeout=30)
    call = asyncio.create_task(cache.get_or_create("k", lambda: "v", 60))
    await asyncio.sleep(0)  # the first look is sent (no other command: it goes at once)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    for _ in range(100):  # the release runs in a task of its own
        if not await client.exists(DEFAULT_KEY_PREFIX + "lock:k"):
            break
        await asyncio.sleep(0.01)
    assert await client.exists(DEFAULT_KEY_PREFIX + "lock:k") == 0
    # Nobody waits out a 30 s lease.
    assert await asyncio.wait_for(cache.get_or_create("k", lambda: "v2", 60), 2) == "v2"


async def test_a_failed_commit_gives_joiners_the_value_not_a_second_run(redis_url: str) -> None:
    """The caller learns the write failed; the callers who joined its run get its value."""

    class CommitFailsOnce(RedisCacheAdapter):
        failed = False

        async def _commit(
            self, key: str, token: str, payload: bytes | None, ttl_ms: int | None
        ) -> None:
            if payload is not None and not self.failed:
                self.failed = True
                raise CacheConnectionError("lock release", "injected: the write was lost")
            await super()._commit(key, token, payload, ttl_ms)

    cache = CommitFailsOnce(redis_url, lock_timeout=5)
    runs = 0

    async def creator() -> str:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.1)
        return "made"

    try:
        results = await asyncio.gather(
            *(cache.get_or_create("k", creator, 60, fallback_on_error=False) for _ in range(5)),
            return_exceptions=True,
        )
    finally:
        await cache.close()
    assert runs == 1
    assert isinstance(results[0], CacheConnectionError)
    assert results[1:] == ["made"] * 4
