"""StorageResultBackend: one contract over the in-memory, SQLite and Redis adapters,
through a real taskiq broker."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from taskiq import InMemoryBroker, TaskiqDepends, TaskiqResult
from taskiq.depends.progress_tracker import ProgressTracker, TaskState
from taskiq.exceptions import ResultGetError

from taskiq_flow.cache import InMemoryCacheAdapter
from taskiq_flow.middlewares import (
    CacheMiddleware,
    ResultCorruptError,
    ResultMissingError,
    ResultNotSerializableError,
    StorageMiddleware,
    StorageResultBackend,
    StoredTaskError,
)
from taskiq_flow.storage import BaseStorageAdapter, InMemoryStorageAdapter, SQLiteStorageAdapter


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Unimportable(Exception):
    pass


Unimportable.__module__ = "a_module_nobody_imported"


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def storage(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[BaseStorageAdapter]:
    adapter: BaseStorageAdapter
    if request.param == "memory":
        adapter = InMemoryStorageAdapter()
    elif request.param == "sqlite":
        adapter = SQLiteStorageAdapter(tmp_path / "store.sqlite3")
    else:
        from taskiq_flow.storage.redis import RedisStorageAdapter

        adapter = RedisStorageAdapter(request.getfixturevalue("redis_url"))
    yield adapter
    await adapter.close()


Setup = Callable[..., InMemoryBroker]


@pytest.fixture
async def make_broker(storage: BaseStorageAdapter) -> AsyncIterator[Setup]:
    brokers: list[InMemoryBroker] = []

    def setup(*, middleware: bool = True, **options: Any) -> InMemoryBroker:
        broker = InMemoryBroker(await_inplace=True).with_result_backend(
            StorageResultBackend(storage, **options)
        )
        if middleware:
            broker.add_middlewares(
                CacheMiddleware(InMemoryCacheAdapter()), StorageMiddleware(storage)
            )
        brokers.append(broker)
        return broker

    yield setup
    for broker in brokers:
        await broker.shutdown()


async def test_values_round_trip_typed_by_the_annotation(make_broker: Setup) -> None:
    broker = make_broker()

    @broker.task
    async def make(x: int) -> Point:
        return Point(x, x + 1)

    @broker.task
    async def raw(n: int) -> dict[str, Any]:
        return {"data": bytes([0, 255]) * n, "n": None}

    await broker.startup()
    result = await (await make.kiq(3)).wait_result(timeout=5)
    assert result.return_value == Point(3, 4)
    assert not result.is_err
    assert (await (await raw.kiq(1)).wait_result(timeout=5)).return_value == {
        "data": b"\x00\xff",
        "n": None,
    }


async def test_errors_come_back_as_their_type_or_a_stand_in(make_broker: Setup) -> None:
    broker = make_broker()

    @broker.task
    async def fails() -> None:
        raise KeyError("missing input")

    @broker.task
    async def exotic() -> None:
        raise Unimportable("from nowhere")

    await broker.startup()
    result = await (await fails.kiq()).wait_result(timeout=5)
    assert result.is_err
    assert isinstance(result.error, KeyError)
    with pytest.raises(KeyError, match="missing input"):
        result.raise_for_error()
    other = await (await exotic.kiq()).wait_result(timeout=5)
    assert isinstance(other.error, StoredTaskError)
    assert other.error.error_type == "a_module_nobody_imported.Unimportable"
    assert "from nowhere" in str(other.error)


async def test_one_key_per_task_with_storage_middleware(
    make_broker: Setup, storage: BaseStorageAdapter
) -> None:
    broker = make_broker()

    @broker.task
    async def double(x: int) -> int:
        return 2 * x

    await broker.startup()
    tasks = [await double.kiq(i % 7) for i in range(30)]  # 23 of them are cache hits
    for i, task in enumerate(tasks):
        assert (await task.wait_result(timeout=5)).return_value == 2 * (i % 7)
    keys = await storage.keys("*")
    assert sorted(keys) == sorted(f"task:{task.task_id}" for task in tasks)
    record = await storage.get(f"task:{tasks[0].task_id}")
    assert record["task_name"] == double.task_name
    assert record["return_value"] == "0"
    hit = await storage.get(f"task:{tasks[7].task_id}")
    assert hit["cached"] is True


async def test_pipeline_step_keeps_the_guide_key_and_is_found_by_id(
    make_broker: Setup, storage: BaseStorageAdapter
) -> None:
    broker = make_broker()

    @broker.task
    async def step() -> str:
        return "done"

    await broker.startup()
    task = await step.kicker().with_labels(pipeline_id="run1").kiq()
    assert (await task.wait_result(timeout=5)).return_value == "done"
    record = await storage.get(f"pipeline:run1:task:{task.task_id}")
    assert record["pipeline_id"] == "run1"
    assert await storage.get(f"task:{task.task_id}") == {
        "ref": f"pipeline:run1:task:{task.task_id}"
    }


async def test_without_the_middleware_the_backend_writes_the_record_itself(
    make_broker: Setup, storage: BaseStorageAdapter
) -> None:
    broker = make_broker(middleware=False)

    @broker.task
    async def one() -> int:
        return 1

    await broker.startup()
    task = await one.kiq()
    assert (await task.wait_result(timeout=5)).return_value == 1
    record = await storage.get(f"task:{task.task_id}")
    assert record["return_value"] == "1"
    assert record["task_name"] is None  # only a result backend: the name is not known


async def test_keep_results_false_deletes_on_read(
    make_broker: Setup, storage: BaseStorageAdapter
) -> None:
    broker = make_broker(keep_results=False)

    @broker.task
    async def one() -> int:
        return 1

    await broker.startup()
    task = await one.kiq()
    assert (await task.wait_result(timeout=5)).return_value == 1
    assert await storage.keys("*") == []
    with pytest.raises(ResultGetError):
        await task.get_result()


async def test_progress_set_in_the_task_is_read_by_the_caller(make_broker: Setup) -> None:
    broker = make_broker()
    seen: list[Any] = []
    release = asyncio.Event()

    @broker.task
    async def slow(tracker: ProgressTracker[dict[str, int]] = TaskiqDepends()) -> int:
        await tracker.set_progress(TaskState.STARTED, {"done": 5})
        await release.wait()
        return 1

    await broker.startup()
    broker.await_inplace = False  # let the task run while we read its progress
    task = await slow.kiq()
    for _ in range(100):
        progress = await task.get_progress()
        if progress is not None:
            seen.append(progress)
            break
        await asyncio.sleep(0.02)
    release.set()
    assert (await task.wait_result(timeout=5)).return_value == 1
    assert seen[0].state == TaskState.STARTED
    assert seen[0].meta == {"done": 5}


async def test_unknown_id_is_taskiqs_missing_result(storage: BaseStorageAdapter) -> None:
    backend = StorageResultBackend(storage)
    assert await backend.is_result_ready("nope") is False
    with pytest.raises(ResultMissingError) as info:
        await backend.get_result("nope")
    assert isinstance(info.value, ResultGetError)


async def test_corrupt_stored_result_is_a_clear_error(storage: BaseStorageAdapter) -> None:
    backend = StorageResultBackend(storage)
    await storage.set("task:t1", {"result": b"\xc1 not msgpack", "labels": {}})
    await storage.set("task:t2", [1, 2, 3])
    for task_id in ("t1", "t2"):
        with pytest.raises(ResultCorruptError, match=task_id) as info:
            await backend.get_result(task_id)
        assert isinstance(info.value, ResultGetError)


async def test_unencodable_result_is_an_error_result_naming_the_type(
    make_broker: Setup,
) -> None:
    broker = make_broker()

    class Opaque:
        pass

    @broker.task
    async def odd() -> Any:
        return Opaque()

    @broker.task
    async def fine() -> int:
        return 5

    await broker.startup()
    result = await (await odd.kiq()).wait_result(timeout=5)
    assert result.is_err
    assert isinstance(result.error, ResultNotSerializableError)
    assert "Opaque" in str(result.error)
    assert (await (await fine.kiq()).wait_result(timeout=5)).return_value == 5


async def test_a_result_stored_without_the_backend_is_still_readable(
    storage: BaseStorageAdapter,
) -> None:
    # StorageMiddleware alone writes JSON records; the backend can answer from them.
    broker = InMemoryBroker(await_inplace=True)
    broker.add_middlewares(StorageMiddleware(storage))

    @broker.task
    async def three() -> int:
        return 3

    await broker.startup()
    task = await three.kiq()
    await task.wait_result(timeout=5)
    result: TaskiqResult[Any] = await StorageResultBackend(storage).get_result(task.task_id)
    assert result.return_value == 3
    await broker.shutdown()


async def test_progress_during_a_storage_outage_never_fails_the_task(tmp_path: Path) -> None:
    # The storage's directory does not exist yet: every write fails. Reporting progress
    # must not turn the task's own result into an error; the update is dropped, counted.
    directory = tmp_path / "later"
    backend = StorageResultBackend(SQLiteStorageAdapter(str(directory / "store.sqlite3")))
    broker = InMemoryBroker(await_inplace=True).with_result_backend(backend)

    @broker.task
    async def reports(progress: ProgressTracker[Any] = TaskiqDepends()) -> str:
        await progress.set_progress(TaskState.STARTED, {"done": 1})
        return "finished"

    await broker.startup()
    try:
        task = await reports.kiq()
        assert backend.progress_dropped == 1
        assert backend.writer.buffered == 1  # the result waits for the storage
        directory.mkdir()
        assert await backend.writer.flush()
        result = await task.wait_result(timeout=5)
        assert not result.is_err
        assert result.return_value == "finished"
    finally:
        await broker.shutdown()
