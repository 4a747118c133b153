"""StorageResultBackend under two real ``taskiq worker`` processes (apps/result_backend_app.py).

The broker is taskiq-redis's ``ListQueueBroker`` on the private Redis; results and
records go to one storage adapter (Redis, or a SQLite file every process shares), with
``StorageMiddleware`` on the same adapter:

- 500 tasks: every ``wait_result()`` typed by the task's annotation (dataclass, pydantic
  model, int from a sync task), errors re-raised as the task's own exception type,
  progress set inside a task read by the caller;
- one key per task: the store holds exactly one ``task:*`` key per task (plus the
  ``progress:*`` keys of the tasks that reported progress) and nothing else;
- a storage outage while tasks run (storage on its own server, killed and restarted):
  the workers live on, and every result becomes readable once the storage is back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import redis.asyncio as aioredis
from taskiq import AsyncBroker
from taskiq.depends.progress_tracker import TaskState
from taskiq.exceptions import ResultGetError, ResultIsReadyError

from taskiq_flow.storage import BaseStorageAdapter, StorageConnectionError
from taskiq_flow_testing import RedisServer, WorkerProcess

APP_DIR = Path(__file__).parent / "apps"
TASKS = 500
PROGRESS_TASKS = 10

pytestmark = pytest.mark.redis


@dataclass
class Cluster:
    app: ModuleType
    broker: AsyncBroker
    storage: BaseStorageAdapter
    workers: list[WorkerProcess]
    log_paths: list[Path]
    settings: dict[str, str]

    def task(self, name: str) -> Any:
        return self.app.task(self.broker, name)

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.log_paths if p.exists())

    async def worker_pids(self) -> set[int]:
        client = aioredis.from_url(self.settings["RB_BROKER_URL"])
        try:
            key = self.app.WORKERS_KEY.format(queue=self.settings["RB_QUEUE"])
            return {int(pid) for pid in await client.smembers(key)}
        finally:
            await client.aclose()


StartCluster = Callable[..., Awaitable[Cluster]]


@pytest.fixture
async def start_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[StartCluster]:
    monkeypatch.syspath_prepend(str(APP_DIR))
    import result_backend_app

    clusters: list[Cluster] = []

    async def start(broker_url: str, storage: str) -> Cluster:
        settings = {
            "RB_BROKER_URL": broker_url,
            "RB_STORAGE": storage,
            "RB_QUEUE": f"rb-{tmp_path.name}",
        }
        logs = [tmp_path / f"worker{i}.log" for i in range(2)]
        workers = [
            WorkerProcess(
                "result_backend_app:create_broker", app_dir=APP_DIR, env=settings, log_path=log
            ).start()
            for log in logs
        ]
        broker = result_backend_app.build(settings)
        cluster = Cluster(
            result_backend_app,
            broker,
            broker.result_backend.storage,  # type: ignore[attr-defined]
            workers,
            logs,
            settings,
        )
        clusters.append(cluster)
        await broker.startup()
        # Both workers listening before anything is sent, so that both take a share.
        deadline = time.monotonic() + 30
        while len(await cluster.worker_pids()) < 2:
            assert all(w.alive for w in workers), cluster.logs()
            assert time.monotonic() < deadline, "workers did not start"
            await asyncio.sleep(0.05)
        return cluster

    yield start
    for cluster in clusters:
        # Idle list-queue workers ignore SIGTERM: stop both at once, not one grace each.
        await asyncio.gather(*(asyncio.to_thread(w.stop) for w in cluster.workers))
        await cluster.broker.shutdown()


async def _results(tasks: list[Any], timeout: float = 30) -> list[Any]:
    # In kick order, one at a time: the early ones finish first, so the later ones are
    # mostly ready at the first look (500 concurrent pollers would load a 2-core box).
    return [await t.wait_result(check_interval=0.02, timeout=timeout) for t in tasks]


async def _read_progress(cluster: Cluster, tasks: list[Any]) -> list[Any]:
    """Each task's progress, read while it runs; then let the task finish."""
    client = aioredis.from_url(cluster.settings["RB_BROKER_URL"])
    seen = []
    try:
        for task in tasks:
            deadline = time.monotonic() + 20
            while (progress := await task.get_progress()) is None:
                assert time.monotonic() < deadline, "no progress"
                await asyncio.sleep(0.02)
            seen.append(progress)
            await client.set(cluster.app.RELEASE_KEY.format(task_id=task.task_id), 1)
    finally:
        await client.aclose()
    return seen


@pytest.mark.parametrize("backend", ["redis", "sqlite"])
async def test_two_workers_500_results_typed_errors_progress_one_key_each(
    backend: str, redis_url: str, tmp_path: Path, start_cluster: StartCluster
) -> None:
    storage = redis_url if backend == "redis" else str(tmp_path / "results.sqlite3")
    cluster = await start_cluster(redis_url, storage)
    app = cluster.app
    kinds = ["rb.point", "rb.summary", "rb.double", "rb.fail"]

    reporting = [await cluster.task("rb.report").kiq(i) for i in range(PROGRESS_TASKS)]
    sent = [
        (i, kinds[i % 4], await cluster.task(kinds[i % 4]).kiq(i))
        for i in range(TASKS - PROGRESS_TASKS)
    ]
    progress = await _read_progress(cluster, reporting)
    assert [(p.state, p.meta) for p in progress] == [
        (TaskState.STARTED, {"x": i}) for i in range(PROGRESS_TASKS)
    ]
    assert [r.return_value for r in await _results(reporting)] == list(range(PROGRESS_TASKS))

    for (i, kind, _), result in zip(sent, await _results([t for *_, t in sent]), strict=True):
        if kind == "rb.fail":
            assert result.is_err
            assert type(result.error) is app.AppError, result.error
            with pytest.raises(app.AppError, match=f"task {i} failed"):
                result.raise_for_error()
            continue
        assert not result.is_err, result.error
        expected = {
            "rb.point": app.Point(x=i, y=-i),
            "rb.summary": app.Summary(n=i, squares=[n * n for n in range(i % 5)]),
            "rb.double": 2 * i,
        }[kind]
        assert type(result.return_value) is type(expected)
        assert result.return_value == expected

    # One key per task: the record is the result (and progress keys for the reporters).
    task_ids = [t.task_id for t in reporting] + [t.task_id for *_, t in sent]
    assert len(set(task_ids)) == TASKS
    keys = await cluster.storage.keys("*")
    assert len(await cluster.storage.keys("task:*")) == TASKS
    assert sorted(keys) == sorted(
        [f"task:{tid}" for tid in task_ids] + [f"progress:{t.task_id}" for t in reporting]
    )
    records = await cluster.storage.get_many(f"task:{tid}" for tid in task_ids)
    by_name = dict.fromkeys([*kinds, "rb.report"], 0)
    for record in records.values():
        by_name[record["task_name"]] += 1  # StorageMiddleware's record, written as the result
        assert isinstance(record["result"], bytes)
    expected_counts = {kind: sum(1 for _, k, _ in sent if k == kind) for kind in kinds}
    assert by_name == {**expected_counts, "rb.report": PROGRESS_TASKS}
    workers = {record["worker"] for record in records.values()}
    assert len(workers) == 2, workers  # both processes ran tasks
    if backend == "redis":
        # Nothing else holds results: no taskiq-redis key, no second copy of a record.
        client = aioredis.from_url(redis_url)
        try:
            everything = {k.decode() async for k in client.scan_iter()}
        finally:
            await client.aclose()
        assert {k for k in everything if not k.startswith("rb:")} == {
            f"taskiq_flow:{key}" for key in keys
        }
    assert all(w.alive for w in cluster.workers)
    assert len(await cluster.worker_pids()) == 2  # no worker process was restarted


async def _eventually(task: Any, timeout: float) -> Any:
    """The task's result once readable (storage errors meanwhile count as "not yet")."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await task.wait_result(check_interval=0.05, timeout=timeout)
        except (ResultIsReadyError, ResultGetError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def test_storage_outage_during_set_result_workers_live_results_arrive(
    redis_url: str, start_cluster: StartCluster
) -> None:
    # Storage on a server of its own (the broker's stays up), durable like a production
    # store: what it acknowledged before the kill survives it.
    with RedisServer(extra_args=["--appendonly", "yes", "--appendfsync", "always"]) as store:
        cluster = await start_cluster(redis_url, store.url)
        slow = cluster.task("rb.slow")

        before = [await slow.kiq(i, 0.0) for i in range(40)]
        assert [r.return_value for r in await _results(before)] == [i + 1 for i in range(40)]

        running = [await slow.kiq(i, 1.0) for i in range(100, 180)]  # finish mid-outage
        await asyncio.sleep(0.3)
        store.kill()
        killed_at, killed_wall = time.monotonic(), time.time()
        during = [await slow.kiq(i, 0.0) for i in range(200, 240)]  # run entirely during it

        # What the caller sees meanwhile: the store cannot say whether a result is
        # ready, and wait_result raises that at once (taskiq's ResultIsReadyError).
        asked = time.monotonic()
        with pytest.raises(ResultIsReadyError) as info:
            await running[0].wait_result(timeout=5)
        raised_after = time.monotonic() - asked
        assert isinstance(info.value.__cause__, StorageConnectionError)
        with pytest.raises(ResultGetError):
            await during[0].get_result()

        await asyncio.sleep(max(0.0, killed_at + 2.0 - time.monotonic()))  # all done by now
        assert all(w.alive for w in cluster.workers), cluster.logs()
        store.start()
        outage = time.monotonic() - killed_at

        results = [await _eventually(t, timeout=20) for t in [*before, *running, *during]]
        readable_after = time.monotonic() - killed_at - outage
        assert [r.return_value for r in results] == [
            i + 1 for i in [*range(40), *range(100, 180), *range(200, 240)]
        ]
        assert all(w.alive for w in cluster.workers), cluster.logs()
        assert len(await cluster.worker_pids()) == 2  # no worker process was restarted
        keys = await cluster.storage.keys("task:*")
        assert len(keys) == len(before) + len(running) + len(during)
        # The results of tasks that ended during the outage came from the retry buffers.
        late = await cluster.storage.get_many(f"task:{t.task_id}" for t in [*running, *during])
        finished = [datetime.fromisoformat(r["finished_at"]).timestamp() for r in late.values()]
        assert len(finished) == len(running) + len(during)
        assert min(finished) > killed_wall
        logs = cluster.logs()
        assert "storage write failed" in logs
        print(
            "\nFIGURES result backend outage:",
            {
                "results buffered during the outage": len(finished),
                "outage (s)": round(outage, 2),
                "wait_result raised ResultIsReadyError after (s)": round(raised_after, 3),
                "all results readable after restart within (s)": round(readable_after, 2),
            },
        )
        assert "storage is back" in logs
