from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from taskiq import InMemoryBroker, TaskiqMessage, TaskiqMiddleware

from taskiq_flow.middlewares import PipelineMiddleware, StorageMiddleware
from taskiq_flow.storage import (
    BaseStorageAdapter,
    InMemoryStorageAdapter,
    RedisStorageAdapter,
    SQLiteStorageAdapter,
)


class SendCounter(TaskiqMiddleware):
    """Counts every message a producer hands to the broker (a real pre_send hook)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[TaskiqMessage] = []

    def pre_send(self, message: TaskiqMessage) -> TaskiqMessage:
        self.sent.append(message)
        return message


class Flow:
    """A broker with StorageMiddleware + PipelineMiddleware and per-task bookkeeping."""

    def __init__(
        self,
        broker: InMemoryBroker,
        storage: BaseStorageAdapter,
        pipeline: PipelineMiddleware,
        sends: SendCounter,
    ) -> None:
        self.broker = broker
        self.storage = storage
        self.pipeline = pipeline
        self.sends = sends
        self.calls: Counter[str] = Counter()
        self.spans: dict[str, tuple[float, float]] = {}

    def mark(self, name: str) -> float:
        self.calls[name] += 1
        return time.monotonic()

    def span(self, name: str, started: float) -> None:
        self.spans[name] = (started, time.monotonic())


FlowFactory = Callable[..., Any]


@pytest.fixture
async def make_flow() -> AsyncIterator[FlowFactory]:
    """Build brokers wired like the guide; each is shut down after the test."""
    made: list[tuple[InMemoryBroker, BaseStorageAdapter]] = []

    async def make(
        *,
        await_inplace: bool = True,
        storage: BaseStorageAdapter | None = None,
        before: tuple[TaskiqMiddleware, ...] = (),
        after: tuple[TaskiqMiddleware, ...] = (),
        pipeline: PipelineMiddleware | None = None,
    ) -> Flow:
        broker = InMemoryBroker(await_inplace=await_inplace, max_stored_results=-1)
        store = storage if storage is not None else InMemoryStorageAdapter()
        sends = SendCounter()
        pipe = pipeline if pipeline is not None else PipelineMiddleware()
        broker.add_middlewares(sends, *before, StorageMiddleware(storage=store), pipe, *after)
        await broker.startup()
        made.append((broker, store))
        return Flow(broker, store, pipe, sends)

    yield make
    for broker, store in made:
        await broker.wait_all()
        await broker.shutdown()
        await store.close()


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def any_storage(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[BaseStorageAdapter]:
    """Every backend run state can live in (SQLite and Redis are shared across processes)."""
    if request.param in {"memory", "sqlite"}:
        store: BaseStorageAdapter = (
            InMemoryStorageAdapter()
            if request.param == "memory"
            else SQLiteStorageAdapter(tmp_path / "pipeline.db")
        )
        yield store
        await store.close()
        return
    # Many runs in flight at once: a blocking pool waits for a free connection instead of
    # failing with "Too many connections" (redis-py's default pool raises at 100).
    pool = aioredis.BlockingConnectionPool.from_url(
        request.getfixturevalue("redis_url"),
        max_connections=32,
        timeout=10,
    )
    client = aioredis.Redis(connection_pool=pool)
    store = RedisStorageAdapter(client=client)
    yield store
    await store.close()
    await client.aclose()
    await pool.disconnect()
