"""The storage backend is unreachable from the start, and appears later.

Two workers, whose StorageMiddleware points at a port nothing listens on, run
``WAVES`` waves of unique tasks (no cache hits: each one executes and owes a record).
Every task must still return its own result; each worker must report the outage at
most once per ``error_log_interval`` (not once per task); and once a Redis server
starts on that port, every record must arrive from the workers' retry buffers.
"""

from __future__ import annotations

import asyncio
import json
import math
import time

import pytest

from taskiq_flow_testing import RedisServer, free_port

from .conftest import StartCluster, wait_result

WAVES = 8
PER_WAVE = 25
WAVE_GAP = 0.5
LOG_INTERVAL = 1.0

pytestmark = [pytest.mark.redis, pytest.mark.slow]


async def test_storage_unreachable_from_start_then_recovers(
    start_cluster: StartCluster, redis_url: str
) -> None:
    port = free_port()
    cluster = await start_cluster(
        redis_url,
        FAULT_STORAGE_URL=f"redis://127.0.0.1:{port}/0",
        FAULT_ERROR_LOG_INTERVAL=str(LOG_INTERVAL),
    )
    compute = cluster.app.tasks["compute"]
    sent = []
    started = time.monotonic()
    for wave in range(WAVES):
        for n in range(PER_WAVE):
            x = wave * PER_WAVE + n
            sent.append((x, await compute.kiq(x, "down")))
        await asyncio.sleep(WAVE_GAP)
    for x, task in sent:
        result = await wait_result(task, timeout=30)
        assert result is not None
        assert not result.is_err, result.error
        assert result.return_value == {"x": x, "sq": x * x, "salt": "down"}
    outage = time.monotonic() - started
    assert all(w.alive for w in cluster.workers)

    per_worker_reports = [
        path.read_text().count("storage write failed") for path in cluster.log_paths
    ]
    # Each worker: at most one line per interval of the outage (+1 for the first).
    limit = math.ceil(outage / LOG_INTERVAL) + 1
    assert all(n <= limit for n in per_worker_reports), (per_worker_reports, limit)
    assert sum(per_worker_reports) >= 1
    assert sum(per_worker_reports) < len(sent) // 4
    assert f"127.0.0.1:{port}" in cluster.logs()  # the report says where

    with RedisServer(port=port):
        keys = [f"task:{task.task_id}" for _, task in sent]
        deadline = time.monotonic() + 20
        while True:
            found = await cluster.app.storage.get_many(keys)
            if len(found) == len(keys) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        recovered_after = time.monotonic() - started - outage
        await cluster.app.storage.close()
        logs = cluster.logs()
        figures = {
            "tasks": len(sent),
            "outage (s)": round(outage, 1),
            "error lines per worker": per_worker_reports,
            "error lines allowed per worker": limit,
            "records written after storage appeared": len(found),
            "records lost": len(keys) - len(found),
            "recovered within (s)": round(recovered_after, 1),
            "recovery lines": logs.count("storage is back"),
        }
        print("\nFIGURES storage unreachable:", json.dumps(figures))
        assert len(found) == len(keys), f"{len(keys) - len(found)} records never written"
        for x, task in sent:
            record = found[f"task:{task.task_id}"]
            assert json.loads(record["return_value"]) == {"x": x, "sq": x * x, "salt": "down"}
        assert logs.count("storage is back") >= 1
