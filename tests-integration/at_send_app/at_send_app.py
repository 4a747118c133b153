"""Worker and producer app of the answer-at-send suite (issue 13), over one private Redis.

``taskiq worker at_send_app:broker`` runs it; the test process and the producer
processes (``at_send_producer.py``) import it too. Everything goes through Redis: a
taskiq-redis ``ListQueueBroker`` (one LPUSH per message sent, counted with
``INFO commandstats``), taskiq-redis's result backend, the cache (lease ``ASA_LEASE``
seconds) and the storage. Each real execution is counted with INCR.
"""

from __future__ import annotations

import asyncio
import os

import redis.asyncio as aioredis
from taskiq_redis import RedisAsyncResultBackend

from taskiq_flow.cache import RedisCacheAdapter
from taskiq_flow.middlewares import (
    CacheMiddleware,
    DataflowPipeline,
    PipelineMiddleware,
    StorageMiddleware,
    pipeline_task,
)
from taskiq_flow.storage import RedisStorageAdapter
from taskiq_flow_testing import list_queue_broker

REDIS_URL = os.environ["ASA_REDIS_URL"]
QUEUE = os.environ.get("ASA_QUEUE", "asa")
LEASE = float(os.environ.get("ASA_LEASE", "5"))

broker = list_queue_broker(REDIS_URL, QUEUE).with_result_backend(
    RedisAsyncResultBackend(REDIS_URL, result_ex_time=600),
)
storage = RedisStorageAdapter(redis_url=REDIS_URL)
broker.add_middlewares(
    CacheMiddleware(
        cache=RedisCacheAdapter(redis_url=REDIS_URL, lock_timeout=LEASE), default_ttl=600
    ),
    StorageMiddleware(storage=storage),
    PipelineMiddleware(),
)

_counter = aioredis.from_url(REDIS_URL)


@broker.task(task_name="asa.square")
async def square(x: int) -> int:
    """Count each real execution, take a little while."""
    await _counter.incr(f"asa:runs:square:{x}")
    await asyncio.sleep(0.3)
    return x * x


@broker.task(task_name="asa.hold")
async def hold(tag: str) -> str:
    """Count, publish the pid of the process running it, then take long enough to be killed."""
    runs = await _counter.incr(f"asa:runs:hold:{tag}")
    await _counter.set(f"asa:holder:{tag}", os.getpid())
    # The first run is the one to kill: long. A run after it is short.
    await asyncio.sleep(float(os.environ.get("ASA_HOLD_SECONDS", "3")) * (5 if runs == 1 else 1))
    return f"held:{tag}"


@broker.task(task_name="asa.d.source")
@pipeline_task(output="raw")
async def source(n: int) -> int:
    await _counter.incr("asa:runs:diamond")
    return n


@broker.task(task_name="asa.d.left")
@pipeline_task(output="left_v")
async def left(raw: int) -> int:
    await _counter.incr("asa:runs:diamond")
    return raw + 1


@broker.task(task_name="asa.d.right")
@pipeline_task(output="right_v")
async def right(raw: int) -> int:
    await _counter.incr("asa:runs:diamond")
    return raw * 2


@broker.task(task_name="asa.d.merge")
@pipeline_task(output="merged")
async def merge(left_v: int, right_v: int) -> int:
    await _counter.incr("asa:runs:diamond")
    return left_v + right_v


diamond = DataflowPipeline.from_tasks(broker, [source, left, right, merge])
