"""Answer at send (issue 13) through InMemoryBroker: what reaches the broker, what kiq returns.

A message "reaches the broker" when InMemoryBroker's receiver gets it: counted by a real
``pre_execute`` hook (``Delivered``). Caches are real: in-memory, or Redis (the repo's
private server) where a lease across "producers" matters.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio as aioredis
from pydantic import BaseModel
from taskiq import InMemoryBroker, TaskiqMessage, TaskiqMiddleware
from taskiq.abc.result_backend import AsyncResultBackend

from taskiq_flow.cache import BaseCacheAdapter, InMemoryCacheAdapter, RedisCacheAdapter
from taskiq_flow.middlewares import (
    CacheMiddleware,
    DataflowPipeline,
    PipelineMiddleware,
    StorageMiddleware,
    StorageResultBackend,
    pipeline_task,
)
from taskiq_flow.storage import InMemoryStorageAdapter


class Delivered(TaskiqMiddleware):
    """Counts the messages the broker delivered to its receiver (one per message sent)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: Counter[str] = Counter()

    def pre_execute(self, message: TaskiqMessage) -> TaskiqMessage:
        self.names[message.task_name] += 1
        return message

    @property
    def total(self) -> int:
        return sum(self.names.values())


@dataclass
class App:
    broker: InMemoryBroker
    cache: CacheMiddleware
    storage: StorageMiddleware
    delivered: Delivered
    runs: Counter[str]
    tasks: dict[str, Any]

    async def settle(self) -> None:
        await self.broker.wait_all()
        await asyncio.sleep(0)


AppFactory = Callable[..., Any]


class Point(BaseModel):
    """A return type taskiq parses the cached dict into (``return_type``)."""

    x: int
    y: int


@pytest.fixture
async def make_app() -> AsyncIterator[AppFactory]:
    made: list[InMemoryBroker] = []

    async def make(
        *,
        await_inplace: bool = False,
        cache: BaseCacheAdapter | None = None,
        result_backend: AsyncResultBackend[Any] | None = None,
        store_cache_hits: bool = False,
        storage: InMemoryStorageAdapter | None = None,
        **cache_options: Any,
    ) -> App:
        broker = InMemoryBroker(await_inplace=await_inplace, max_stored_results=-1)
        storage = storage if storage is not None else InMemoryStorageAdapter()
        if result_backend is not None:
            broker = broker.with_result_backend(result_backend)
        delivered = Delivered()
        cache_mw = CacheMiddleware(cache=cache or InMemoryCacheAdapter(), **cache_options)
        storage_mw = StorageMiddleware(storage=storage, store_cache_hits=store_cache_hits)
        broker.add_middlewares(delivered, cache_mw, storage_mw)
        runs: Counter[str] = Counter()

        @broker.task(task_name="t.square")
        async def square(x: int) -> int:
            runs["square"] += 1
            return x * x

        @broker.task(task_name="t.slow")
        async def slow(x: int) -> int:
            runs["slow"] += 1
            await asyncio.sleep(0.3)
            return x + 100

        @broker.task(task_name="t.fails", cache_errors="true")
        async def fails(x: int) -> int:
            runs["fails"] += 1
            raise KeyError(f"no {x}")

        @broker.task(task_name="t.point")
        def point(x: int) -> Point:  # sync, with a return type to parse
            runs["point"] += 1
            return Point(x=x, y=-x)

        await broker.startup()
        made.append(broker)
        tasks = {"square": square, "slow": slow, "fails": fails, "point": point}
        return App(broker, cache_mw, storage_mw, delivered, runs, tasks)

    yield make
    for broker in made:
        await broker.shutdown()


@pytest.fixture(params=[False, True], ids=["background", "await_inplace"])
def await_inplace(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


async def test_second_identical_kiq_sends_nothing(make_app: AppFactory, await_inplace) -> None:
    app = await make_app(await_inplace=await_inplace)
    square = app.tasks["square"]
    first = await (await square.kiq(7)).wait_result(timeout=5)
    await app.settle()
    assert first.return_value == 49
    assert app.delivered.total == 1

    task = await square.kiq(7)
    assert await task.is_ready()  # answered before kiq returned
    result = await task.wait_result(timeout=5)
    await app.settle()
    assert result.return_value == 49
    assert result.labels["cache_hit"] == "true"
    assert result.labels["cache_answered"] == "send"
    assert app.delivered.total == 1  # the second call never reached the broker
    assert app.runs["square"] == 1
    assert app.cache.get_stats()["middleware"]["answered_at_send"] == 1

    # different args, cache="false", cache_at_send="false": each one is sent
    await (await square.kiq(8)).wait_result(timeout=5)
    await (await square.kicker().with_labels(cache="false").kiq(7)).wait_result(timeout=5)
    bypass = await square.kicker().with_labels(cache_at_send="false").kiq(7)
    assert (await bypass.wait_result(timeout=5)).return_value == 49
    guide_form = await square.kiq(7, labels={"cache_at_send": False})
    assert (await guide_form.wait_result(timeout=5)).return_value == 49
    await app.settle()
    assert app.delivered.total == 5
    assert app.runs["square"] == 3  # 7, 8, and 7 with cache="false"


async def test_after_ttl_the_call_is_sent(make_app: AppFactory, await_inplace) -> None:
    app = await make_app(await_inplace=await_inplace)
    square = app.tasks["square"].kicker().with_labels(cache_ttl=1)
    await (await square.kiq(3)).wait_result(timeout=5)
    await (await square.kiq(3)).wait_result(timeout=5)
    await app.settle()
    assert app.delivered.total == 1
    await asyncio.sleep(1.1)
    assert (await (await square.kiq(3)).wait_result(timeout=5)).return_value == 9
    await app.settle()
    assert app.delivered.total == 2
    assert app.runs["square"] == 2


async def test_answer_at_send_off_sends_every_call(make_app: AppFactory) -> None:
    app = await make_app(answer_at_send=False)
    for _ in range(3):
        assert (await (await app.tasks["square"].kiq(2)).wait_result(timeout=5)).return_value == 4
    await app.settle()
    assert app.delivered.total == 3
    assert app.runs["square"] == 1  # still answered from the cache, in the worker


async def test_return_type_is_parsed_and_errors_keep_their_type(make_app: AppFactory) -> None:
    app = await make_app()
    await (await app.tasks["point"].kiq(2)).wait_result(timeout=5)
    hit = await (await app.tasks["point"].kiq(2)).wait_result(timeout=5)
    assert isinstance(hit.return_value, Point)
    assert (hit.return_value.x, hit.return_value.y) == (2, -2)

    first = await (await app.tasks["fails"].kiq(1)).wait_result(timeout=5)
    assert isinstance(first.error, KeyError)
    again = await (await app.tasks["fails"].kiq(1)).wait_result(timeout=5)
    await app.settle()
    assert type(again.error) is KeyError
    with pytest.raises(KeyError, match="no 1"):
        again.raise_for_error()
    assert app.runs["fails"] == 1
    assert app.delivered.names["t.fails"] == 1


async def test_any_result_backend_and_the_hit_record(make_app: AppFactory) -> None:
    storage = InMemoryStorageAdapter()
    app = await make_app(
        storage=storage, result_backend=StorageResultBackend(storage), store_cache_hits=True
    )
    await (await app.tasks["square"].kiq(5)).wait_result(timeout=5)
    task = await app.tasks["square"].kiq(5)
    result = await task.wait_result(timeout=5)
    assert result.return_value == 25
    record = await storage.get(f"task:{task.task_id}")
    assert record["cached"] is True
    assert record["labels"]["cache_answered"] == "send"
    await app.settle()
    assert app.delivered.total == 1


async def test_store_cache_hits_records_the_answer(make_app: AppFactory) -> None:
    app = await make_app(store_cache_hits=True)
    await (await app.tasks["square"].kiq(6)).wait_result(timeout=5)
    task = await app.tasks["square"].kiq(6)
    await task.wait_result(timeout=5)
    await app.storage.flush()
    record = await app.storage.storage.get(f"task:{task.task_id}")
    assert record is not None
    assert record["cached"] is True
    assert record["return_value"] == "36"


async def test_unencodable_arguments_are_sent_with_one_warning(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app = await make_app()
    huge = 2**70  # JSON carries it; msgpack (the key) cannot
    with caplog.at_level(logging.WARNING, logger="taskiq_flow.middlewares"):
        for _ in range(3):
            result = await (await app.tasks["square"].kiq(huge)).wait_result(timeout=5)
            assert result.return_value == huge * huge
    await app.settle()
    assert app.delivered.total == 3
    warnings = [r for r in caplog.records if "cannot be encoded" in r.getMessage()]
    assert len(warnings) == 1


async def test_cache_down_at_send_sends_normally(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    down = RedisCacheAdapter("redis://127.0.0.1:1", connect_timeout=0.2, retries=0)
    app = await make_app(cache=down)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            result = await (await app.tasks["square"].kiq(4)).wait_result(timeout=10)
            assert result.return_value == 16
    await app.settle()
    assert app.delivered.total == 2
    assert app.runs["square"] == 2  # uncached in the worker too
    assert app.cache.get_stats()["middleware"]["send_lookup_failures"] == 1  # then it rests


@pytest.mark.redis
async def test_corrupt_entry_is_sent_normally(make_app: AppFactory, redis_url: str) -> None:
    app = await make_app(cache=RedisCacheAdapter(redis_url, key_prefix="aas:"))
    await (await app.tasks["square"].kiq(9)).wait_result(timeout=5)
    client = aioredis.from_url(redis_url)
    try:
        keys = [k async for k in client.scan_iter(match="aas:v:*")]
        assert len(keys) == 1
        await client.set(keys[0], b"\xc1 not msgpack")
        result = await (await app.tasks["square"].kiq(9)).wait_result(timeout=5)
        assert result.return_value == 81
        await app.settle()
        assert app.delivered.total == 2
        assert app.runs["square"] == 2
    finally:
        await client.aclose()


@pytest.mark.redis
async def test_identical_call_in_flight_is_joined(make_app: AppFactory, redis_url: str) -> None:
    """Two producers (brokers) sharing one Redis cache: the second joins the first's call."""
    one = await make_app(cache=RedisCacheAdapter(redis_url, key_prefix="join:"))
    two = await make_app(cache=RedisCacheAdapter(redis_url, key_prefix="join:"))
    first = await one.tasks["slow"].kiq(1)  # claims the lease, sent to one's worker
    joined = [await two.tasks["slow"].kiq(1) for _ in range(5)]
    same_process = await one.tasks["slow"].kiq(1)
    results = await asyncio.gather(
        *(t.wait_result(timeout=10, check_interval=0.01) for t in [first, *joined, same_process])
    )
    assert [r.return_value for r in results] == [101] * 7
    await one.settle()
    await two.settle()
    assert one.runs["slow"] + two.runs["slow"] == 1
    assert one.delivered.total == 1
    assert two.delivered.total == 0
    assert two.cache.get_stats()["middleware"]["joined_at_send"] == 5


@pytest.mark.redis
async def test_stale_entry_answered_at_once_one_refresh(
    make_app: AppFactory, redis_url: str
) -> None:
    apps = [
        await make_app(cache=RedisCacheAdapter(redis_url, key_prefix="swr:", stale_ttl=60))
        for _ in range(3)
    ]
    square = [a.tasks["square"].kicker().with_labels(cache_ttl=1) for a in apps]
    await (await square[0].kiq(2)).wait_result(timeout=5)
    await asyncio.sleep(1.1)  # stale now
    tasks = await asyncio.gather(*(s.kiq(2) for s in square for _ in range(4)))
    assert all([await t.is_ready() for t in tasks])  # answered at once, stale
    assert {(await t.get_result()).return_value for t in tasks} == {4}
    for app in apps:
        await app.settle()
    assert sum(a.cache.get_stats()["middleware"]["refreshes_sent"] for a in apps) == 1
    assert sum(a.runs["square"] for a in apps) == 2  # the first call and the one refresh
    assert sum(a.delivered.total for a in apps) == 2


async def test_diamond_pipeline_fully_cached_sends_no_step(make_app: AppFactory) -> None:
    storage = InMemoryStorageAdapter()
    broker = InMemoryBroker(await_inplace=False, max_stored_results=-1)
    delivered = Delivered()
    broker.add_middlewares(
        delivered,
        CacheMiddleware(cache=InMemoryCacheAdapter()),
        StorageMiddleware(storage=storage),
        PipelineMiddleware(),
    )
    runs: Counter[str] = Counter()

    @broker.task(task_name="d.source")
    @pipeline_task(output="raw")
    async def source(n: int) -> int:
        runs["source"] += 1
        return n

    @broker.task(task_name="d.left")
    @pipeline_task(output="left_v")
    async def left(raw: int) -> int:
        runs["left"] += 1
        return raw + 1

    @broker.task(task_name="d.right")
    @pipeline_task(output="right_v")
    def right(raw: int) -> int:
        runs["right"] += 1
        return raw * 2

    @broker.task(task_name="d.merge")
    @pipeline_task(output="merged")
    async def merge(left_v: int, right_v: int) -> int:
        runs["merge"] += 1
        return left_v + right_v

    await broker.startup()
    try:
        pipeline = DataflowPipeline.from_tasks(broker, [source, left, right, merge])
        cold = await pipeline.kiq_dataflow(n=5, timeout=10)
        await broker.wait_all()
        assert cold["merged"] == 16
        assert delivered.total == 4

        run = await pipeline.kiq(n=5, pipeline_id="warm")
        warm = await run.wait_result(timeout=10)
        await broker.wait_all()
        assert warm.return_value == cold
        assert delivered.total == 4  # no step message sent for the warm run
        assert runs == {"source": 1, "left": 1, "right": 1, "merge": 1}
        for node, task_id in run.task_ids.items():
            record = await storage.get(f"pipeline:warm:task:{task_id}")
            assert record is not None, node
            assert record["cached"] is True
            assert record["labels"]["cache_answered"] == "send"
    finally:
        await broker.shutdown()


class _SyncHookFails(TaskiqMiddleware):
    """A sync post_execute (taskiq allows them) that raises for answers given at send.

    (For a worker's own execution taskiq itself lets such a hook crash its receiver.)
    """

    def post_execute(self, message: TaskiqMessage, result: Any) -> None:
        if result.labels.get("cache_answered") == "send":
            raise RuntimeError("a broken hook")


async def test_a_raising_sync_hook_never_reaches_kiq(caplog: pytest.LogCaptureFixture) -> None:
    # Answering at send runs the other middlewares' hooks in the producer: one that raises
    # when called (not when awaited) is logged, and kiq() still returns the answer.
    broker = InMemoryBroker()
    broker.add_middlewares(CacheMiddleware(cache=InMemoryCacheAdapter()), _SyncHookFails())
    runs = Counter[int]()

    @broker.task
    async def double(x: int) -> int:
        runs[x] += 1
        return x * 2

    await broker.startup()
    try:
        assert (await (await double.kiq(4)).wait_result(timeout=5)).return_value == 8
        with caplog.at_level(logging.ERROR, logger="taskiq_flow.middlewares"):
            answered = await double.kiq(4)
        assert (await answered.wait_result(timeout=5)).return_value == 8
        assert runs[4] == 1
        assert "post_execute failed for a task answered at send" in caplog.text
    finally:
        await broker.shutdown()
