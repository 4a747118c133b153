"""Coalescing (kit.coalesce, kit.redis): one pipeline per event-loop turn, one reply per caller."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import redis.asyncio as aioredis

from taskiq_flow.storage import StorageConnectionError, StorageError
from taskiq_flow.storage.kit.coalesce import Coalescer, Command
from taskiq_flow.storage.kit.redis import coalescable
from taskiq_flow.storage.redis import RedisStorageAdapter

# -- the Coalescer alone (no Redis) ----------------------------------------------------------


class _Wire:
    """Records what was sent; replies ``args[1] * 2``, or a refusal for ``"bad"``."""

    def __init__(self, fail_batch: BaseException | None = None) -> None:
        self.sent: list[list[Any]] = []
        self.fail_batch = fail_batch

    async def one(self, args: tuple[Any, ...], options: dict[str, Any]) -> Any:
        self.sent.append([args[1]])
        await asyncio.sleep(0)
        return args[1] * 2

    async def batch(self, commands: Sequence[Command]) -> list[Any]:
        self.sent.append([args[1] for args, _ in commands])
        await asyncio.sleep(0)
        if self.fail_batch is not None:
            raise self.fail_batch
        return [ValueError(args[1]) if args[1] == "bad" else args[1] * 2 for args, _ in commands]


async def test_a_lone_caller_is_sent_alone() -> None:
    wire = _Wire()
    coalescer = Coalescer(wire.one, wire.batch)
    assert await coalescer.call(("GET", 1), {}) == 2
    assert await coalescer.call(("GET", 2), {}) == 4
    assert wire.sent == [[1], [2]]
    assert coalescer.batches == 0


async def test_one_turn_is_one_batch_each_caller_its_own_reply() -> None:
    """The first command finds nothing in flight and goes at once; the rest gather."""
    wire = _Wire()
    coalescer = Coalescer(wire.one, wire.batch)
    replies = await asyncio.gather(*(coalescer.call(("GET", i), {}) for i in range(10)))
    assert replies == [2 * i for i in range(10)]
    assert wire.sent == [[0], list(range(1, 10))]
    assert (coalescer.batches, coalescer.batched_commands) == (1, 9)


async def test_a_caller_after_the_wire_went_quiet_is_sent_at_once() -> None:
    """Nothing in flight: no loop turn is spent gathering (the lone caller's cost)."""
    wire = _Wire()
    coalescer = Coalescer(wire.one, wire.batch)
    await asyncio.gather(*(coalescer.call(("GET", i), {}) for i in range(3)))
    assert coalescer._in_flight == 0
    loop = asyncio.get_running_loop()
    turns = 0

    def count() -> None:
        nonlocal turns
        turns += 1

    handle = loop.call_soon(count)
    await coalescer.call(("GET", 7), {})
    handle.cancel()
    # _Wire.one itself yields once; a gathering leader would have yielded once more.
    assert turns <= 1
    assert wire.sent[-1] == [7]


async def test_a_refused_command_fails_only_its_caller() -> None:
    wire = _Wire()
    coalescer = Coalescer(wire.one, wire.batch)
    replies = await asyncio.gather(
        *(coalescer.call(("GET", x), {}) for x in ("a", "bad", "c")), return_exceptions=True
    )
    assert replies[0] == "aa"
    assert replies[2] == "cc"
    assert isinstance(replies[1], ValueError)


async def test_a_failed_batch_fails_every_caller_with_its_own_error() -> None:
    wire = _Wire(fail_batch=ConnectionError("gone"))
    coalescer = Coalescer(wire.one, wire.batch)
    replies = await asyncio.gather(
        *(coalescer.call(("GET", i), {}) for i in range(4)), return_exceptions=True
    )
    assert replies[0] == 0  # went alone, before the others gathered
    failed = replies[1:]
    assert all(isinstance(r, ConnectionError) and str(r) == "gone" for r in failed)
    assert len({id(r) for r in failed}) == 3


async def test_a_batch_answered_short_fails_its_callers_instead_of_hanging() -> None:
    # A send_batch that returns fewer replies than commands (a broken transport) must
    # not leave a caller awaiting forever.
    wire = _Wire()

    async def short(commands: Sequence[Command]) -> list[Any]:
        return (await wire.batch(commands))[:-1]

    coalescer = Coalescer(wire.one, short)
    async with asyncio.timeout(5):
        replies = await asyncio.gather(
            *(coalescer.call(("GET", i), {}) for i in range(4)), return_exceptions=True
        )
    assert replies[0] == 0
    assert all(isinstance(r, RuntimeError) and "3 commands got 2" in str(r) for r in replies[1:])


async def test_max_batch_starts_a_new_batch() -> None:
    wire = _Wire()
    coalescer = Coalescer(wire.one, wire.batch, max_batch=4)
    replies = await asyncio.gather(*(coalescer.call(("GET", i), {}) for i in range(10)))
    assert replies == [2 * i for i in range(10)]
    # The first alone, then batches of at most four: 4, 4 and the last one left (alone).
    assert sorted(len(sent) for sent in wire.sent) == [1, 1, 4, 4]


async def test_a_leader_cancelled_while_gathering_is_not_sent_the_others_are() -> None:
    wire = _Wire()
    coalescer = Coalescer(wire.one, wire.batch)
    tasks = [asyncio.ensure_future(coalescer.call(("GET", i), {})) for i in range(4)]
    await asyncio.sleep(0)  # every task has issued its command; the leader is yielding
    tasks[1].cancel()  # tasks[0] went alone; tasks[1] leads the batch
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[1], asyncio.CancelledError)
    assert [done[0], *done[2:]] == [0, 4, 6]
    assert wire.sent == [[0], [2, 3]]


async def test_a_cancelled_follower_does_not_disturb_the_batch() -> None:
    wire = _Wire()
    coalescer = Coalescer(wire.one, wire.batch)
    tasks = [asyncio.ensure_future(coalescer.call(("GET", i), {})) for i in range(4)]
    await asyncio.sleep(0)
    tasks[2].cancel()  # a follower of the batch tasks[1] leads
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert done[:2] == [0, 2]
    assert done[3] == 6
    assert isinstance(done[2], asyncio.CancelledError)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("GET", "k"), True),
        (("SET", "k", b"v"), True),
        (("SET", "k", b"v", "PX", 1000), True),
        (("SET", "k", b"v", "PX", 1000, "NX"), False),
        (("SET", "k", b"v", "XX"), False),
        (("SET", "k", b"v", "GET"), False),
        (("SET", "k", "NX"), True),  # the value "NX", not the option
        (("DEL", "k"), True),
        (("EXISTS", "k"), True),
        (("GETRANGE", "k", 0, 16), True),
        (("MGET", "a", "b"), False),
        (("EVALSHA", "abc", 1, "k"), False),
        (("INCR", "k"), False),
        (("RPUSH", "k", "v"), False),
        (("BLMOVE", "a", "a", 1, "LEFT", "RIGHT"), False),
    ],
)
def test_only_repeatable_commands_are_coalesced(args: tuple[Any, ...], expected: bool) -> None:
    assert coalescable(args) is expected


# -- over a real Redis ---------------------------------------------------------------------

redis_test = pytest.mark.redis


@pytest.fixture
async def storage(redis_url: str) -> AsyncIterator[RedisStorageAdapter]:
    adapter = RedisStorageAdapter(redis_url, key_prefix="co:")
    yield adapter
    await adapter.close()


def _counts(storage: RedisStorageAdapter) -> tuple[int, int]:
    coalescer = storage.connection.coalescer
    return coalescer.batches, coalescer.batched_commands


@redis_test
async def test_concurrent_writes_and_reads_go_as_one_pipeline(
    storage: RedisStorageAdapter, redis_url: str
) -> None:
    raw = aioredis.Redis.from_url(redis_url)
    try:
        await raw.config_resetstat()
        await asyncio.gather(*(storage.set(f"k{i}", {"i": i}, 60) for i in range(50)))
        assert _counts(storage) == (1, 49)  # the first went alone, on a quiet wire
        got = await asyncio.gather(*(storage.get(f"k{i}") for i in range(50)))
        assert got == [{"i": i} for i in range(50)]
        alive = await asyncio.gather(storage.exists("k1"), storage.exists("nope"))
        assert alive == [True, False]
        gone = await asyncio.gather(storage.delete("k1"), storage.delete("nope"))
        assert gone == [True, False]
        # Pairs: the first goes alone, the second alone too (a batch of one).
        assert _counts(storage) == (2, 98)
        stats = await raw.info("commandstats")
        assert stats["cmdstat_set"]["calls"] == 50
        assert 0 < await raw.pttl("co:k0") <= 60_000
    finally:
        await raw.aclose()


@redis_test
async def test_a_lone_caller_sends_no_pipeline(storage: RedisStorageAdapter) -> None:
    for i in range(5):
        await storage.set(f"k{i}", i)
        assert await storage.get(f"k{i}") == i
    assert _counts(storage) == (0, 0)


@redis_test
async def test_claims_are_never_coalesced(storage: RedisStorageAdapter) -> None:
    won = await asyncio.gather(*(storage.add("claim", i) for i in range(20)))
    assert won.count(True) == 1
    assert _counts(storage) == (0, 0)


@redis_test
async def test_a_command_redis_refuses_fails_only_its_caller(
    storage: RedisStorageAdapter, redis_url: str
) -> None:
    raw = aioredis.Redis.from_url(redis_url)
    try:
        await raw.rpush("co:list", "x")  # GET on a list: WRONGTYPE for that caller only
    finally:
        await raw.aclose()
    await storage.set("a", 1)
    await storage.set("b", 2)
    replies = await asyncio.gather(
        storage.get("a"), storage.get("list"), storage.get("b"), return_exceptions=True
    )
    assert replies[0] == 1
    assert replies[2] == 2
    assert isinstance(replies[1], StorageError)
    assert not isinstance(replies[1], StorageConnectionError)
    assert "WRONGTYPE" in str(replies[1])
    assert _counts(storage) == (1, 2)


@redis_test
async def test_coalescing_can_be_turned_off(redis_url: str) -> None:
    adapter = RedisStorageAdapter(redis_url, key_prefix="co:", coalesce=False)
    try:
        assert adapter.connection.coalesce is False
        await asyncio.gather(*(adapter.set(f"k{i}", i) for i in range(10)))
        assert await adapter.get_many([f"k{i}" for i in range(10)]) == {
            f"k{i}": i for i in range(10)
        }
        assert _counts(adapter) == (0, 0)
        adapter.connection.coalesce = True
        await asyncio.gather(*(adapter.get(f"k{i}") for i in range(10)))
        assert _counts(adapter) == (1, 9)
    finally:
        await adapter.close()


@redis_test
async def test_the_concurrency_limit_holds_for_batches(redis_url: str) -> None:
    adapter = RedisStorageAdapter(redis_url, key_prefix="co:", max_connections=1)
    try:
        # 300 callers over three turns: one slot is enough, nothing overflows the pool.
        for turn in range(3):
            await asyncio.gather(*(adapter.set(f"t{turn}:{i}", i) for i in range(100)))
        assert len(await adapter.keys("t*")) == 300
    finally:
        await adapter.close()
