"""`taskiq-flow tasks` and `taskiq-flow schedules` over a SQLite store real tasks wrote.

Tasks run through a real InMemoryBroker with StorageMiddleware, StorageResultBackend
and PipelineMiddleware on one SQLite file; the CLI then reads that file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from taskiq import InMemoryBroker, ScheduledTask

from taskiq_flow.config import TaskiqFlowConfig
from taskiq_flow.factory.cli import EXIT_BACKEND_ERROR, EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE, main
from taskiq_flow.middlewares import (
    DataflowPipeline,
    PipelineMiddleware,
    StorageMiddleware,
    StorageResultBackend,
    pipeline_task,
)
from taskiq_flow.storage import SQLiteStorageAdapter


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for item in TaskiqFlowConfig.settings():
        monkeypatch.delenv(item["env_var"], raising=False)
    monkeypatch.chdir(tmp_path)


def cli(capsys: pytest.CaptureFixture[str], db: Path, *argv: str) -> tuple[int, str, str]:
    code = main([*argv, "--sqlite-path", str(db)], environ={})
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def cli_json(capsys: pytest.CaptureFixture[str], db: Path, *argv: str) -> tuple[int, Any, str]:
    code, out, err = cli(capsys, db, *argv, "--json")
    return code, json.loads(out) if out.strip() else None, err


class Workload:
    """What `_run_workload` sent, in order: the ids the CLI must list."""

    def __init__(self) -> None:
        self.adds: list[str] = []  # add(i, 100) for i in 0..4, oldest first
        self.failed = ""  # fail("bad input"), after the adds
        self.pipeline_id = ""
        self.steps: dict[str, str] = {}  # node -> task id (with the result backend)
        self.bare_step = ""  # a pipeline step recorded by StorageMiddleware alone


async def _run_workload(db: Path) -> Workload:
    done = Workload()
    storage = SQLiteStorageAdapter(db)
    broker = InMemoryBroker(await_inplace=True).with_result_backend(StorageResultBackend(storage))
    broker.add_middlewares(StorageMiddleware(storage), PipelineMiddleware(storage))

    @broker.task(task_name="app.add")
    async def add(a: int, b: int) -> int:
        return a + b

    @broker.task(task_name="app.fail")
    async def fail(text: str) -> None:
        raise ValueError(text)

    @broker.task(task_name="app.split")
    @pipeline_task(output="words")
    async def split(text: str) -> list[str]:
        return text.split()

    @broker.task(task_name="app.count")
    @pipeline_task(output="count")
    async def count(words: list[str]) -> int:
        return len(words)

    await broker.startup()
    try:
        for i in range(5):
            task = await add.kiq(i, 100)
            assert (await task.wait_result(timeout=5)).return_value == i + 100
            done.adds.append(task.task_id)
            await asyncio.sleep(0.002)  # distinct finished_at: the order is checkable
        task = await fail.kiq("bad input")
        assert (await task.wait_result(timeout=5)).is_err
        done.failed = task.task_id
        await asyncio.sleep(0.002)
        run = await DataflowPipeline.from_tasks(broker, [split, count]).kiq(text="a b c")
        assert (await run.wait_result(timeout=5)).return_value["count"] == 3
        done.pipeline_id, done.steps = run.pipeline_id, dict(run.task_ids)
    finally:
        await broker.shutdown()

    # A second app on the same store, without the result backend: its pipeline step
    # record has no task:{id} reference.
    bare = InMemoryBroker(await_inplace=True)
    bare.add_middlewares(StorageMiddleware(storage), PipelineMiddleware(storage))

    @bare.task(task_name="app.shout")
    @pipeline_task(output="loud")
    async def shout(text: str) -> str:
        return text.upper()

    await bare.startup()
    try:
        run = await DataflowPipeline.from_tasks(bare, [shout]).kiq(text="hi")
        assert (await run.wait_result(timeout=5)).return_value == {"loud": "HI"}
        done.bare_step = run.task_ids["shout"]
    finally:
        await bare.shutdown()
    return done


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, Workload]:
    db = tmp_path / "store.sqlite3"
    return db, asyncio.run(_run_workload(db))


def _put(db: Path, items: dict[str, Any]) -> None:
    async def put() -> None:
        async with SQLiteStorageAdapter(db) as storage:
            await storage.set_many(items)

    asyncio.run(put())


def _corrupt(db: Path, key: str) -> None:
    """Store bytes under ``key`` that are not msgpack, as a damaged file would hold."""
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(
            "INSERT INTO taskiq_flow_storage (key, value, created_at) VALUES (?, ?, ?)",
            (key, b"\xc1", time.time()),
        )


# -- tasks --------------------------------------------------------------------------


def test_lists_every_record_once_newest_first(
    capsys: pytest.CaptureFixture[str], store: tuple[Path, Workload]
) -> None:
    db, done = store
    code, data, err = cli_json(capsys, db, "tasks")
    assert (code, err) == (EXIT_OK, "")
    ids = [item["task_id"] for item in data["tasks"]]
    # 5 adds, 1 failure, 2 pipeline steps (each once, though task:{id} refers to it),
    # 1 step without a reference.
    assert len(ids) == len(set(ids)) == 9
    assert (data["count"], data["matched"], data["truncated"]) == (9, 9, False)
    assert ids[0] == done.bare_step
    assert ids[3] == done.failed
    assert ids[4:] == done.adds[::-1]
    assert set(ids[1:3]) == set(done.steps.values())
    moments = [item["finished_at"] for item in data["tasks"]]
    assert moments == sorted(moments, reverse=True)
    steps = {item["task_id"]: item for item in data["tasks"] if item["pipeline_id"]}
    assert {item["key"] for item in steps.values()} == {
        f"pipeline:{done.pipeline_id}:task:{tid}" for tid in done.steps.values()
    } | {f"pipeline:{steps[done.bare_step]['pipeline_id']}:task:{done.bare_step}"}
    first_add = data["tasks"][-1]
    assert first_add["key"] == f"task:{done.adds[0]}"
    assert (first_add["status"], first_add["task_name"], first_add["is_err"]) == (
        "ok",
        "app.add",
        False,
    )
    assert "result" not in first_add  # msgpack bytes: `tasks show` decodes them
    assert data["filters"] == {"task": None, "status": None, "since": None}
    assert data["limit"] == 20


def test_human_output_is_aligned_columns(
    capsys: pytest.CaptureFixture[str], store: tuple[Path, Workload]
) -> None:
    db, done = store
    code, out, _ = cli(capsys, db, "tasks")
    assert code == EXIT_OK
    lines = out.splitlines()
    header = lines[0]
    assert header.split() == [
        "TASK",
        "ID",
        "TASK",
        "NAME",
        "STATUS",
        "FINISHED",
        "AT",
        "(UTC)",
        "TIME",
    ]
    assert len(lines) == 10
    starts = [header.index(title) for title in ("TASK NAME", "STATUS", "FINISHED AT", "TIME")]
    for line in lines[1:]:
        for start in starts:
            assert line[start - 2 : start] == "  "
            assert line[start] != " "
    failed = next(line for line in lines if line.startswith(done.failed))
    assert failed.split()[1:3] == ["app.fail", "error"]
    assert failed.rstrip().endswith("ms")
    assert lines[-1].startswith(done.adds[0])


def test_filters_by_name_status_and_limit(
    capsys: pytest.CaptureFixture[str], store: tuple[Path, Workload]
) -> None:
    db, done = store
    code, data, _ = cli_json(capsys, db, "tasks", "--task", "app.add")
    assert code == EXIT_OK
    assert [item["task_id"] for item in data["tasks"]] == done.adds[::-1]
    code, data, _ = cli_json(capsys, db, "tasks", "--task", "app.[sc]*")
    assert {item["task_name"] for item in data["tasks"]} == {"app.split", "app.count", "app.shout"}
    code, data, _ = cli_json(capsys, db, "tasks", "--status", "error")
    assert [item["task_id"] for item in data["tasks"]] == [done.failed]
    assert data["tasks"][0]["error"] == {"type": "builtins.ValueError", "message": "bad input"}
    code, data, _ = cli_json(capsys, db, "tasks", "--status", "ok", "--task", "app.fail")
    assert (code, data["tasks"], data["matched"]) == (EXIT_NOT_FOUND, [], 0)

    code, data, _ = cli_json(capsys, db, "tasks", "--task", "app.add", "--limit", "2")
    assert code == EXIT_OK
    assert [item["task_id"] for item in data["tasks"]] == done.adds[:-3:-1]
    assert (data["count"], data["matched"], data["truncated"]) == (2, 5, True)
    code, out, err = cli(capsys, db, "tasks", "--task", "app.add", "--limit", "2")
    assert len(out.splitlines()) == 3
    assert "3 older matched" in err

    code, out, err = cli(capsys, db, "tasks", "--task", "nothing.*")
    assert (code, out) == (EXIT_NOT_FOUND, "")
    assert "no task record matched" in err


def test_since_keeps_recent_records(
    capsys: pytest.CaptureFixture[str], store: tuple[Path, Workload]
) -> None:
    db, done = store

    async def backdate() -> None:
        # Two records as if their tasks had finished 2 hours and 3 days ago.
        async with SQLiteStorageAdapter(db) as storage:
            for task_id, age in (
                (done.adds[0], timedelta(hours=2)),
                (done.failed, timedelta(days=3)),
            ):
                record = await storage.get(f"task:{task_id}")
                record["finished_at"] = (datetime.now(UTC) - age).isoformat()
                await storage.set(f"task:{task_id}", record)

    asyncio.run(backdate())
    code, data, _ = cli_json(capsys, db, "tasks", "--since", "1h")
    assert code == EXIT_OK
    ids = [item["task_id"] for item in data["tasks"]]
    assert len(ids) == 7
    assert done.adds[0] not in ids
    assert done.failed not in ids
    assert data["filters"]["since"] == 3600
    code, data, _ = cli_json(capsys, db, "tasks", "--since", "2h30m")
    assert len(data["tasks"]) == 8
    assert data["tasks"][-1]["task_id"] == done.adds[0]  # now the oldest
    code, data, _ = cli_json(capsys, db, "tasks", "--since", "4d")
    assert data["tasks"][-1]["task_id"] == done.failed
    code, data, _ = cli_json(capsys, db, "tasks", "--since", "90", "--status", "error")
    assert (code, data["tasks"]) == (EXIT_NOT_FOUND, [])


@pytest.mark.parametrize("bad", ["10x", "ten minutes", "0", "-5m", "m", "1h 30m", "inf"])
def test_bad_since_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, bad: str
) -> None:
    code, out, err = cli(capsys, tmp_path / "x.db", "tasks", f"--since={bad}")
    assert (code, out) == (EXIT_USAGE, "")
    assert "--since" in err
    assert "30s, 10m, 2h, 1d" in err


def test_corrupt_and_foreign_entries_warn_or_are_skipped(
    capsys: pytest.CaptureFixture[str], store: tuple[Path, Workload]
) -> None:
    db, done = store
    _put(
        db,
        {
            "task:not-a-record": "hello",  # some other app's value: skipped silently
            "task:no-finish": {"task_id": "no-finish", "is_err": False, "finished_at": "soon"},
        },
    )
    _corrupt(db, "task:broken")
    _corrupt(db, f"pipeline:{done.pipeline_id}:task:broken-step")
    code, data, err = cli_json(capsys, db, "tasks")
    assert code == EXIT_OK
    assert len(data["tasks"]) == 9
    warnings = err.splitlines()
    assert len(warnings) == 3, err
    assert all(line.startswith("taskiq-flow: warning: skipping ") for line in warnings)
    assert "task:broken: corrupt entry" in err
    assert f"pipeline:{done.pipeline_id}:task:broken-step: corrupt entry" in err
    assert "task:no-finish: a task record without a valid finished_at" in err
    assert "not-a-record" not in err


def test_show_an_ok_result(
    capsys: pytest.CaptureFixture[str], store: tuple[Path, Workload]
) -> None:
    db, done = store
    code, data, _ = cli_json(capsys, db, "tasks", "show", done.adds[2])
    assert code == EXIT_OK
    assert data["key"] == f"task:{done.adds[2]}"
    assert data["status"] == "ok"
    record = data["record"]
    assert (record["task_id"], record["task_name"], record["args"]) == (
        done.adds[2],
        "app.add",
        "[2,100]",
    )
    assert {"started_at", "finished_at", "execution_time", "worker", "labels"} <= set(record)
    assert "result" not in record
    assert data["result"] == {
        "source": "result",
        "is_err": False,
        "return_value": 102,
        "error": None,
    }
    assert data["problem"] is None

    code, out, err = cli(capsys, db, "tasks", "show", done.adds[2])
    assert (code, err) == (EXIT_OK, "")
    fields = {line[:16].strip(): line[16:] for line in out.splitlines()}
    assert fields["task_name"] == "app.add"
    assert fields["status"] == "ok"
    assert fields["result"] == "102"
    assert fields["result from"].startswith("StorageResultBackend")


def test_show_an_error_result(
    capsys: pytest.CaptureFixture[str], store: tuple[Path, Workload]
) -> None:
    db, done = store
    code, data, _ = cli_json(capsys, db, "tasks", "show", done.failed)
    assert code == EXIT_OK
    assert data["status"] == "error"
    assert data["record"]["error"] == {"type": "builtins.ValueError", "message": "bad input"}
    assert data["result"] == {
        "source": "result",
        "is_err": True,
        "return_value": None,
        "error": {"type": "builtins.ValueError", "message": "bad input"},
    }
    code, out, _ = cli(capsys, db, "tasks", "show", done.failed)
    assert code == EXIT_OK
    assert "result          error builtins.ValueError: bad input\n" in out


class Unimportable(Exception):
    pass


Unimportable.__module__ = "a_module_nobody_imported"


def test_show_an_error_whose_class_the_cli_cannot_import(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    db = tmp_path / "exotic.db"

    async def scenario() -> str:
        storage = SQLiteStorageAdapter(db)
        broker = InMemoryBroker(await_inplace=True).with_result_backend(
            StorageResultBackend(storage)
        )
        broker.add_middlewares(StorageMiddleware(storage))

        @broker.task(task_name="app.exotic")
        async def exotic() -> None:
            raise Unimportable("from nowhere")

        await broker.startup()
        try:
            task = await exotic.kiq()
            assert (await task.wait_result(timeout=5)).is_err
        finally:
            await broker.shutdown()
        return task.task_id

    task_id = asyncio.run(scenario())
    code, data, _ = cli_json(capsys, db, "tasks", "show", task_id)
    assert code == EXIT_OK
    expected = {"type": "a_module_nobody_imported.Unimportable", "message": "from nowhere"}
    assert data["result"]["error"] == expected
    assert data["record"]["error"] == expected


def test_show_pipeline_steps_with_and_without_a_reference(
    capsys: pytest.CaptureFixture[str], store: tuple[Path, Workload]
) -> None:
    db, done = store
    step = done.steps["split"]
    code, data, _ = cli_json(capsys, db, "tasks", "show", step)
    assert code == EXIT_OK
    assert data["key"] == f"pipeline:{done.pipeline_id}:task:{step}"
    assert data["result"]["source"] == "result"
    assert data["result"]["return_value"] == ["a", "b", "c"]
    # Recorded by StorageMiddleware alone: found by its key, the result from its JSON.
    code, data, _ = cli_json(capsys, db, "tasks", "show", done.bare_step)
    assert code == EXIT_OK
    assert data["key"].endswith(f":task:{done.bare_step}")
    assert data["result"] == {
        "source": "record",
        "is_err": False,
        "return_value": "HI",
        "error": None,
    }


def test_show_unknown_or_corrupt(
    capsys: pytest.CaptureFixture[str], store: tuple[Path, Workload]
) -> None:
    db, done = store
    code, out, err = cli(capsys, db, "tasks", "show", "no-such-id")
    assert (code, out) == (EXIT_NOT_FOUND, "")
    assert "no-such-id" in err
    _put(db, {"task:junk": [1, 2, 3]})
    assert cli(capsys, db, "tasks", "show", "junk")[0] == EXIT_NOT_FOUND
    assert cli(capsys, db, "tasks", "show")[0] == EXIT_USAGE

    # A record whose stored result is damaged: the record is shown, the problem said.
    async def damage() -> None:
        async with SQLiteStorageAdapter(db) as storage:
            record = await storage.get(f"task:{done.adds[1]}")
            record["result"] = b"\xc1 not msgpack"
            await storage.set(f"task:{done.adds[1]}", record)

    asyncio.run(damage())
    code, data, err = cli_json(capsys, db, "tasks", "show", done.adds[1])
    assert code == EXIT_BACKEND_ERROR
    assert data["record"]["task_id"] == done.adds[1]
    assert data["result"] is None
    assert "cannot be decoded" in data["problem"]
    assert "cannot be decoded" in err

    _corrupt(db, "task:rotten")
    code, _, err = cli(capsys, db, "tasks", "show", "rotten")
    assert code == EXIT_BACKEND_ERROR
    assert "task:rotten" in err


def test_tasks_needs_an_existing_store(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = cli(capsys, tmp_path / "missing.db", "tasks")
    assert code == EXIT_NOT_FOUND
    assert "no store" in err
    assert not (tmp_path / "missing.db").exists()
    code = main(["schedules"], environ={"TASKIQ_FLOW_STORAGE_TYPE": "inmemory"})
    assert code == EXIT_USAGE


# -- schedules ----------------------------------------------------------------------


def _schedules() -> list[ScheduledTask]:
    return [
        ScheduledTask(
            schedule_id="a-nightly",
            task_name="app.report",
            labels={},
            args=[],
            kwargs={"kind": "daily"},
            cron="0 3 * * *",
        ),
        ScheduledTask(
            schedule_id="b-poll",
            task_name="app.poll",
            labels={"queue": "fast"},
            args=["https://example.org", 3],
            kwargs={},
            interval=300,
        ),
        ScheduledTask(
            schedule_id="c-once",
            task_name="app.launch",
            labels={},
            args=["x" * 100],
            kwargs={},
            time=datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC),
        ),
    ]


def test_schedules_listing(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    # The fixed format of StorageScheduleSource: schedule:{id} -> model_dump(mode="json").
    written = {f"schedule:{s.schedule_id}": s.model_dump(mode="json") for s in _schedules()}
    _put(db, {**written, "task:other": {"ref": "x"}, "schedules-meta": 1})
    code, data, err = cli_json(capsys, db, "schedules")
    assert (code, err) == (EXIT_OK, "")
    assert data["prefix"] == "schedule:"
    assert data["count"] == 3
    assert [item["schedule_id"] for item in data["schedules"]] == ["a-nightly", "b-poll", "c-once"]
    assert [item["when"] for item in data["schedules"]] == [
        "cron 0 3 * * *",
        "every 300 s",
        "at 2030-01-02T03:04:05+00:00",
    ]
    for item in data["schedules"]:
        key = item.pop("key")
        item.pop("when")
        assert written[key] == item
        assert ScheduledTask.model_validate(item).schedule_id == key.removeprefix("schedule:")

    code, out, _ = cli(capsys, db, "schedules")
    assert code == EXIT_OK
    lines = out.splitlines()
    assert lines[0].split() == ["SCHEDULE", "ID", "TASK", "NAME", "WHEN", "ARGUMENTS"]
    assert lines[1].split()[:2] == ["a-nightly", "app.report"]
    assert lines[1].endswith('kind="daily"')
    assert lines[2].endswith('"https://example.org", 3')
    assert lines[3].endswith("...")
    assert len(lines[3].split("  ")[-1]) <= 60
    when = lines[0].index("WHEN")
    assert lines[2][when:].startswith("every 300 s")


def test_schedules_invalid_entries_warn(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    good = _schedules()[0]
    _put(
        db,
        {
            f"app:schedule:{good.schedule_id}": good.model_dump(mode="json"),
            "app:schedule:no-when": {"task_name": "t", "labels": {}, "args": [], "kwargs": {}},
            "app:schedule:text": "not a schedule",
        },
    )
    _corrupt(db, "app:schedule:broken")
    code, data, err = cli_json(capsys, db, "schedules", "--prefix", "app:schedule:")
    assert code == EXIT_OK
    assert [item["schedule_id"] for item in data["schedules"]] == [good.schedule_id]
    assert len(err.splitlines()) == 3, err
    assert "app:schedule:no-when: not a ScheduledTask" in err
    assert "app:schedule:text: not a ScheduledTask" in err
    assert "app:schedule:broken: corrupt entry" in err

    code, data, err = cli_json(capsys, db, "schedules")  # the default prefix: none there
    assert (code, data["schedules"], err) == (EXIT_NOT_FOUND, [], "")
    code, out, err = cli(capsys, db, "schedules")
    assert (code, out) == (EXIT_NOT_FOUND, "")
    assert "no schedule under 'schedule:'" in err


def test_prefix_is_literal_not_a_glob(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    good = _schedules()[1]
    _put(
        db,
        {
            f"s*:{good.schedule_id}": good.model_dump(mode="json"),
            f"sx:{good.schedule_id}": good.model_dump(mode="json"),
        },
    )
    code, data, _ = cli_json(capsys, db, "schedules", "--prefix", "s*:")
    assert code == EXIT_OK
    assert [item["key"] for item in data["schedules"]] == [f"s*:{good.schedule_id}"]


# -- the same on Redis, and help ------------------------------------------------------


def test_tasks_and_schedules_on_redis(capsys: pytest.CaptureFixture[str], redis_url: str) -> None:
    import redis

    from taskiq_flow.storage import RedisStorageAdapter

    async def scenario() -> list[str]:
        storage = RedisStorageAdapter(redis_url)
        broker = InMemoryBroker(await_inplace=True).with_result_backend(
            StorageResultBackend(storage)
        )
        broker.add_middlewares(StorageMiddleware(storage), PipelineMiddleware(storage))

        @broker.task(task_name="app.square")
        async def square(x: int) -> int:
            return x * x

        @broker.task(task_name="app.step")
        @pipeline_task(output="out")
        async def step(x: int) -> int:
            return x + 1

        ids = []
        await broker.startup()
        try:
            for i in range(3):
                task = await square.kiq(i)
                await task.wait_result(timeout=5)
                ids.append(task.task_id)
                await asyncio.sleep(0.002)
            run = await DataflowPipeline.from_tasks(broker, [step]).kiq(x=1)
            await run.wait_result(timeout=5)
            ids.append(run.task_ids["step"])
            schedule = _schedules()[0]
            await storage.set(f"schedule:{schedule.schedule_id}", schedule.model_dump(mode="json"))
        finally:
            await broker.shutdown()
        return ids

    ids = asyncio.run(scenario())
    client = redis.Redis.from_url(redis_url)
    try:
        client.set("taskiq_flow:task:broken", b"\xc1")  # under the adapter's key prefix
    finally:
        client.close()
    code = main(["tasks", "--json", "--storage-redis-url", redis_url], environ={})
    captured = capsys.readouterr()
    assert code == EXIT_OK
    data = json.loads(captured.out)
    assert [item["task_id"] for item in data["tasks"]] == ids[::-1]
    assert "task:broken: corrupt entry" in captured.err
    code = main(["tasks", "show", ids[1], "--json", "--storage-redis-url", redis_url], environ={})
    assert json.loads(capsys.readouterr().out)["result"]["return_value"] == 1
    code = main(["schedules", "--json", "--storage-redis-url", redis_url], environ={})
    data = json.loads(capsys.readouterr().out)
    assert (code, [item["schedule_id"] for item in data["schedules"]]) == (EXIT_OK, ["a-nightly"])


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "tasks show <id>" in out
    assert "taskiq-flow schedules" in out
    for argv in (["tasks", "-h"], ["tasks", "show", "-h"], ["schedules", "-h"]):
        assert main(argv) == EXIT_OK
        assert "--json" in capsys.readouterr().out
