"""Fixtures of the fault runs: real ``taskiq worker`` process groups over a Redis server.

``start_cluster(redis_url, workers=2, **settings)`` starts the workers of
``apps/fault_app.py`` and builds the producer side of the same app in this process;
everything is stopped and closed when the test ends. Workers spool into
``tmp_path / "spool"`` (``FAULT_SPOOL_DIR``) unless a test says otherwise; the producer
side has no spool.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from taskiq_flow_testing import WorkerProcess

APP_DIR = Path(__file__).parent / "apps"


@dataclass
class Cluster:
    settings: dict[str, str]
    workers: list[WorkerProcess]
    app: Any
    log_paths: list[Path]
    extra_apps: list[Any] = field(default_factory=list)

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.log_paths if p.exists())

    async def worker_pids(self) -> set[int]:
        """Pids of every worker process that started on this cluster's queue.

        More than one per worker means taskiq restarted a worker process that died.
        """
        # A fresh client: the server may have restarted since the last call.
        client = aioredis.from_url(self.settings["FAULT_REDIS_URL"])
        try:
            members = await client.smembers(f"fault:worker-pids:{self.settings['FAULT_QUEUE']}")
        finally:
            await client.aclose()
        return {int(pid) for pid in members}

    async def wait_ready(self, timeout: float = 30) -> None:
        """Until every worker process has started."""
        deadline = time.monotonic() + timeout
        while len(await self.worker_pids()) < len(self.workers):
            if time.monotonic() > deadline:
                raise TimeoutError("workers did not start")
            await asyncio.sleep(0.1)

    def worker_of(self, pid: int) -> WorkerProcess:
        """The worker whose process group holds ``pid``."""
        group = os.getpgid(pid)
        for worker in self.workers:
            if worker.proc is not None and worker.proc.pid == group:
                return worker
        raise LookupError(pid)


async def wait_result(task: Any, timeout: float, interval: float = 0.05) -> Any | None:
    """The task's result, or ``None`` after ``timeout`` (server errors count as not yet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if await task.is_ready():
                return await task.get_result()
        except Exception:  # noqa: S110 - Redis may be down right now; keep polling
            pass
        await asyncio.sleep(interval)
    return None


StartCluster = Callable[..., Awaitable[Cluster]]


@pytest.fixture
async def start_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[StartCluster]:
    monkeypatch.syspath_prepend(str(APP_DIR))
    import fault_app

    clusters: list[Cluster] = []

    async def start(
        redis_url: str,
        workers: int = 2,
        per_worker: list[dict[str, str]] | None = None,
        **settings: str,
    ) -> Cluster:
        base = {
            "FAULT_REDIS_URL": redis_url,
            "FAULT_QUEUE": f"fault-{uuid.uuid4().hex[:8]}",
            **settings,
        }
        overrides = per_worker or [{} for _ in range(workers)]
        procs: list[WorkerProcess] = []
        logs: list[Path] = []
        for i, extra in enumerate(overrides):
            log = tmp_path / f"worker{len(clusters)}-{i}.log"
            logs.append(log)
            procs.append(
                WorkerProcess(
                    "fault_app:create_broker",
                    app_dir=APP_DIR,
                    env={**base, "FAULT_SPOOL_DIR": str(tmp_path / "spool"), **extra},
                    log_path=log,
                ).start()
            )
        app = fault_app.build(base)
        await app.broker.startup()
        extra_apps = []
        for extra in overrides:
            if extra.get("FAULT_QUEUE"):
                other = fault_app.build({**base, **extra})
                await other.broker.startup()
                extra_apps.append(other)
        cluster = Cluster(base, procs, app, logs, extra_apps)
        clusters.append(cluster)
        return cluster

    yield start
    for cluster in clusters:
        for worker in cluster.workers:
            worker.stop()
        for app in [cluster.app, *cluster.extra_apps]:
            await app.close()
