"""StorageScheduleSource: one contract over the in-memory, SQLite and Redis adapters,
with schedules made by taskiq's own kicker and sent by taskiq's own scheduler."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import sqlite3
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from taskiq import InMemoryBroker, ScheduledTask, TaskiqScheduler

from taskiq_flow import middlewares
from taskiq_flow.middlewares import (
    MiddlewareConfigError,
    MiddlewareConfigTypeError,
    StorageScheduleSource,
)
from taskiq_flow.storage import (
    BaseStorageAdapter,
    InMemoryStorageAdapter,
    SQLiteStorageAdapter,
    StorageError,
)
from taskiq_flow_testing import RedisServer, redis_url_or_skip

BACKENDS = ["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)]


@dataclasses.dataclass
class Store:
    backend: str
    adapter: BaseStorageAdapter
    location: str


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    adapter: BaseStorageAdapter
    if request.param == "memory":
        location = ""
        adapter = InMemoryStorageAdapter()
    elif request.param == "sqlite":
        location = str(tmp_path / "store.sqlite3")
        adapter = SQLiteStorageAdapter(location)
    else:
        from taskiq_flow.storage.redis import RedisStorageAdapter

        location = request.getfixturevalue("redis_url")
        adapter = RedisStorageAdapter(location)
    yield Store(request.param, adapter, location)
    await adapter.close()


@pytest.fixture
def storage(store: Store) -> BaseStorageAdapter:
    return store.adapter


@pytest.fixture
def source(storage: BaseStorageAdapter) -> StorageScheduleSource:
    return StorageScheduleSource(storage)


@pytest.fixture
async def broker() -> AsyncIterator[InMemoryBroker]:
    broker = InMemoryBroker(await_inplace=True)
    yield broker
    await broker.shutdown()


def _task(**fields: object) -> ScheduledTask:
    base: dict[str, object] = {"task_name": "app:job", "labels": {}, "args": [], "kwargs": {}}
    return ScheduledTask.model_validate({**base, **fields})


async def _write_raw(store: Store, key: str, data: bytes) -> None:
    """Bytes no adapter wrote, under ``key`` (undecodable for every reader)."""
    if store.backend == "redis":
        client = aioredis.from_url(store.location)
        try:
            await client.set("taskiq_flow:" + key, data)
        finally:
            await client.aclose()
    elif store.backend == "sqlite":
        await store.adapter.set(key, "placeholder")  # the table exists, the row too
        conn = sqlite3.connect(store.location)
        try:
            with conn:
                conn.execute("UPDATE taskiq_flow_storage SET value = ? WHERE key = ?", (data, key))
        finally:
            conn.close()
    else:
        raise AssertionError(f"no raw access to {store.backend}")


# -- add / get / delete ------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"cron": "*/5 * * * *"},
        {"cron": "0 9 * * 1-5", "cron_offset": "Europe/Paris"},
        {"cron": "0 9 * * *", "cron_offset": timedelta(hours=2)},
        {"interval": 30},
        {"interval": timedelta(minutes=2)},
        {"time": datetime(2031, 5, 4, 3, 2, 1, tzinfo=UTC)},
        {"time": datetime(2031, 5, 4, 3, 2, 1)},  # naive: taskiq reads it as UTC
    ],
    ids=["cron", "cron-tz", "cron-offset", "interval", "interval-td", "time", "time-naive"],
)
async def test_every_kind_of_schedule_round_trips(
    source: StorageScheduleSource, storage: BaseStorageAdapter, fields: dict[str, object]
) -> None:
    schedule = _task(
        schedule_id="s1",
        args=[1, "two", [3]],
        kwargs={"x": {"y": None}},
        labels={"priority": 5},
        task_id="fixed-id",
        **fields,
    )
    await source.add_schedule(schedule)
    assert await source.get_schedules() == [schedule]


async def test_the_stored_value_is_the_pydantic_json_dump_without_ttl(
    source: StorageScheduleSource, storage: BaseStorageAdapter
) -> None:
    schedule = _task(schedule_id="abc", interval=timedelta(seconds=90), args=[1])
    await source.add_schedule(schedule)
    entry = await storage.get_entry("schedule:abc")
    assert entry is not None
    assert entry.value == schedule.model_dump(mode="json")
    assert entry.expires_at is None
    assert source.schedule_key("abc") == "schedule:abc"


async def test_add_replaces_and_delete_removes(
    source: StorageScheduleSource, storage: BaseStorageAdapter
) -> None:
    await source.add_schedule(_task(schedule_id="a", cron="* * * * *"))
    await source.add_schedule(_task(schedule_id="b", interval=5))
    await source.add_schedule(_task(schedule_id="a", cron="0 * * * *"))
    got = {s.schedule_id: s for s in await source.get_schedules()}
    assert set(got) == {"a", "b"}
    assert got["a"].cron == "0 * * * *"

    await source.delete_schedule("a")
    await source.delete_schedule("never-there")
    assert [s.schedule_id for s in await source.get_schedules()] == ["b"]
    assert not await storage.exists("schedule:a")


async def test_only_keys_under_the_prefix_are_read_glob_characters_included(
    storage: BaseStorageAdapter,
) -> None:
    odd = StorageScheduleSource(storage, prefix="s?[1]*\\:")
    plain = StorageScheduleSource(storage)
    await odd.add_schedule(_task(schedule_id="mine", interval=5))
    await plain.add_schedule(_task(schedule_id="other", interval=5))
    # Keys the prefix would match if it were used as a glob unescaped.
    await storage.set("sX1Z\\:nope", _task(schedule_id="nope", interval=5).model_dump(mode="json"))
    await storage.set("task:1", {"not": "a schedule"})
    assert [s.schedule_id for s in await odd.get_schedules()] == ["mine"]
    assert [s.schedule_id for s in await plain.get_schedules()] == ["other"]
    assert await storage.exists("s?[1]*\\:mine")


async def test_many_schedules_are_read_in_batches(source: StorageScheduleSource) -> None:
    ids = {f"s{i:03}" for i in range(250)}
    for schedule_id in ids:
        await source.add_schedule(_task(schedule_id=schedule_id, interval=60))
    assert {s.schedule_id for s in await source.get_schedules()} == ids


# -- taskiq's kicker and scheduler -------------------------------------------------------


async def test_kicker_schedules_through_a_real_broker(
    source: StorageScheduleSource, broker: InMemoryBroker
) -> None:
    runs: list[tuple[int, int]] = []

    @broker.task(task_name="tests:add")
    async def add(x: int, y: int) -> int:
        runs.append((x, y))
        return x + y

    await broker.startup()
    by_cron = (
        await add.kicker().with_labels(team="ops").schedule_by_cron(source, "*/2 * * * *", 1, 2)
    )
    by_interval = await (
        add.kicker().with_schedule_id("every-5").schedule_by_interval(source, 5, x=3, y=4)
    )
    at = datetime.now(UTC) + timedelta(hours=1)
    by_time = await add.kicker().schedule_by_time(source, at, 5, 6)

    got = {s.schedule_id: s for s in await source.get_schedules()}
    assert set(got) == {by_cron.schedule_id, "every-5", by_time.schedule_id}
    assert got[by_cron.schedule_id].cron == "*/2 * * * *"
    assert got[by_cron.schedule_id].labels["team"] == "ops"
    assert got[by_cron.schedule_id].task_name == "tests:add"
    assert got[by_cron.schedule_id].args == [1, 2]
    assert got["every-5"].kwargs == {"x": 3, "y": 4}
    assert got["every-5"].interval == 5
    assert got[by_time.schedule_id].time == at

    # What taskiq's scheduler loop does when a schedule is due.
    scheduler = TaskiqScheduler(broker, sources=[source])
    for schedule in got.values():
        await scheduler.on_ready(source, schedule)
    assert sorted(runs) == [(1, 2), (3, 4), (5, 6)]

    # The one-off schedule is gone once sent; the recurring ones stay.
    assert {s.schedule_id for s in await source.get_schedules()} == {
        by_cron.schedule_id,
        "every-5",
    }
    await by_interval.unschedule()
    assert [s.schedule_id for s in await source.get_schedules()] == [by_cron.schedule_id]


async def test_a_schedule_deleted_since_the_last_read_is_not_sent(
    source: StorageScheduleSource, broker: InMemoryBroker, storage: BaseStorageAdapter
) -> None:
    runs: list[int] = []

    @broker.task(task_name="tests:tick")
    async def tick() -> None:
        runs.append(1)

    await broker.startup()
    await tick.kicker().with_schedule_id("t").schedule_by_interval(source, 1)
    [schedule] = await source.get_schedules()
    # Deleted by another process (through the same store).
    await StorageScheduleSource(storage).delete_schedule("t")
    await TaskiqScheduler(broker, sources=[source]).on_ready(source, schedule)
    assert runs == []


async def test_post_send_deletes_only_time_schedules(
    source: StorageScheduleSource, storage: BaseStorageAdapter
) -> None:
    once = _task(schedule_id="once", time=datetime.now(UTC))
    every = _task(schedule_id="every", interval=1)
    daily = _task(schedule_id="daily", cron="0 0 * * *")
    for schedule in (once, every, daily):
        await source.add_schedule(schedule)
    for schedule in (once, every, daily):
        await source.post_send(schedule)
    assert not await storage.exists("schedule:once")
    assert {s.schedule_id for s in await source.get_schedules()} == {"every", "daily"}


# -- what must not stop the scheduler ----------------------------------------------------


async def test_an_invalid_stored_schedule_is_skipped_with_a_warning(
    source: StorageScheduleSource, storage: BaseStorageAdapter, caplog: pytest.LogCaptureFixture
) -> None:
    await source.add_schedule(_task(schedule_id="good", interval=5))
    await storage.set("schedule:no-fields", {"task_name": "x"})
    await storage.set(
        "schedule:no-kind", {"task_name": "x", "labels": {}, "args": [], "kwargs": {}}
    )
    await storage.set("schedule:text", "garbage")
    await storage.set(
        "schedule:bad-interval", _task(interval=5).model_dump(mode="json") | {"interval": 0}
    )
    with caplog.at_level(logging.WARNING, logger="taskiq_flow.middlewares"):
        schedules = await source.get_schedules()
    assert [s.schedule_id for s in schedules] == ["good"]
    warned = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    for key in ("schedule:no-fields", "schedule:no-kind", "schedule:text", "schedule:bad-interval"):
        assert key in warned
    assert "labels: Field required" in warned
    assert all("\n" not in r.getMessage() for r in caplog.records)

    # Warned once, not at every read of the scheduler loop; again once it changes.
    caplog.clear()
    await storage.set("schedule:text", {"task_name": "x"})
    with caplog.at_level(logging.WARNING, logger="taskiq_flow.middlewares"):
        assert [s.schedule_id for s in await source.get_schedules()] == ["good"]
    [record] = caplog.records
    assert "schedule:text" in record.getMessage()


@pytest.mark.parametrize(
    "store", ["sqlite", pytest.param("redis", marks=pytest.mark.redis)], indirect=True
)
async def test_undecodable_bytes_are_skipped_and_the_batch_still_read(
    source: StorageScheduleSource, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    ids = {f"s{i:03}" for i in range(120)}  # more than one batch
    for schedule_id in ids:
        await source.add_schedule(_task(schedule_id=schedule_id, interval=60))
    await _write_raw(store, "schedule:s050x", b"\xc1 not msgpack")
    with caplog.at_level(logging.WARNING, logger="taskiq_flow.middlewares"):
        schedules = await source.get_schedules()
    assert {s.schedule_id for s in schedules} == ids
    assert any("schedule:s050x" in r.getMessage() for r in caplog.records)


async def test_the_key_names_the_schedule(
    source: StorageScheduleSource, storage: BaseStorageAdapter, caplog: pytest.LogCaptureFixture
) -> None:
    """A value whose schedule_id differs from its key is served under the key's id, so
    post_send and delete_schedule remove the right key."""
    await storage.set(
        "schedule:k", _task(schedule_id="other", time=datetime.now(UTC)).model_dump(mode="json")
    )
    with caplog.at_level(logging.WARNING, logger="taskiq_flow.middlewares"):
        [schedule] = await source.get_schedules()
    assert schedule.schedule_id == "k"
    assert "schedule:k" in caplog.text
    await source.post_send(schedule)
    assert await source.get_schedules() == []


async def test_shutdown_closes_the_storage_and_it_reconnects(
    source: StorageScheduleSource,
) -> None:
    await source.add_schedule(_task(schedule_id="a", interval=5))
    await source.startup()
    await source.shutdown()
    await source.shutdown()
    assert [s.schedule_id for s in await source.get_schedules()] == ["a"]


@pytest.fixture
def durable_redis() -> Iterator[RedisServer]:
    """A private server that keeps its data across a crash (append-only file, fsync always)."""
    if shutil.which("redis-server") is None:
        redis_url_or_skip("no redis-server on PATH (needed for a server the test owns)")
    with RedisServer(extra_args=["--appendonly", "yes", "--appendfsync", "always"]) as server:
        yield server


@pytest.mark.redis
async def test_a_storage_outage_keeps_the_last_schedules(
    durable_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    from taskiq_flow.storage.redis import RedisStorageAdapter

    storage = RedisStorageAdapter(durable_redis.url, connect_timeout=0.5, socket_timeout=0.5)
    source = StorageScheduleSource(storage)
    never_read = StorageScheduleSource(storage)
    try:
        every = _task(schedule_id="every", interval=5)
        once = _task(schedule_id="once", time=datetime.now(UTC))
        again = _task(schedule_id="again", time=datetime.now(UTC))
        for schedule in (every, once, again):
            await source.add_schedule(schedule)
        assert len(await source.get_schedules()) == 3

        durable_redis.kill()
        with caplog.at_level(logging.WARNING, logger="taskiq_flow.middlewares"):
            # Sent during the outage: the deletion waits, the schedule is not served again.
            await source.post_send(once)
            await source.post_send(again)
            assert await source.get_schedules() == [every]
            # Nothing is cancelled because the storage cannot be asked.
            await source.pre_send(every)
        assert "cannot read schedules" in caplog.text
        assert "schedule:once" in caplog.text
        with pytest.raises(StorageError):
            await never_read.get_schedules()
        with pytest.raises(StorageError):
            await source.add_schedule(_task(schedule_id="new", interval=5))

        durable_redis.start()
        assert await storage.exists("schedule:once")  # kept by the server across the crash
        # Scheduled anew under the id of a sent one-off: not the pending deletion's to take.
        again_later = _task(schedule_id="again", time=datetime.now(UTC) + timedelta(hours=1))
        await source.add_schedule(again_later)
        assert sorted(await source.get_schedules(), key=lambda s: s.schedule_id) == [
            again_later,
            every,
        ]
        assert not await storage.exists("schedule:once")  # the pending deletion happened
    finally:
        await storage.close()


# -- arguments and exports ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        ((None,), {}, MiddlewareConfigError),
        (("redis://localhost:6379",), {}, MiddlewareConfigTypeError),
        ((object(),), {}, MiddlewareConfigTypeError),
        ((InMemoryStorageAdapter(),), {"prefix": ""}, MiddlewareConfigError),
        ((InMemoryStorageAdapter(),), {"prefix": None}, MiddlewareConfigTypeError),
        ((InMemoryStorageAdapter(),), {"prefix": b"schedule:"}, MiddlewareConfigTypeError),
        ((InMemoryStorageAdapter(),), {"prefix": "\ud800"}, MiddlewareConfigError),
    ],
    ids=["none", "url", "object", "empty-prefix", "none-prefix", "bytes-prefix", "surrogate"],
)
def test_bad_arguments_are_refused(
    args: tuple[object, ...], kwargs: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error) as info:
        StorageScheduleSource(*args, **kwargs)  # type: ignore[arg-type]
    assert isinstance(info.value, MiddlewareConfigError)


def test_exported_from_the_middlewares_package() -> None:
    # The meta package's re-export is checked in packages/taskiq-flow/tests (this
    # package's tests also run without the meta package installed).
    assert middlewares.StorageScheduleSource is StorageScheduleSource
    assert "StorageScheduleSource" in middlewares.__all__


def test_repr_names_the_storage_and_prefix() -> None:
    source = StorageScheduleSource(InMemoryStorageAdapter(), prefix="cron:")
    assert "prefix='cron:'" in repr(source)
