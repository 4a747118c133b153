"""Pipelines over real `taskiq worker` processes that die: no run gets stuck.

Two workers run ``pipeline_app/diamond_app.py`` over a taskiq-redis ListQueueBroker
(which acknowledges on receipt: a killed worker's in-flight messages are gone) with
the run state in a RedisStorageAdapter on the test's private server. The test
process is the producer (not a worker: it runs no sweeper); runs are re-driven by its
``wait_result`` or, when nobody waits, by the workers' sweepers. Executions are
counted with Redis INCR inside the workers.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from taskiq_flow.middlewares import PipelineCancelledError, PipelineMiddleware
from taskiq_flow_testing import WorkerProcess, wait_workers_up

APP_DIR = Path(__file__).parent / "pipeline_app"
# A step's lease. Under a loaded CI machine (the whole suite on two cores) a live step
# was once taken for dead five times within 1 s leases; 2 s leaves room while still
# showing recovery within seconds.
LEASE = 2.0

pytestmark = pytest.mark.redis


@pytest.fixture
def diamond_app(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(APP_DIR))
    import diamond_app

    return diamond_app


class Cluster:
    """Worker processes on one queue, plus the producer side of the same app."""

    def __init__(
        self, app, redis_url: str, tmp_path: Path, lease: float = LEASE, **env: str
    ) -> None:
        self.queue = f"it-recovery-{uuid.uuid4().hex[:8]}"
        self.env = {
            "TASKIQ_FLOW_IT_REDIS_URL": redis_url,
            "TASKIQ_FLOW_IT_QUEUE": self.queue,
            "TASKIQ_FLOW_IT_LEASE": str(lease),
            **env,
        }
        self.app = app
        self.tmp_path = tmp_path
        self.started = 0
        self.workers: list[WorkerProcess] = []
        self.producer = app.build(redis_url, self.queue, lease=lease)
        self.client = aioredis.from_url(redis_url)

    def start_worker(self) -> WorkerProcess:
        self.started += 1
        worker = WorkerProcess(
            "diamond_app:create_broker",
            app_dir=APP_DIR,
            env=self.env,
            log_path=self.tmp_path / f"worker{self.started}.log",
        ).start()
        self.workers.append(worker)
        return worker

    async def ready(self) -> None:
        """Wait until every worker started so far has run its startup (up to 60 s)."""
        key = self.app.WORKERS_UP.format(queue=self.queue)

        async def count() -> int:
            return int(await self.client.get(key) or 0)

        await wait_workers_up(count, self.workers, within=60)

    async def count(self, key: str) -> int:
        return int(await self.client.get(key) or 0)

    def logs(self) -> str:
        return "".join(path.read_text() for path in sorted(self.tmp_path.glob("worker*.log")))

    async def close(self) -> None:
        for worker in self.workers:
            worker.kill(signal.SIGTERM)
        for worker in self.workers:
            worker.stop(grace=1.0)  # idle list-queue workers ignore SIGTERM; do not wait long
        await self.producer.close()
        await self.client.aclose()


@pytest.fixture
async def cluster(diamond_app, redis_url: str, tmp_path: Path) -> Iterator[object]:
    made: list[Cluster] = []

    def make(lease: float = LEASE, **env: str) -> Cluster:
        made.append(Cluster(diamond_app, redis_url, tmp_path, lease, **env))
        return made[-1]

    yield make
    for each in made:
        await each.close()


async def test_sigkill_between_claim_and_send(cluster, diamond_app) -> None:
    # The worker that runs `source` claims left and right, then SIGKILLs itself before
    # sending left: both claims are held by a dead process. One run at a time, and one
    # worker per run to kill, so that a live worker (not the producer) claims them.
    c = cluster(TASKIQ_FLOW_IT_KILL_AT_SEND="left")
    for _ in range(4):
        c.start_worker()
    await c.producer.broker.startup()
    await c.ready()
    for n in range(3):
        pid = f"kill-{n}"
        run = await c.producer.pipeline.kiq(n=n, pipeline_id=pid)
        result = await run.wait_result(timeout=30, poll_interval=0.1)
        assert not result.is_err, (result.error, c.logs()[-3000:])
        assert result.return_value["merged"] == 3 * n + 1, result.return_value
        killer = await c.client.get(diamond_app.KILLED.format(pipeline_id=pid))
        assert killer is not None  # a worker really died at the claim->send point
        with pytest.raises(ProcessLookupError):
            os.kill(int(killer), 0)
        node_count = diamond_app.NODE_COUNT
        assert await c.count(node_count.format(pipeline_id=pid, node="left")) == 1
        assert await c.count(node_count.format(pipeline_id=pid, node="right")) == 1
        assert await c.count(diamond_app.MERGE_COUNT.format(pipeline_id=pid)) == 1
        status = await run.status()
        # Re-driven once: by the waiting producer or a worker's sweeper, whichever first.
        assert status.node("left").attempts == 2
        assert status.node("right").attempts == 2  # claimed by the dead worker too
        assert status.node("merge").attempts == 1


def pipeline_middleware(app) -> PipelineMiddleware:
    return next(m for m in app.broker.middlewares if isinstance(m, PipelineMiddleware))


async def test_sigkill_between_claim_and_send_with_nobody_waiting(cluster, diamond_app) -> None:
    # As above, but nobody calls wait_result: the producer only reads the run's state.
    # It is no worker, so it runs no sweeper; the worker that dies holds the claims of
    # left and right, and no step is left running that could advance the run. Only a
    # live (or restarted) worker's sweeper can re-drive it.
    c = cluster(TASKIQ_FLOW_IT_KILL_AT_SEND="left")
    c.start_worker()
    c.start_worker()
    await c.producer.broker.startup()
    await c.ready()
    producer = pipeline_middleware(c.producer)
    assert not producer.broker.is_worker_process
    assert not producer._sweeper.running
    for n in range(2):
        pid = f"unwatched-{n}"
        await c.producer.pipeline.kiq(n=n, pipeline_id=pid)
        run = await c.producer.pipeline.run(pid)
        deadline = time.monotonic() + 20
        while (status := await run.status()).state == "running":
            assert time.monotonic() < deadline, status.to_dict()
            await asyncio.sleep(0.1)
        assert status.state == "done"
        assert await c.producer.storage.get(f"pipeline:{pid}:data:merged") == 3 * n + 1
        killer = await c.client.get(diamond_app.KILLED.format(pipeline_id=pid))
        assert killer is not None  # a worker really died at the claim->send point
        with pytest.raises(ProcessLookupError):
            os.kill(int(killer), 0)
        node_count = diamond_app.NODE_COUNT
        assert await c.count(node_count.format(pipeline_id=pid, node="left")) == 1
        assert await c.count(node_count.format(pipeline_id=pid, node="right")) == 1
        assert await c.count(diamond_app.MERGE_COUNT.format(pipeline_id=pid)) == 1
        assert status.node("left").attempts == 2
        assert status.node("right").attempts == 2
        assert status.node("merge").attempts == 1
        assert not await c.producer.storage.exists(f"pipeline-active:{pid}")
    stats = producer.get_stats()
    assert stats["steps_redriven"] == stats["sweeps"] == 0  # the workers did it all
    assert "Traceback" not in c.logs()


async def test_chaos_fifty_diamonds_while_a_worker_keeps_dying(cluster, diamond_app) -> None:
    c = cluster(TASKIQ_FLOW_IT_STEP_DELAY="0.05")
    c.start_worker()
    victim = c.start_worker()
    await c.producer.broker.startup()
    await c.ready()
    stop = asyncio.Event()
    kills = 0

    async def chaos() -> None:
        nonlocal victim, kills
        while not stop.is_set():
            await asyncio.sleep(1.5)
            victim.kill(signal.SIGKILL)
            victim.stop(grace=0)
            kills += 1
            victim = c.start_worker()

    started = time.monotonic()
    killer = asyncio.create_task(chaos())
    try:
        runs = []
        for n in range(50):
            runs.append(await c.producer.pipeline.kiq(n=n, pipeline_id=f"chaos-{n}"))
            await asyncio.sleep(0.1)
        results = await asyncio.wait_for(
            asyncio.gather(*(run.wait_result(timeout=60, poll_interval=0.1) for run in runs)), 70
        )
    finally:
        stop.set()
        await killer
    assert not [r.error for r in results if r.is_err]
    assert [r.return_value["merged"] for r in results] == [3 * n + 1 for n in range(50)]
    merges = [
        await c.count(diamond_app.MERGE_COUNT.format(pipeline_id=run.pipeline_id)) for run in runs
    ]
    assert min(merges) >= 1
    redriven = [
        sum(node.attempts - 1 for node in (await run.status()).nodes if node.attempts > 1)
        for run in runs
    ]
    assert kills >= 3
    sys.stdout.write(
        f"\n[pipeline-chaos] runs=50 kills={kills} re-sent steps={sum(redriven)} "
        f"runs with a re-send={sum(1 for r in redriven if r)} merge ran >1 in "
        f"{sum(1 for m in merges if m > 1)} runs (max {max(merges)}) "
        f"elapsed={time.monotonic() - started:.1f}s\n",
    )


async def test_fan_out_over_a_hundred_elements_on_two_workers(cluster, diamond_app) -> None:
    # A lease no queue wait here comes near: a re-send would be a (harmless) duplicate
    # execution, and this test counts executions exactly.
    c = cluster(lease=30.0)
    c.start_worker()
    c.start_worker()
    await c.producer.broker.startup()
    await c.ready()
    deadline = time.monotonic() + 30
    while len(await c.client.keys("it:pipeline:stats:*")) < 2:  # both workers consume
        assert time.monotonic() < deadline
        await asyncio.gather(*(c.producer.pipeline.kiq_dataflow(n=n, timeout=30) for n in range(8)))
    run = await c.producer.fan_out.kiq(items=list(range(100)), pipeline_id="fan-1")
    result = await run.wait_result(timeout=30)
    assert result.return_value == {"squares": [i * i for i in range(100)]}
    by_pid = await c.client.hgetall(diamond_app.SQUARES_BY_PID.format(pipeline_id="fan-1"))
    assert sum(int(v) for v in by_pid.values()) == 100  # 100 executions, no more
    assert len(by_pid) == 2, by_pid  # both workers took elements


async def test_cancel_a_ten_step_chain_and_show_it(cluster, diamond_app, redis_url) -> None:
    c = cluster()
    c.start_worker()
    c.start_worker()
    await c.producer.broker.startup()
    await c.ready()
    run = await c.producer.chain.kiq(x0=0, pipeline_id="chain-1")
    node_count = diamond_app.NODE_COUNT
    deadline = time.monotonic() + 20
    while not await c.count(node_count.format(pipeline_id="chain-1", node="s4")):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    assert (await run.status()).node("s4").state == "running"
    assert await c.producer.chain.cancel("chain-1")
    await c.client.set(diamond_app.GATE.format(pipeline_id="chain-1"), 1)  # s4 may finish
    with pytest.raises(PipelineCancelledError):
        await run.wait_result(timeout=10)
    deadline = time.monotonic() + 10
    while (await run.status()).node("s4").state != "done":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)  # time enough for a wrongly sent s5 to start
    counts = [
        await c.count(node_count.format(pipeline_id="chain-1", node=f"s{i}")) for i in range(10)
    ]
    assert counts == [1] * 5 + [0] * 5

    cli = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "taskiq_flow.factory.cli",
        "pipeline",
        "show",
        "chain-1",
        "--storage-redis-url",
        redis_url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if not k.startswith("TASKIQ_FLOW_")},
    )
    out, err = await cli.communicate()
    assert cli.returncode == 0, err.decode()
    text = out.decode()
    assert text.startswith("pipeline chain-1: cancelled\n")
    lines = text.splitlines()
    assert any("s4 -> x5" in line and "done" in line for line in lines)
    assert any("s5 -> x6" in line and "cancelled" in line for line in lines)
    assert "Traceback" not in c.logs()
