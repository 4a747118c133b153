"""Worker app of the two-worker pipeline suite: a diamond over a Redis broker.

``taskiq worker diamond_app:create_broker`` calls ``create_broker()``, which reads
``TASKIQ_FLOW_IT_REDIS_URL`` (the test's private server), ``TASKIQ_FLOW_IT_QUEUE`` and
``TASKIQ_FLOW_IT_READINESS_DELAY`` (seconds to sleep between writing a step's output
and reading readiness; when set, ``left`` and ``right`` of a run also wait there for each
other, through Redis, so both have written before either reads: every run races for
``merge``). The test process calls ``build()`` itself to be the producer. Nothing
happens at import time.

    source(n) -> raw ; left(raw) -> left_v ; right(raw) -> right_v
    merge(left_v, right_v) -> merged     (counts its executions with Redis INCR)
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.typing import EncodableT, FieldT
from taskiq import AsyncBroker, Context, TaskiqDepends, TaskiqEvents, TaskiqMessage, TaskiqResult
from taskiq_redis import ListQueueBroker, RedisAsyncResultBackend

from taskiq_flow.middlewares import (
    DataflowPipeline,
    PipelineMiddleware,
    StorageMiddleware,
    pipeline_task,
)
from taskiq_flow.storage import RedisStorageAdapter

MERGE_COUNT = "it:pipeline:merge:{pipeline_id}"
STATS = "it:pipeline:stats:{pid}"
ARRIVED = "it:pipeline:arrived:{pipeline_id}"


class RacePipelineMiddleware(PipelineMiddleware):
    """PipelineMiddleware that can widen the claim race and publishes its counters."""

    def __init__(self, client: aioredis.Redis, delay: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.client = client
        self.delay = delay

    async def before_readiness_check(self, pipeline_id: str, node: str) -> None:
        if not self.delay:
            return
        await asyncio.sleep(self.delay)
        if node in {"left", "right"}:
            key = ARRIVED.format(pipeline_id=pipeline_id)
            await self.client.incr(key)
            deadline = asyncio.get_running_loop().time() + 5
            while int(await self.client.get(key) or 0) < 2:
                if asyncio.get_running_loop().time() > deadline:
                    return  # the sibling is late: go on, the race is just less likely
                await asyncio.sleep(0.005)

    async def post_save(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> None:
        await super().post_save(message, result)
        # After every step, this process's totals (claims lost = races settled by add).
        stats: dict[FieldT, EncodableT] = dict(self.get_stats().items())
        await self.client.hset(STATS.format(pid=os.getpid()), mapping=stats)


@dataclass
class App:
    broker: AsyncBroker
    pipeline: DataflowPipeline
    storage: RedisStorageAdapter
    client: aioredis.Redis

    async def close(self) -> None:
        await self.broker.shutdown()
        await self.storage.close()
        await self.client.aclose()
        await self.client.connection_pool.disconnect()


def build(redis_url: str, queue: str, delay: float = 0.0) -> App:
    """The broker (worker or producer side), its middlewares and the diamond pipeline."""
    broker = ListQueueBroker(redis_url, queue_name=queue).with_result_backend(
        RedisAsyncResultBackend(redis_url, result_ex_time=600),
    )
    # A blocking pool: up to 100 concurrent tasks per worker wait for a connection
    # instead of failing (redis-py's default pool raises past 100 connections).
    pool = aioredis.BlockingConnectionPool.from_url(redis_url, max_connections=48, timeout=20)
    client = aioredis.Redis(connection_pool=pool)
    storage = RedisStorageAdapter(client=client)
    broker.add_middlewares(
        StorageMiddleware(storage=storage),
        RacePipelineMiddleware(client, delay),
    )

    @broker.task(task_name="it.diamond.source")
    @pipeline_task(output="raw")
    async def source(n: int) -> int:
        return n

    @broker.task(task_name="it.diamond.left")
    @pipeline_task(output="left_v")
    async def left(raw: int) -> int:
        return raw + 1

    @broker.task(task_name="it.diamond.right")
    @pipeline_task(output="right_v")
    async def right(raw: int) -> int:
        return raw * 2

    @broker.task(task_name="it.diamond.merge")
    @pipeline_task(output="merged")
    async def merge(left_v: int, right_v: int, context: Context = TaskiqDepends()) -> int:
        pipeline_id = context.message.labels["pipeline_id"]
        await client.incr(MERGE_COUNT.format(pipeline_id=pipeline_id))
        return left_v + right_v

    async def close_storage(_state: object) -> None:
        await storage.close()
        await client.aclose()

    broker.add_event_handler(TaskiqEvents.WORKER_SHUTDOWN, close_storage)
    pipeline = DataflowPipeline.from_tasks(broker, [source, left, right, merge])
    return App(broker=broker, pipeline=pipeline, storage=storage, client=client)


def create_broker() -> AsyncBroker:
    """Factory for ``taskiq worker``: the app configured from the environment."""
    return build(
        os.environ["TASKIQ_FLOW_IT_REDIS_URL"],
        os.environ["TASKIQ_FLOW_IT_QUEUE"],
        float(os.environ.get("TASKIQ_FLOW_IT_READINESS_DELAY", "0")),
    ).broker
