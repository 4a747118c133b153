"""Redis dies with a coalesced batch in flight (storage adapter, real server, no mocks).

The storage adapter's connection coalesces the commands concurrent callers issue in one
event-loop turn into one pipeline. When the server dies under such a pipeline:

- every caller of the batch gets **its own** ``StorageConnectionError`` (raised from the
  driver's error), promptly; none hangs, none gets another caller's exception object;
- nothing is reported written that was not: the server runs with ``appendfsync always``
  and is restarted from its AOF, and every ``set`` that returned is there with its value.

Two runs: a batch held in flight on purpose (``CLIENT PAUSE``, then SIGKILL), and a
stream of coalesced writes killed at a random moment.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from taskiq_flow.storage import StorageConnectionError
from taskiq_flow.storage.redis import RedisStorageAdapter
from taskiq_flow_testing import RedisServer

AOF = ["--appendonly", "yes", "--appendfsync", "always"]
PROMPT = 5.0  # seconds within which every caller must have its answer

pytestmark = [pytest.mark.redis]


def _adapter(server: RedisServer) -> RedisStorageAdapter:
    return RedisStorageAdapter(
        server.url, key_prefix="co:", connect_timeout=1, socket_timeout=3, retries=2
    )


def _batches(storage: RedisStorageAdapter) -> tuple[int, int]:
    coalescer = storage.connection.coalescer
    return coalescer.batches, coalescer.batched_commands


async def _stored(server: RedisServer) -> dict[str, Any]:
    """What the restarted server holds, read by a fresh adapter."""
    check = _adapter(server)
    try:
        keys = await check.keys("*")
        return await check.get_many(keys)
    finally:
        await check.close()


def _assert_own_connection_errors(outcomes: list[Any]) -> None:
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert errors
    for error in errors:
        assert isinstance(error, StorageConnectionError), repr(error)
        assert isinstance(error.__cause__, RedisConnectionError | OSError), repr(error.__cause__)
    # One exception object per caller, and one driver exception object per caller too.
    assert len({id(e) for e in errors}) == len(errors)
    assert len({id(e.__cause__) for e in errors}) == len(errors)


async def test_a_batch_in_flight_when_redis_dies_fails_each_caller_alone() -> None:
    with RedisServer(extra_args=AOF) as server:
        storage = _adapter(server)
        admin = aioredis.Redis.from_url(server.url)
        try:
            await asyncio.gather(*(storage.set(f"before{i}", i) for i in range(20)))
            # The first finds the wire quiet and goes at once; the other 19 batch up.
            assert _batches(storage) == (1, 19)

            # The server stops answering, the batch goes out and waits for its replies.
            await admin.execute_command("CLIENT", "PAUSE", "10000", "ALL")
            calls = [storage.set(f"lost{i}", i) for i in range(30)]
            calls += [storage.get(f"before{i}") for i in range(10)]
            calls += [storage.exists("before0"), storage.delete("before1")]
            pending = asyncio.ensure_future(asyncio.gather(*calls, return_exceptions=True))
            deadline = time.monotonic() + PROMPT
            while _batches(storage)[0] < 2:
                assert time.monotonic() < deadline, "the batch was never sent"
                await asyncio.sleep(0.01)
            # Again the first call goes alone (it too waits on the paused server).
            assert _batches(storage) == (2, 19 + len(calls) - 1)
            await asyncio.sleep(0.2)  # on the wire, unanswered
            assert not pending.done()

            server.kill()
            started = time.monotonic()
            outcomes = await asyncio.wait_for(pending, PROMPT)
            assert time.monotonic() - started < PROMPT
            assert len(outcomes) == len(calls)
            assert all(isinstance(o, StorageConnectionError) for o in outcomes), outcomes
            _assert_own_connection_errors(outcomes)

            server.start()  # from the AOF: what was acknowledged, nothing of the batch
            stored = await _stored(server)
            assert stored == {f"before{i}": i for i in range(20)}
        finally:
            await admin.aclose()
            await storage.close()


async def test_writes_killed_mid_stream_report_only_what_was_written() -> None:
    with RedisServer(extra_args=AOF) as server:
        storage = _adapter(server)
        acknowledged: dict[str, int] = {}
        failed: list[Any] = []

        async def writer(w: int) -> None:
            # Ten writes per turn, turn after turn, until the server is gone.
            for turn in range(10_000):
                keys = [f"w{w}:{turn}:{i}" for i in range(10)]
                outcomes = await asyncio.gather(
                    *(storage.set(key, turn) for key in keys), return_exceptions=True
                )
                for key, outcome in zip(keys, outcomes, strict=True):
                    if isinstance(outcome, BaseException):
                        failed.append(outcome)
                    else:
                        acknowledged[key] = turn
                if any(isinstance(o, BaseException) for o in outcomes):
                    return

        try:
            writers = asyncio.gather(*(writer(w) for w in range(8)))
            await asyncio.sleep(0.5)
            server.kill()
            await asyncio.wait_for(writers, PROMPT + 5)
            assert acknowledged
            _assert_own_connection_errors(failed)
            assert _batches(storage)[0] > 0

            server.start()
            stored = await _stored(server)
            missing = {k: v for k, v in acknowledged.items() if stored.get(k) != v}
            assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {list(missing)[:5]}"
        finally:
            await storage.close()
