"""Sentinel: the master killed mid-load under two real workers, with and without WAIT.

Two ``taskiq worker`` processes run ``topo.stamp`` (topology_app, ``TOPO_BROKER=list``):
the broker and taskiq-redis's results live on a plain private server, the storage
(StorageMiddleware's records) and the cache on a Sentinel-watched master with one
replica. A producer keeps ``CONCURRENCY`` tasks in flight; after a third of them the
replica falls ``LAG`` seconds behind — its link to the master is cut (``REPLICAOF`` an
unused port: a partition, a slow link) while the master keeps acknowledging writes —
then the master is SIGKILLed and the replica pointed back at it; Sentinel promotes the
replica, and the old master is started again (empty) to rejoin as its replica. With
``TASKIQ_FLOW_FAILOVER_LAG=0`` the master is simply killed. (A stalled replica process,
SIGSTOP, loses nothing on one host: the kernel keeps what the master sent.)

Checked: the workers stay up, no task fails, every record of a task that ended after
the failover is readable. Counted: records lost — tasks whose result the producer got
but whose record is missing once the workers' retry buffers drained. Redis replicates
asynchronously, so without ``wait_replicas`` the writes the old master acknowledged and
never passed on are gone; with ``wait_replicas=1`` a write is acknowledged only once the
replica has it, so none may be lost. The figures go to docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from taskiq_flow_testing import RedisServer, SentinelServers, WorkerProcess, free_low_port

APP_DIR = Path(__file__).parent / "topology_app"
JOBS = int(os.environ.get("TASKIQ_FLOW_FAILOVER_JOBS", "300"))
LAG = float(os.environ.get("TASKIQ_FLOW_FAILOVER_LAG", "0.5"))
CONCURRENCY = 16

pytestmark = [pytest.mark.redis, pytest.mark.redis_sentinel, pytest.mark.slow]


@pytest.mark.parametrize("wait_replicas", [0, 1])
async def test_master_killed_mid_load_under_two_workers(
    redis_server: RedisServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    wait_replicas: int,
) -> None:
    with SentinelServers() as servers:
        env = {
            "TOPO_URL": servers.url,
            "TOPO_BROKER": "list",
            "TOPO_BROKER_URL": redis_server.url,
            "TOPO_QUEUE": f"q-{tmp_path.name}",
            "TOPO_SLEEP": "0.05",
            "TOPO_WAIT_REPLICAS": str(wait_replicas),
        }
        logs = [tmp_path / f"worker{i}.log" for i in range(2)]
        workers = [
            WorkerProcess("topology_app:broker", app_dir=APP_DIR, env=env, log_path=log).start()
            for log in logs
        ]
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.syspath_prepend(str(APP_DIR))
        monkeypatch.delitem(sys.modules, "topology_app", raising=False)
        import topology_app as app

        acked: dict[str, float] = {}  # task id -> when its execution ended
        failures: list[Any] = []
        fault: dict[str, float] = {}
        try:
            await app.broker.startup()
            semaphore = asyncio.Semaphore(CONCURRENCY)

            async def job(n: int) -> None:
                async with semaphore:
                    task = await app.stamp.kiq(n)
                    result = await task.wait_result(timeout=120)
                if result.is_err:
                    failures.append(result.error)
                else:
                    acked[task.task_id] = result.return_value["at"]

            async def inject() -> None:
                while len(acked) < JOBS // 3:
                    await asyncio.sleep(0.01)
                old_port = servers.master_port()
                replica = redis.Redis(port=servers.replica.port)
                if LAG:
                    replica.replicaof("127.0.0.1", free_low_port())  # cut off: falls behind
                    await asyncio.sleep(LAG)
                fault["killed"] = time.time()
                old = await asyncio.to_thread(servers.kill_master)
                if LAG:
                    replica.replicaof("127.0.0.1", old_port)  # a replica of the dead master
                replica.close()
                await asyncio.to_thread(servers.wait_failover, old_port)
                fault["promoted"] = time.time()
                await asyncio.to_thread(old.start)  # rejoins as the new master's replica

            async with asyncio.timeout(240):
                injector = asyncio.create_task(inject())
                await asyncio.gather(*(job(n) for n in range(JOBS)))
                await injector

            keys = {f"task:{tid}": at for tid, at in acked.items()}
            after = [key for key, at in keys.items() if at > fault["promoted"]]
            deadline = time.monotonic() + 30
            while True:  # until the workers' retry buffers have drained
                records = await app.storage.get_many(list(keys))
                missing = set(keys) - set(records)
                if not set(after) & missing or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            await asyncio.sleep(2)  # late flushes of what a buffer still held
            records = await app.storage.get_many(list(keys))
            missing = set(keys) - set(records)
            worker_logs = "".join(p.read_text(errors="replace") for p in logs if p.exists())
            figures = {
                "wait_replicas": wait_replicas,
                "replica lag before the kill (s)": LAG,
                "tasks": JOBS,
                "tasks failed": len(failures),
                "records acknowledged (task result received)": len(keys),
                "records of tasks ended after the promotion": len(after),
                "records lost": len(missing),
                "lost among those ended before the kill": sum(
                    keys[k] < fault["killed"] for k in missing
                ),
                "failover (kill -> promotion, s)": round(fault["promoted"] - fault["killed"], 2),
                "storage write failures logged": worker_logs.count("storage write failed"),
            }
            print("\nFIGURES sentinel failover:", json.dumps(figures))
            assert all(w.alive for w in workers), worker_logs[-3000:]
            assert not failures, failures[:3]
            assert not set(after) & missing, figures  # every record after the failover
            if wait_replicas:
                assert not missing, figures
        finally:
            for worker in workers:
                worker.stop()
            await app.broker.shutdown()
            await app.storage.close()
