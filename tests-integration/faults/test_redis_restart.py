"""Redis (broker, results, cache and storage on one server) restarted under load.

Two ``taskiq worker`` processes run ``fault.compute_at`` from a producer that keeps
``CONCURRENCY`` jobs in flight; meanwhile the server is SIGKILLed and started again
``RESTARTS`` times, each time down for ``DOWNTIME`` seconds. Two servers:

- ``aof``: ``appendfsync always``, so what the server acknowledged survives its crash and
  what it never had is ours to lose or keep: **every** acknowledged record must be there;
- ``empty``: no persistence, the server restarts empty — queued messages, results,
  cache and records it held are gone (the server's loss, not ours). Every record built
  after the last kill (the task's own end time ``at`` is after it) must be there.

What is lost by design, and how the producer accounts for it:

- a message the server or a worker lost (popped and its result never saved, or wiped
  with an empty restart): the producer sees no result within ``RESULT_TIMEOUT`` and
  sends the job again (counted as ``resent``);
- a ``kiq`` that fails while the server is down: sent again (``send_errors``).

What may not be lost: a task whose result the producer received ("acknowledged") has its
storage record — written before the result (StorageMiddleware writes in
``post_execute``), or held in the worker's retry buffer and flushed when Redis is back.
``records lost`` must be 0, and every answer must be the right one.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import datetime
from typing import Any

import pytest

from taskiq_flow_testing import RedisServer

from .conftest import StartCluster, wait_result

JOBS = int(os.environ.get("TASKIQ_FLOW_FAULT_JOBS", "600"))
CONCURRENCY = 32
RESTARTS = 2
DOWNTIME = 1.0
RESULT_TIMEOUT = 6.0

pytestmark = [pytest.mark.redis, pytest.mark.slow]


def _job(j: int) -> tuple[int, str]:
    # Odd jobs repeat 40 argument pairs (cache hits), even jobs are unique (misses).
    return (j % 40, "hot") if j % 2 else (j, f"cold-{j}")


PERSISTENCE = {"aof": ["--appendonly", "yes", "--appendfsync", "always"], "empty": []}


@pytest.mark.parametrize("persistence", sorted(PERSISTENCE))
async def test_redis_restarted_under_load_loses_no_acknowledged_record(
    start_cluster: StartCluster, persistence: str
) -> None:
    server = RedisServer(extra_args=PERSISTENCE[persistence])
    with server:
        cluster = await start_cluster(
            # Executions take a while, so that many finish while the server is down:
            # their records go through the retry buffer.
            server.url,
            FAULT_STORE_CACHE_HITS="1",
            FAULT_TASK_SLEEP="0.2",
            FAULT_ERROR_LOG_INTERVAL="0.5",
        )
        await cluster.wait_ready()
        pids_before = await cluster.worker_pids()
        compute = cluster.app.tasks["compute_at"]
        acked: dict[str, dict[str, Any]] = {}
        ended_at: dict[str, float] = {}
        hits = 0
        resent = 0
        send_errors = 0
        restarts: list[float] = []
        outages: list[tuple[float, float]] = []  # wall clock: surely down in between
        started = time.monotonic()

        async def job(j: int) -> None:
            nonlocal hits, resent, send_errors
            x, salt = _job(j)
            expected = {"x": x, "sq": x * x, "salt": salt}
            for _ in range(30):
                try:
                    task = await compute.kiq(x, salt)
                except Exception:  # the server is down: send again
                    send_errors += 1
                    await asyncio.sleep(0.2)
                    continue
                result = await wait_result(task, RESULT_TIMEOUT)
                if result is None:
                    resent += 1
                    continue
                assert not result.is_err, result.error
                # Never a wrong answer, restart or not.
                value = dict(result.return_value)
                ended_at[task.task_id] = value.pop("at")
                assert value == expected
                acked[task.task_id] = expected
                hits += result.labels.get("cache_hit") == "true"
                return
            raise AssertionError(f"job {j} was never acknowledged")

        async def inject_faults() -> None:
            for k in range(1, RESTARTS + 1):
                while len(acked) < JOBS * k // (RESTARTS + 1):
                    await asyncio.sleep(0.02)
                await asyncio.to_thread(server.kill)
                t0 = time.monotonic()
                down_from = time.time()
                await asyncio.sleep(DOWNTIME)
                outages.append((down_from, time.time()))
                await asyncio.to_thread(server.start)
                restarts.append(time.monotonic() - t0)

        semaphore = asyncio.Semaphore(CONCURRENCY)

        async def bounded(j: int) -> None:
            async with semaphore:
                await job(j)

        async with asyncio.timeout(150):
            injector = asyncio.create_task(inject_faults())
            await asyncio.gather(*(bounded(j) for j in range(JOBS)))
            await injector
        run_time = time.monotonic() - started

        # Every acknowledged task's record, once the workers' retry buffers have drained;
        # with an empty restart, those built after the last kill (the server wiped the rest).
        storage = cluster.app.storage
        last_kill = outages[-1][0]
        owed = [t for t in acked if persistence == "aof" or ended_at[t] > last_kill]
        keys = {f"task:{tid}": tid for tid in owed}
        deadline = time.monotonic() + 30
        while True:
            records = await storage.get_many(list(keys))
            missing = set(keys) - set(records)
            if not missing or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert all(w.alive for w in cluster.workers), cluster.logs()[-3000:]
        # A worker process started after wait_ready() means one died (an empty restart
        # wipes the set, so compare the new pids, not the count).
        new_pids = (await cluster.worker_pids()) - pids_before
        logs = cluster.logs()
        # Acknowledged tasks whose record was built while the server was down: their
        # first write failed, so they reached Redis through the worker's retry buffer.
        through_buffer = 0
        for record in records.values():
            finished = datetime.fromisoformat(record["finished_at"]).timestamp()
            through_buffer += any(start < finished < end for start, end in outages)
        figures = {
            "server": persistence,
            "jobs": JOBS,
            "tasks acknowledged": len(acked),
            "cache hits": hits,
            "faults injected (Redis SIGKILL + restart)": len(restarts),
            "downtime per restart (s)": [round(t, 2) for t in restarts],
            "results lost by the broker, re-sent": resent,
            "kiq failures while down, re-sent": send_errors,
            "storage write-failure reports in worker logs": logs.count("storage write failed"),
            "buffer flushed after outage (log lines)": logs.count("storage is back"),
            "acknowledged records written through the retry buffer": through_buffer,
            "worker processes restarted": len(new_pids),
            "acknowledged records owed (checked)": len(keys),
            "records lost": len(missing),
            "run time (s)": round(run_time, 1),
        }
        print("\nFIGURES redis restart:", json.dumps(figures))
        assert len(restarts) == RESTARTS
        # Not one worker process died (and so no retry buffer was lost with one).
        assert not new_pids, figures
        assert len(keys) >= JOBS // 4, figures  # enough records checked to mean something
        # The test exercised the buffer (else it would prove little about it).
        assert through_buffer > 0, figures
        assert not missing, f"{len(missing)} acknowledged records lost: {sorted(missing)[:5]}"
        for key, tid in keys.items():
            record = records[key]
            assert record["task_id"] == tid
            assert record["is_err"] is False
            stored = json.loads(record["return_value"])
            assert stored.pop("at") <= datetime.fromisoformat(record["finished_at"]).timestamp()
            assert stored == acked[tid]
