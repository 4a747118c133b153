"""Worker app of the result-backend suite: taskiq's results *are* the storage records.

``taskiq worker result_backend_app:create_broker`` calls :func:`create_broker`, which is
:func:`build` configured by the environment (the test process calls :func:`build` itself
to be the producer):

- ``RB_BROKER_URL``: the Redis of the broker (a taskiq-redis ``ListQueueBroker``), of
  the readiness set and of the progress hand-shake;
- ``RB_STORAGE``: where results and records live: a ``redis://`` URL
  (``RedisStorageAdapter``) or a SQLite file path (``SQLiteStorageAdapter``);
- ``RB_QUEUE``: the list the workers pop.

The broker's result backend is ``StorageResultBackend`` and ``StorageMiddleware`` runs
on the same adapter object: one key, one write per task. Each worker process adds its
pid to the set ``rb:workers:{queue}`` once started.

Tasks (names fixed, so that both sides agree whatever module path imported them):

- ``rb.point(x)`` returns a dataclass :class:`Point`, ``rb.summary(n)`` a pydantic
  :class:`Summary`, ``rb.double(x)`` (a sync task) an int: the caller's
  ``wait_result()`` must give them back typed by the return annotation;
- ``rb.fail(x)`` raises :class:`AppError` (importable here, so the caller gets that type);
- ``rb.report(x)`` sets its progress to ``STARTED`` with ``{"x": x}``, then waits (at
  most 10 s) until the caller has seen it and set ``rb:release:{task_id}``;
- ``rb.slow(x, seconds)`` sleeps, then returns ``x + 1`` (the outage run).
"""

import asyncio
import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis
from pydantic import BaseModel
from taskiq import AsyncBroker, Context, TaskiqDepends, TaskiqEvents, TaskiqState
from taskiq.depends.progress_tracker import ProgressTracker, TaskState

from taskiq_flow.middlewares import StorageMiddleware, StorageResultBackend
from taskiq_flow.storage import BaseStorageAdapter, SQLiteStorageAdapter
from taskiq_flow.storage.redis import RedisStorageAdapter
from taskiq_flow_testing import list_queue_broker

WORKERS_KEY = "rb:workers:{queue}"
RELEASE_KEY = "rb:release:{task_id}"


@dataclasses.dataclass
class Point:
    """A dataclass return value (stored as a map, rebuilt by the annotation)."""

    x: int
    y: int


class Summary(BaseModel):
    """A pydantic return value."""

    n: int
    squares: list[int]


class AppError(Exception):
    """The tasks' own error: importable, so the caller gets this very type back."""


def make_storage(where: str) -> BaseStorageAdapter:
    """A Redis adapter for a ``redis://`` URL, else a SQLite adapter on that file."""
    if where.startswith(("redis://", "rediss://")):
        return RedisStorageAdapter(where)
    return SQLiteStorageAdapter(where)


def build(settings: Mapping[str, str]) -> AsyncBroker:
    """The broker: taskiq-redis queue, StorageResultBackend + StorageMiddleware, the tasks."""
    broker_url = settings["RB_BROKER_URL"]
    storage = make_storage(settings["RB_STORAGE"])
    broker = list_queue_broker(broker_url, settings["RB_QUEUE"]).with_result_backend(
        StorageResultBackend(storage, ttl_seconds=3600)
    )
    # Quick retries: the outage run waits for the buffered results to land.
    broker.add_middlewares(
        StorageMiddleware(
            storage=storage, ttl_seconds=3600, retry_interval=0.1, max_retry_interval=0.5
        )
    )
    client = aioredis.from_url(broker_url)

    @broker.task(task_name="rb.point")
    async def point(x: int) -> Point:
        return Point(x=x, y=-x)

    @broker.task(task_name="rb.summary")
    async def summary(n: int) -> Summary:
        return Summary(n=n, squares=[i * i for i in range(n % 5)])

    @broker.task(task_name="rb.double")
    def double(x: int) -> int:
        return 2 * x

    @broker.task(task_name="rb.fail")
    async def fail(x: int) -> int:
        raise AppError(f"task {x} failed")

    @broker.task(task_name="rb.report")
    async def report(
        x: int,
        context: Context = TaskiqDepends(),
        tracker: ProgressTracker[dict[str, int]] = TaskiqDepends(),
    ) -> int:
        await tracker.set_progress(TaskState.STARTED, {"x": x})
        release = RELEASE_KEY.format(task_id=context.message.task_id)
        for _ in range(500):
            if await client.exists(release):
                break
            await asyncio.sleep(0.02)
        return x

    @broker.task(task_name="rb.slow")
    async def slow(x: int, seconds: float) -> int:
        await asyncio.sleep(seconds)
        return x + 1

    @broker.on_event(TaskiqEvents.WORKER_STARTUP)
    async def announce(state: TaskiqState) -> None:
        await client.sadd(WORKERS_KEY.format(queue=settings["RB_QUEUE"]), os.getpid())

    @broker.on_event(TaskiqEvents.WORKER_SHUTDOWN, TaskiqEvents.CLIENT_SHUTDOWN)
    async def close_client(state: TaskiqState) -> None:
        await client.aclose()

    return broker


def create_broker() -> AsyncBroker:
    """The worker side, configured by the environment."""
    return build(os.environ)


def task(broker: AsyncBroker, name: str) -> Any:
    """The decorated task ``name`` of ``broker``."""
    found = broker.find_task(name)
    if found is None:
        raise LookupError(name)
    return found
