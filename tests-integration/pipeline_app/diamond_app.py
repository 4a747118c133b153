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

The recovery suite (``test_pipeline_recovery.py``) also reads
``TASKIQ_FLOW_IT_LEASE`` (the run lease, seconds), ``TASKIQ_FLOW_IT_STEP_DELAY`` (each
diamond step sleeps that long) and ``TASKIQ_FLOW_IT_KILL_AT_SEND`` (a node name: the
first worker about to send that node, after winning its claim, SIGKILLs itself - the
claim->send window, once per run, settled by ``SET NX`` in Redis) and
``TASKIQ_FLOW_IT_SWEEP`` (the workers' ``sweep_interval``: seconds, ``none``, or
``auto``, the default: half the lease), and has two more
pipelines: a 10-step ``chain`` (step 4 waits for a Redis gate key) and ``fan_out``
(``square`` mapped over a list, executions counted per worker process).
"""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import dataclass
from typing import Any, Literal

import redis.asyncio as aioredis
from redis.typing import EncodableT, FieldT
from taskiq import AsyncBroker, Context, TaskiqDepends, TaskiqEvents, TaskiqMessage, TaskiqResult
from taskiq_redis import RedisAsyncResultBackend

from taskiq_flow.middlewares import (
    DataflowPipeline,
    PipelineMiddleware,
    StorageMiddleware,
    pipeline_task,
)
from taskiq_flow.storage import RedisStorageAdapter
from taskiq_flow_testing import list_queue_broker

MERGE_COUNT = "it:pipeline:merge:{pipeline_id}"
STATS = "it:pipeline:stats:{pid}"
ARRIVED = "it:pipeline:arrived:{pipeline_id}"
NODE_COUNT = "it:pipeline:ran:{pipeline_id}:{node}"
KILLED = "it:pipeline:killed:{pipeline_id}"
GATE = "it:pipeline:gate:{pipeline_id}"
WORKERS_UP = "it:pipeline:workers-up:{queue}"
SQUARES_BY_PID = "it:pipeline:squares:{pipeline_id}"
CHAIN = 10


class RacePipelineMiddleware(PipelineMiddleware):
    """PipelineMiddleware that can widen the claim race and publishes its counters."""

    def __init__(
        self,
        client: aioredis.Redis,
        delay: float,
        kill_at: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.client = client
        self.delay = delay
        self.kill_at = kill_at

    async def before_send(self, pipeline_id: str, node: str, attempt: int) -> None:
        # The claim is written, the message is not sent: die right here, once per run.
        if (
            node == self.kill_at
            and attempt == 1
            and await self.client.set(KILLED.format(pipeline_id=pipeline_id), os.getpid(), nx=True)
        ):
            os.kill(os.getpid(), signal.SIGKILL)

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
    chain: DataflowPipeline
    fan_out: DataflowPipeline

    async def close(self) -> None:
        await self.broker.shutdown()
        await self.storage.close()
        await self.client.aclose()
        await self.client.connection_pool.disconnect()


def build(
    redis_url: str,
    queue: str,
    delay: float = 0.0,
    *,
    lease: float = 60.0,
    step_delay: float = 0.0,
    kill_at: str | None = None,
    sweep: float | Literal["auto"] | None = "auto",
) -> App:
    """The broker (worker or producer side), its middlewares and the pipelines."""
    broker = list_queue_broker(redis_url, queue).with_result_backend(
        RedisAsyncResultBackend(redis_url, result_ex_time=600),
    )
    # A blocking pool: up to 100 concurrent tasks per worker wait for a connection
    # instead of failing (redis-py's default pool raises past 100 connections).
    pool = aioredis.BlockingConnectionPool.from_url(redis_url, max_connections=48, timeout=20)
    client = aioredis.Redis(connection_pool=pool)
    storage = RedisStorageAdapter(client=client)
    broker.add_middlewares(
        StorageMiddleware(storage=storage),
        RacePipelineMiddleware(client, delay, kill_at, lease_seconds=lease, sweep_interval=sweep),
    )

    async def ran(context: Context, node: str) -> None:
        pipeline_id = context.message.labels["pipeline_id"]
        await client.incr(NODE_COUNT.format(pipeline_id=pipeline_id, node=node))
        if step_delay:
            await asyncio.sleep(step_delay)

    @broker.task(task_name="it.diamond.source")
    @pipeline_task(output="raw")
    async def source(n: int, context: Context = TaskiqDepends()) -> int:
        await ran(context, "source")
        return n

    @broker.task(task_name="it.diamond.left")
    @pipeline_task(output="left_v")
    async def left(raw: int, context: Context = TaskiqDepends()) -> int:
        await ran(context, "left")
        return raw + 1

    @broker.task(task_name="it.diamond.right")
    @pipeline_task(output="right_v")
    async def right(raw: int, context: Context = TaskiqDepends()) -> int:
        await ran(context, "right")
        return raw * 2

    @broker.task(task_name="it.diamond.merge")
    @pipeline_task(output="merged")
    async def merge(left_v: int, right_v: int, context: Context = TaskiqDepends()) -> int:
        pipeline_id = context.message.labels["pipeline_id"]
        await client.incr(MERGE_COUNT.format(pipeline_id=pipeline_id))
        if step_delay:
            await asyncio.sleep(step_delay)
        return left_v + right_v

    chain_tasks = []
    for i in range(CHAIN):

        async def step(context: Context = TaskiqDepends(), _i: int = i, **kwargs: int) -> int:
            await ran(context, f"s{_i}")
            if _i == 4:  # the step the cancel test stops at
                pipeline_id = context.message.labels["pipeline_id"]
                while not await client.exists(GATE.format(pipeline_id=pipeline_id)):
                    await asyncio.sleep(0.01)
            return next(iter(kwargs.values())) + 1

        step.__name__ = f"s{i}"
        chain_tasks.append(
            broker.task(task_name=f"it.chain.s{i}")(
                pipeline_task(output=f"x{i + 1}", inputs=[f"x{i}"])(step),
            ),
        )

    @broker.task(task_name="it.fan.square")
    @pipeline_task(output="squares", map_over="items")
    async def square(items: int, context: Context = TaskiqDepends()) -> int:
        pipeline_id = context.message.labels["pipeline_id"]
        await client.hincrby(SQUARES_BY_PID.format(pipeline_id=pipeline_id), str(os.getpid()))
        await asyncio.sleep(0.01)
        return items * items

    async def close_storage(_state: object) -> None:
        await storage.close()
        await client.aclose()

    broker.add_event_handler(TaskiqEvents.WORKER_SHUTDOWN, close_storage)
    pipeline = DataflowPipeline.from_tasks(broker, [source, left, right, merge])
    return App(
        broker=broker,
        pipeline=pipeline,
        storage=storage,
        client=client,
        chain=DataflowPipeline.from_tasks(broker, chain_tasks),
        fan_out=DataflowPipeline.from_tasks(broker, [square]),
    )


def create_broker() -> AsyncBroker:
    """Factory for ``taskiq worker``: the app configured from the environment."""
    queue = os.environ["TASKIQ_FLOW_IT_QUEUE"]
    app = build(
        os.environ["TASKIQ_FLOW_IT_REDIS_URL"],
        queue,
        float(os.environ.get("TASKIQ_FLOW_IT_READINESS_DELAY", "0")),
        lease=float(os.environ.get("TASKIQ_FLOW_IT_LEASE", "60")),
        step_delay=float(os.environ.get("TASKIQ_FLOW_IT_STEP_DELAY", "0")),
        kill_at=os.environ.get("TASKIQ_FLOW_IT_KILL_AT_SEND") or None,
        sweep=_sweep(os.environ.get("TASKIQ_FLOW_IT_SWEEP", "auto")),
    )

    async def started(_state: object) -> None:
        # The tests wait for this before kicking: on a loaded machine a worker can take
        # longer to start than a step's lease, and a step nobody could pick up yet would
        # be taken for lost.
        await app.client.incr(WORKERS_UP.format(queue=queue))

    app.broker.add_event_handler(TaskiqEvents.WORKER_STARTUP, started)
    return app.broker


def _sweep(value: str) -> float | Literal["auto"] | None:
    if value == "auto":
        return "auto"
    return None if value == "none" else float(value)
