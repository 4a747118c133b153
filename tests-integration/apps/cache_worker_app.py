"""Worker app for the two-worker integration suite (imported by `taskiq worker`).

Everything goes through Redis: the broker, the result backend, the cache and the store.
The server is the test's private one, given by TASKIQ_FLOW_IT_REDIS_URL; the cache
and the storage may point at separate servers (TASKIQ_FLOW_IT_STORAGE_URL).
"""

from __future__ import annotations

import asyncio
import os

import redis.asyncio as aioredis
from taskiq import TaskiqEvents
from taskiq_redis import RedisAsyncResultBackend

from taskiq_flow.cache import RedisCacheAdapter
from taskiq_flow.middlewares import CacheMiddleware, StorageMiddleware
from taskiq_flow.storage import RedisStorageAdapter
from taskiq_flow_testing import list_queue_broker

REDIS_URL = os.environ["TASKIQ_FLOW_IT_REDIS_URL"]
STORAGE_URL = os.environ.get("TASKIQ_FLOW_IT_STORAGE_URL", REDIS_URL)
QUEUE = os.environ.get("TASKIQ_FLOW_IT_QUEUE", "taskiq_flow_it")

broker = list_queue_broker(REDIS_URL, QUEUE).with_result_backend(
    RedisAsyncResultBackend(REDIS_URL, result_ex_time=600),
)
broker.add_middlewares(
    CacheMiddleware(cache=RedisCacheAdapter(redis_url=REDIS_URL, lock_timeout=5), default_ttl=600),
    StorageMiddleware(
        storage=RedisStorageAdapter(redis_url=STORAGE_URL),
        retry_interval=0.1,
        max_retry_interval=0.5,
    ),
)

_counter = aioredis.from_url(REDIS_URL)

WORKERS_UP = f"it:workers_up:{QUEUE}"
"""INCRed by each worker once started: the tests kick only after every worker is up."""


@broker.on_event(TaskiqEvents.WORKER_STARTUP)
async def _announce(_state: object) -> None:
    await _counter.incr(WORKERS_UP)


@broker.task
async def slow_square(x: int) -> int:
    """Count each real execution in Redis, then take a while."""
    await _counter.incr(f"it:runs:slow_square:{x}")
    await asyncio.sleep(0.5)
    return x * x


@broker.task
async def quick(x: int) -> int:
    """Count executions; return at once."""
    await _counter.incr("it:runs:quick")
    return x + 1
