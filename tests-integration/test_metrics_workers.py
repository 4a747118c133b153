"""Two real `taskiq worker` processes with taskiq's PrometheusMiddleware and both of ours.

200 tasks over 20 inputs through a private Redis: a real HTTP scrape of the workers'
endpoint (multiprocess mode: one server, every worker's counts) shows 180 hits, 20 misses
and 200 storage writes; `taskiq-flow cache stats --json`, run as a user would against the
same Redis, shows the cluster-wide totals: hits 180, misses 20, hit rate 90.0%, per task.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from taskiq_redis import RedisAsyncResultBackend

from taskiq_flow_testing import WorkerProcess, free_port, list_queue_broker

APP_DIR = Path(__file__).parent / "apps"
TASK_NAME = "it_metrics.square"  # as in apps/metrics_worker_app.py

pytestmark = pytest.mark.redis


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` from one GET of the metrics endpoint."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def _total(scraped: dict, name: str, **labels: str) -> float:
    """Sum of the samples ``name`` whose labels include ``labels``."""
    return sum(
        value
        for (sample, sample_labels), value in scraped.items()
        if sample == name and labels.items() <= dict(sample_labels).items()
    )


def _cli(redis_url: str, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKIQ_FLOW_")}
    env["TASKIQ_FLOW_CACHE_REDIS_URL"] = redis_url
    script = Path(sys.executable).parent / "taskiq-flow"
    return subprocess.run(
        [str(script), "cache", "stats", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def _wait_for(what: str, probe, timeout: float = 30.0):
    """Call ``probe()`` (sync, in a thread) until it returns a truthy value."""
    deadline = asyncio.get_running_loop().time() + timeout
    last: object = None
    while asyncio.get_running_loop().time() < deadline:
        try:
            last = await asyncio.to_thread(probe)
        except (OSError, urllib.error.URLError) as exc:
            last = exc
        else:
            if last:
                return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what}: not reached within {timeout} s (last: {last!r})")


async def test_two_workers_scrape_and_cluster_stats(redis_url: str, tmp_path: Path) -> None:
    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    port = free_port()
    queue = f"q-metrics-{tmp_path.name}"
    env = {
        "TASKIQ_FLOW_IT_REDIS_URL": redis_url,
        "TASKIQ_FLOW_IT_QUEUE": queue,
        "TASKIQ_FLOW_IT_METRICS_PORT": str(port),
        # Before prometheus-client is imported in the worker: multiprocess mode.
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
    }
    workers = [
        WorkerProcess(
            "metrics_worker_app:broker", app_dir=APP_DIR, env=env, log_path=tmp_path / f"w{i}.log"
        ).start()
        for i in range(2)
    ]
    # The producer: the same queue and result backend, none of the middlewares (so no
    # call is answered at send: each is a hit or a miss in a worker).
    producer = list_queue_broker(redis_url, queue).with_result_backend(
        RedisAsyncResultBackend(redis_url, result_ex_time=600)
    )

    @producer.task(task_name=TASK_NAME)
    async def square(x: int) -> int:
        raise AssertionError("runs in the workers only")

    logs = lambda: "".join(p.read_text() for p in tmp_path.glob("w*.log"))  # noqa: E731
    try:
        await producer.startup()
        # One worker's endpoint answers (the other could not bind the port: fine, the
        # multiprocess directory holds both workers' counts).
        await _wait_for("the metrics endpoint", lambda: _scrape(port) is not None)
        sent = await asyncio.gather(*(square.kiq(i % 20) for i in range(200)))
        results = await asyncio.gather(*(t.wait_result(timeout=60) for t in sent))
        assert [r.return_value for r in results] == [(i % 20) ** 2 for i in range(200)], logs()
        assert all(w.alive for w in workers), logs()

        def settled() -> dict | None:
            scraped = _scrape(port)
            written = _total(scraped, "taskiq_flow_storage_writes_total", result="ok")
            return scraped if written >= 200 else None

        scraped = await _wait_for("200 storage writes", settled)
        requests = "taskiq_flow_cache_requests_total"
        assert _total(scraped, requests, task_name=TASK_NAME, result="hit") == 180
        assert _total(scraped, requests, task_name=TASK_NAME, result="miss") == 20
        assert _total(scraped, requests, task_name=TASK_NAME, result="at_send") == 0
        assert _total(scraped, "taskiq_flow_storage_writes_total", result="ok") == 200
        # taskiq's own metrics come through the same endpoint: both workers' tasks.
        assert _total(scraped, "received_tasks_total", task_name=TASK_NAME) == 200
        # Both workers ran tasks (the counts are the sum of two processes' files).
        assert len(list(multiproc.glob("counter_*.db"))) >= 2

        # The CLI, against the same Redis: every worker's counts (each writes its own at
        # most once per second).
        def cluster_stats() -> dict | None:
            done = _cli(redis_url, "--json")
            assert done.returncode == 0, done.stderr
            stats = json.loads(done.stdout)["stats"]
            return stats if stats["hits"] + stats["misses"] >= 200 else None

        stats = await _wait_for("cluster stats", cluster_stats)
        assert stats["scope"] == "cluster"
        assert (stats["hits"], stats["misses"]) == (180, 20)
        assert stats["hit_rate"] == 0.9
        row = stats["by_task"][TASK_NAME]
        assert (row["hits"], row["misses"], row["hit_rate"]) == (180, 20, 0.9)
        assert stats["entries"] == 20
        # Every wait the histogram observed, the cluster stats counted (one call, both).
        waited = _total(scraped, "taskiq_flow_cache_lock_wait_seconds_count", task_name=TASK_NAME)
        assert row["lock_waits"] == waited
        text = _cli(redis_url, "--by-task")
        assert text.returncode == 0, text.stderr
        assert "hit_rate" in text.stdout
        assert "90.0%" in text.stdout
        task_line = next(line for line in text.stdout.splitlines() if line.startswith(TASK_NAME))
        assert task_line.split()[1:4] == ["180", "20", "90.0%"]
    finally:
        for worker in workers:
            worker.kill()  # idle list-queue workers ignore SIGTERM
        for worker in workers:
            worker.stop(grace=0)
        await producer.shutdown()
