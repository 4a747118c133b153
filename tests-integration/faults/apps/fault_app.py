"""Worker app of the fault and soak runs: both middlewares over one Redis server.

``taskiq worker fault_app:create_broker`` calls :func:`create_broker`, configured by the
environment (the test process calls :func:`build` itself to be the producer):

- ``FAULT_REDIS_URL``: broker, result backend, cache and (by default) storage;
- ``FAULT_STORAGE_URL``: the storage server, when it is another one (or none yet);
- ``FAULT_QUEUE``: the list the workers pop;
- ``FAULT_LOCK_TIMEOUT``: the cache lease in seconds;
- ``FAULT_ERROR_LOG_INTERVAL``: StorageMiddleware's ``error_log_interval``;
- ``FAULT_STORE_CACHE_HITS``: ``1`` = a record for cache hits too (one per task);
- ``FAULT_TASK_SLEEP``: seconds each ``compute`` call takes;
- ``FAULT_BROKER``: ``resilient`` (default) or ``stock`` (taskiq-redis's ListQueueBroker);
- ``FAULT_SPOOL_DIR``: StorageMiddleware's spool directory (unset: no spool, as for the
  producer side the test process builds).

The result backend retries saving a result for up to 20 s while Redis is away
(:class:`PatientResultBackend`).

Each worker process adds its pid to the set ``fault:worker-pids:{queue}`` when it starts,
so a test can tell whether taskiq had to restart a worker process.

Why a resilient broker: taskiq-redis 1.2.4's ``ListQueueBroker.listen`` catches the
builtin ``ConnectionError``, which redis-py's ``redis.exceptions.ConnectionError`` is
not, so a Redis restart kills the worker process (taskiq then starts a new one, and
whatever that process held in memory — running tasks, StorageMiddleware's retry buffer —
is gone). ``ResilientListQueueBroker`` retries the pop instead; see docs/reliability.md.

Tasks:

- ``compute(x, salt)`` returns ``{"x": x, "sq": x * x, "salt": salt}``;
- ``compute_at(x, salt)`` the same plus ``"at"``: the wall-clock time the execution ended;
- ``hold(tag)`` counts its executions under ``fault:hold:runs:{tag}``; the first one
  announces itself (``fault:hold:holder:{tag}`` = its pid) and then sleeps for a minute
  while holding the cache lease, the later ones return at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from taskiq import AsyncBroker, AsyncTaskiqDecoratedTask, TaskiqEvents
from taskiq.serializers import JSONSerializer
from taskiq_redis import ListQueueBroker, RedisAsyncResultBackend

from taskiq_flow.cache import RedisCacheAdapter
from taskiq_flow.middlewares import CacheMiddleware, StorageMiddleware
from taskiq_flow.storage import RedisStorageAdapter

WORKER_PIDS = "fault:worker-pids:{queue}"
HOLD_RUNS = "fault:hold:runs:{tag}"

logger = logging.getLogger("fault_app")


class PatientResultBackend(RedisAsyncResultBackend[Any]):
    """Keeps trying to save a result for a while when Redis is away (restarting).

    A result saved after the restart is acknowledged to its caller, so the tasks that
    finished during an outage test what matters: their records went to
    StorageMiddleware's retry buffer, and must still arrive.
    """

    async def set_result(self, task_id: str, result: Any) -> None:
        """Save the result, retrying connection errors for up to 20 seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while True:
            try:
                await super().set_result(task_id, result)
                return
            except (RedisConnectionError, RedisTimeoutError, OSError):
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.1)


class ResilientListQueueBroker(ListQueueBroker):
    """A ListQueueBroker whose listener outlives a Redis restart."""

    async def listen(self) -> AsyncGenerator[bytes, None]:
        """Pop messages; on a connection error, wait a little and pop again."""
        while True:
            try:
                async with aioredis.Redis(connection_pool=self.connection_pool) as conn:
                    while True:
                        # A bounded BRPOP: redis-py 8's default socket timeout (5 s)
                        # would otherwise end an idle, unbounded one with an error.
                        popped = await conn.brpop([self.queue_name], timeout=1)
                        if popped is not None:
                            yield popped[1]
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                logger.warning("broker connection lost (%s); retrying", exc)
                await asyncio.sleep(0.1)


HOLD_HOLDER = "fault:hold:holder:{tag}"


@dataclass
class App:
    """One side (worker or producer) of the fault app."""

    broker: AsyncBroker
    cache_mw: CacheMiddleware
    storage_mw: StorageMiddleware
    storage: RedisStorageAdapter
    client: aioredis.Redis
    tasks: dict[str, AsyncTaskiqDecoratedTask[Any, Any]] = field(default_factory=dict)

    async def close(self) -> None:
        """Shut the broker down and close every client this app opened."""
        await self.broker.shutdown()
        await self.storage.close()
        await self.client.aclose()


def build(settings: dict[str, str]) -> App:
    """The broker with both middlewares and the two tasks, configured by ``settings``."""
    redis_url = settings["FAULT_REDIS_URL"]
    storage_url = settings.get("FAULT_STORAGE_URL") or redis_url
    queue = settings.get("FAULT_QUEUE", "fault")
    lock_timeout = float(settings.get("FAULT_LOCK_TIMEOUT", "5"))
    task_sleep = float(settings.get("FAULT_TASK_SLEEP", "0"))
    broker_class = (
        ListQueueBroker if settings.get("FAULT_BROKER") == "stock" else ResilientListQueueBroker
    )
    broker = broker_class(redis_url, queue_name=queue).with_result_backend(
        # JSON, not taskiq-redis's default pickle: no pickle anywhere on our side.
        PatientResultBackend(redis_url, result_ex_time=3600, serializer=JSONSerializer()),
    )
    storage = RedisStorageAdapter(redis_url=storage_url)
    cache_mw = CacheMiddleware(
        cache=RedisCacheAdapter(redis_url=redis_url, lock_timeout=lock_timeout, max_wait=120),
        default_ttl=3600,
    )
    storage_mw = StorageMiddleware(
        storage=storage,
        store_cache_hits=settings.get("FAULT_STORE_CACHE_HITS") == "1",
        retry_interval=0.1,
        max_retry_interval=0.5,
        error_log_interval=float(settings.get("FAULT_ERROR_LOG_INTERVAL", "60")),
        spool=bool(settings.get("FAULT_SPOOL_DIR")),
        spool_dir=settings.get("FAULT_SPOOL_DIR") or None,
    )
    broker.add_middlewares(cache_mw, storage_mw)
    client = aioredis.from_url(redis_url)

    @broker.task(task_name="fault.compute")
    async def compute(x: int, salt: str) -> dict[str, Any]:
        if task_sleep:
            await asyncio.sleep(task_sleep)
        return {"x": x, "sq": x * x, "salt": salt}

    @broker.task(task_name="fault.compute_at")
    async def compute_at(x: int, salt: str) -> dict[str, Any]:
        # "at": when the execution ended; its record is built after that instant.
        if task_sleep:
            await asyncio.sleep(task_sleep)
        return {"x": x, "sq": x * x, "salt": salt, "at": time.time()}

    @broker.task(task_name="fault.hold")
    async def hold(tag: str) -> str:
        runs = await client.incr(HOLD_RUNS.format(tag=tag))
        if runs == 1:
            await client.set(HOLD_HOLDER.format(tag=tag), os.getpid())
            await asyncio.sleep(60)
        return f"done:{tag}"

    async def announce(_state: object) -> None:
        await client.sadd(WORKER_PIDS.format(queue=queue), os.getpid())

    async def close_client(_state: object) -> None:
        # Not the storage: StorageMiddleware flushes its buffer after these handlers.
        await client.aclose()

    broker.add_event_handler(TaskiqEvents.WORKER_STARTUP, announce)
    broker.add_event_handler(TaskiqEvents.WORKER_SHUTDOWN, close_client)
    return App(
        broker=broker,
        cache_mw=cache_mw,
        storage_mw=storage_mw,
        storage=storage,
        client=client,
        tasks={"compute": compute, "compute_at": compute_at, "hold": hold},
    )


def create_broker() -> AsyncBroker:
    """Factory for ``taskiq worker``: the app configured from the environment."""
    return build(dict(os.environ)).broker
