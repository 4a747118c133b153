"""The lock across OS processes: stampede, lease renewal, holder death.

Each worker is ``proc_worker.py`` run with ``sys.executable``; creator executions are
counted with a Redis ``INCR`` so the count spans every process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis

pytestmark = pytest.mark.redis

WORKER = Path(__file__).with_name("proc_worker.py")
COUNTER = "test:executions"


def _spawn(redis_url: str, **options: Any) -> subprocess.Popen[str]:
    args = [sys.executable, str(WORKER), "--url", redis_url]
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


def _finish(proc: subprocess.Popen[str], timeout: float = 30) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("a worker process hung")
    assert proc.returncode == 0, err
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


@pytest.fixture
def control(redis_url: str) -> Any:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def _start_together(
    redis_url: str, control: redis.Redis, processes: int, **options: Any
) -> list[subprocess.Popen[str]]:
    procs = [_spawn(redis_url, **options) for _ in range(processes)]
    try:
        _wait_for(lambda: int(control.get("test:ready") or 0) == processes, 30, "workers")
    except BaseException:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        raise
    control.set("test:go", 1)
    return procs


def test_stampede_across_4_processes_runs_the_creator_once(
    redis_url: str, control: redis.Redis
) -> None:
    procs = _start_together(redis_url, control, 4, callers=50, sleep=0.5)
    results = [_finish(proc) for proc in procs]
    assert int(control.get(COUNTER)) == 1
    values = [value for result in results for value in result["values"]]
    assert values == ["value-1"] * 200
    assert sum(r["stats"]["regenerations"] for r in results) == 1
    assert control.exists("taskiq_flow_cache:lock:hot") == 0


def test_creator_slower_than_the_lease_still_runs_once(
    redis_url: str, control: redis.Redis
) -> None:
    """Lease 1 s, creator 3 s: the heartbeat keeps the lease, no waiter takes over."""
    procs = _start_together(redis_url, control, 2, callers=10, sleep=3, lease=1)
    results = [_finish(proc) for proc in procs]
    assert int(control.get(COUNTER)) == 1
    assert [v for r in results for v in r["values"]] == ["value-1"] * 20


def test_holder_killed_mid_creation_one_waiter_takes_over(
    redis_url: str, control: redis.Redis
) -> None:
    lease = 1.0
    control.set("test:go", 1)
    holder = _spawn(redis_url, callers=5, sleep=60, lease=lease)
    waiters: list[subprocess.Popen[str]] = []
    try:
        _wait_for(lambda: int(control.get(COUNTER) or 0) == 1, 30, "the holder to start")
        waiters = [_spawn(redis_url, callers=20, sleep=0.2, lease=lease) for _ in range(3)]
        _wait_for(lambda: int(control.get("test:ready") or 0) == 4, 30, "the waiters")
        time.sleep(0.5)  # let them reach the lease and block on it
        killed_at = time.time()
        os.killpg(holder.pid, signal.SIGKILL)
        holder.communicate(timeout=10)
        results = [_finish(proc) for proc in waiters]
    finally:
        for proc in (holder, *waiters):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
    assert int(control.get(COUNTER)) == 2  # produced once more, not once per waiter
    assert [v for r in results for v in r["values"]] == ["value-2"] * 60
    log = [json.loads(item) for item in control.lrange(COUNTER + ":log", 0, -1)]
    takeover = log[1]["t"] - killed_at
    assert takeover <= lease + 1.0, f"takeover after {takeover:.2f}s"
