"""Redis Cluster under real processes: the dogpile lock across processes, two workers.

The cluster is the session's three-primary one (taskiq_flow_testing); coordination of
the stampede processes lives on a plain private server (``redis_url``), so the counts
never depend on the topology under test.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import redis
from redis.asyncio import RedisCluster

from taskiq_flow_testing import RedisClusterServers, WorkerProcess

APP_DIR = Path(__file__).parent / "topology_app"
WORKER = APP_DIR / "stampede_worker.py"
KEY = "hot{1}"  # a brace in the key: its names must still share one slot

pytestmark = [pytest.mark.redis, pytest.mark.redis_cluster]


def _spawn(url: str, control_url: str, **options: Any) -> subprocess.Popen[str]:
    args = [sys.executable, str(WORKER), "--url", url, "--control-url", control_url, "--key", KEY]
    for name, value in options.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    return subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def _finish(proc: subprocess.Popen[str], timeout: float = 60) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("a stampede process hung")
    assert proc.returncode == 0, err
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def _kill_all(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def test_stampede_across_4_processes_runs_the_creator_once_on_a_cluster(
    redis_cluster: RedisClusterServers, redis_url: str
) -> None:
    control = redis.Redis.from_url(redis_url)
    procs = [_spawn(redis_cluster.url, redis_url, callers=50, sleep=0.5) for _ in range(4)]
    try:
        _wait_for(lambda: int(control.get("test:ready") or 0) == 4, 60, "the processes")
        control.set("test:go", 1)
        results = [_finish(proc) for proc in procs]
    finally:
        _kill_all(procs)
        control.close()
    assert int(redis.Redis.from_url(redis_url).get("test:executions") or 0) == 1
    assert [v for r in results for v in r["values"]] == ["value-1"] * 200
    assert sum(r["stats"]["regenerations"] for r in results) == 1
    assert sum(redis_cluster.count_keys()) >= 1  # the entry (the lease is released)


def test_holder_killed_mid_creation_one_waiter_takes_over_on_a_cluster(
    redis_cluster: RedisClusterServers, redis_url: str
) -> None:
    lease = 1.0
    control = redis.Redis.from_url(redis_url)
    control.set("test:go", 1)
    holder = _spawn(redis_cluster.url, redis_url, callers=5, sleep=60, lease=lease)
    waiters: list[subprocess.Popen[str]] = []
    try:
        _wait_for(lambda: int(control.get("test:executions") or 0) == 1, 60, "the holder")
        waiters = [
            _spawn(redis_cluster.url, redis_url, callers=20, sleep=0.2, lease=lease)
            for _ in range(3)
        ]
        _wait_for(lambda: int(control.get("test:ready") or 0) == 4, 60, "the waiters")
        time.sleep(0.5)  # let them reach the lease and block on it
        killed_at = time.time()
        os.killpg(holder.pid, signal.SIGKILL)
        holder.communicate(timeout=10)
        results = [_finish(proc) for proc in waiters]
        log = [json.loads(item) for item in control.lrange("test:executions:log", 0, -1)]
        executions = int(control.get("test:executions") or 0)
    finally:
        _kill_all([holder, *waiters])
        control.close()
    assert executions == 2  # produced once more, not once per waiter
    assert [v for r in results for v in r["values"]] == ["value-2"] * 60
    takeover = log[1]["t"] - killed_at
    assert takeover <= lease + 1.0, f"takeover after {takeover:.2f}s"


def _producer(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.syspath_prepend(str(APP_DIR))
    monkeypatch.delitem(sys.modules, "topology_app", raising=False)  # reads env at import
    import topology_app

    return topology_app


async def test_two_workers_on_a_cluster_broker_run_100_identical_tasks_once(
    redis_cluster: RedisClusterServers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node_url = f"redis://127.0.0.1:{redis_cluster.nodes[0].port}"
    env = {
        "TOPO_URL": redis_cluster.url,
        "TOPO_BROKER": "cluster",
        "TOPO_BROKER_URL": node_url,
        "TOPO_QUEUE": f"q-{tmp_path.name}",
    }
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    workers = [
        WorkerProcess("topology_app:broker", app_dir=APP_DIR, env=env, log_path=log).start()
        for log in logs
    ]
    app = _producer(env, monkeypatch)
    counter = RedisCluster.from_url(node_url)
    try:
        await app.broker.startup()
        sent = await asyncio.gather(*(app.identical.kiq(21) for _ in range(100)))
        results = await asyncio.gather(*(t.wait_result(timeout=90) for t in sent))
        worker_logs = "".join(p.read_text(errors="replace") for p in logs if p.exists())
        assert all(not r.is_err for r in results), [r.error for r in results if r.is_err][:3]
        assert {r.return_value for r in results} == {42}
        assert int(await counter.get("topo:runs:21") or 0) == 1, worker_logs[-3000:]
        records = await app.storage.keys("task:*")
        assert len(records) == 100  # every task's result and record, one key each
        assert all(w.alive for w in workers), worker_logs[-3000:]
        assert all(count > 0 for count in redis_cluster.count_keys())  # spread over primaries
    finally:
        for worker in workers:
            worker.stop()
        await app.broker.shutdown()
        await app.storage.close()
        await counter.aclose()
