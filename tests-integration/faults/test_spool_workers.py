"""Records survive their worker: the spool outlives a SIGKILL during a storage outage.

Two real ``taskiq worker`` processes (taskiq-redis broker on the session's private Redis)
write records to a **separate** storage Redis (append-only file, so what it had before
the outage survives its restart). The storage server is killed; a wave of unique tasks
runs and every result is acknowledged (the broker's result backend is up), so each of
their records went to the worker's spool before the result was saved. Both workers are
then SIGKILLed, mid-outage. The storage server comes back, and a **new** worker started
with the same spool directory adopts the dead workers' spool files and writes them:
every acknowledged task's record is in the store, none lost, and the spool is empty.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import pytest

from taskiq_flow_testing import RedisServer

from .conftest import StartCluster, wait_result

BEFORE = 20
DURING = 60

pytestmark = [pytest.mark.redis, pytest.mark.slow]


def _spool_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("spool-*.sqlite3")) if directory.exists() else []


async def test_records_spooled_by_killed_workers_are_written_by_a_new_worker(
    start_cluster: StartCluster, redis_url: str, tmp_path: Path
) -> None:
    spool_dir = tmp_path / "shared-spool"
    storage = RedisServer(extra_args=["--appendonly", "yes", "--appendfsync", "always"]).start()
    try:
        settings = {"FAULT_STORAGE_URL": storage.url, "FAULT_ERROR_LOG_INTERVAL": "1"}
        workers = [{"FAULT_SPOOL_DIR": str(spool_dir)} for _ in range(2)]
        cluster = await start_cluster(redis_url, per_worker=workers, **settings)
        await cluster.wait_ready()
        compute = cluster.app.tasks["compute"]

        acknowledged: dict[str, int] = {}
        before = [(x, await compute.kiq(x, "before")) for x in range(BEFORE)]
        for x, task in before:
            result = await wait_result(task, timeout=30)
            assert result is not None
            assert not result.is_err
            acknowledged[task.task_id] = x

        storage.kill()  # the storage outage starts; broker and results stay up
        during = [(x, await compute.kiq(x, "during")) for x in range(1000, 1000 + DURING)]
        for x, task in during:
            result = await wait_result(task, timeout=30)
            assert result is not None, "a task was not answered during the storage outage"
            assert result.return_value == {"x": x, "sq": x * x, "salt": "during"}
            acknowledged[task.task_id] = x

        for worker in cluster.workers:
            worker.kill(signal.SIGKILL)  # mid-outage: whatever they kept is on disk or gone
        for worker in cluster.workers:
            assert worker.proc is not None
            worker.proc.wait(timeout=10)
        left = _spool_files(spool_dir)
        assert left, "the killed workers left no spool file"
        assert "storage write failed" in cluster.logs()

        storage.start()  # back, with what it had before (appendfsync always)
        started = time.monotonic()
        # A new worker with the same spool directory, on a queue of its own: nothing
        # is sent to it, it only adopts and writes what the dead workers left.
        late = await start_cluster(
            redis_url, workers=1, per_worker=[{"FAULT_SPOOL_DIR": str(spool_dir)}], **settings
        )
        keys = [f"task:{task_id}" for task_id in acknowledged]
        deadline = time.monotonic() + 30
        while True:
            found = await cluster.app.storage.get_many(keys)
            if len(found) == len(keys) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        written_after = time.monotonic() - started
        for _ in range(50):  # the adopted files are removed once written
            if not _spool_files(spool_dir):
                break
            await asyncio.sleep(0.1)
        figures = {
            "acknowledged": len(acknowledged),
            "acknowledged during the outage": DURING,
            "spool files left by the killed workers": len(left),
            "records in the store": len(found),
            "records lost": len(keys) - len(found),
            "written within (s, incl. worker start)": round(written_after, 1),
            "spool files left": len(_spool_files(spool_dir)),
        }
        print("\nFIGURES spool after SIGKILL:", json.dumps(figures))
        assert len(found) == len(keys), f"{len(keys) - len(found)} acknowledged records lost"
        for task_id, x in acknowledged.items():
            record = found[f"task:{task_id}"]
            salt = "before" if x < 1000 else "during"
            assert json.loads(record["return_value"]) == {"x": x, "sq": x * x, "salt": salt}
        assert "adopted the spool" in late.logs()
        assert _spool_files(spool_dir) == []
    finally:
        storage.stop()
