"""A diamond pipeline over two real `taskiq worker` processes, state in Redis.

200 runs of ``source -> left, right -> merge`` through a ListQueueBroker; the run state
and the step records live in a RedisStorageAdapter on the same private server. Each
``merge`` execution is counted with INCR, in the worker, per run: exactly one per run,
also when every worker sleeps between writing an output and reading readiness, which
makes left and right both see merge ready and race for its claim. Each such race is
settled by ``add`` (the loser's claim fails: ``claims_lost``) or by the loser reading the
winner's claim (``claims_taken``); the workers publish these counters to Redis.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from taskiq_flow_testing import WorkerProcess

APP_DIR = Path(__file__).parent / "pipeline_app"
RUNS = 200

pytestmark = pytest.mark.redis


@pytest.fixture
def diamond_app(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(APP_DIR))
    import diamond_app

    return diamond_app


async def _worker_stats(client: aioredis.Redis) -> dict[str, int]:
    totals: dict[str, int] = {}
    async for key in client.scan_iter(match="it:pipeline:stats:*"):
        for name, value in (await client.hgetall(key)).items():
            totals[name.decode()] = totals.get(name.decode(), 0) + int(value)
    return totals


@pytest.mark.parametrize("delay", [0.0, 0.02], ids=["no_delay", "delayed_readiness"])
async def test_diamond_two_workers_merge_once_per_run(
    diamond_app, redis_url: str, tmp_path: Path, delay: float
) -> None:
    queue = f"it-pipeline-{uuid.uuid4().hex[:8]}"
    env = {
        "TASKIQ_FLOW_IT_REDIS_URL": redis_url,
        "TASKIQ_FLOW_IT_QUEUE": queue,
        "TASKIQ_FLOW_IT_READINESS_DELAY": str(delay),
    }
    workers = [
        WorkerProcess(
            "diamond_app:create_broker",
            app_dir=APP_DIR,
            env=env,
            log_path=tmp_path / f"worker{i}.log",
        ).start()
        for i in range(2)
    ]
    producer = diamond_app.build(redis_url, queue)
    client = aioredis.from_url(redis_url)
    started = time.monotonic()
    try:
        await producer.broker.startup()
        prefix = "delayed" if delay else "plain"
        runs = await asyncio.gather(
            *(producer.pipeline.kiq(n=n, pipeline_id=f"{prefix}-{n}") for n in range(RUNS)),
        )
        results = await asyncio.wait_for(
            asyncio.gather(*(run.wait_result(timeout=60, poll_interval=0.2) for run in runs)),
            timeout=70,
        )
        failed = [r.error for r in results if r.is_err]
        assert not failed, failed[:3]
        assert [r.return_value["merged"] for r in results] == [3 * n + 1 for n in range(RUNS)]

        # Every step's post_save has published its counters once it reports 4 steps/run.
        deadline = time.monotonic() + 15
        while True:
            stats = await _worker_stats(client)
            if stats.get("steps_advanced", 0) >= 4 * RUNS or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert stats["steps_advanced"] == 4 * RUNS, stats

        counts = await client.mget(
            [diamond_app.MERGE_COUNT.format(pipeline_id=run.pipeline_id) for run in runs],
        )
        executions = [int(c) if c is not None else 0 for c in counts]
        assert executions == [1] * RUNS, {
            run.pipeline_id: c for run, c in zip(runs, executions, strict=True) if c != 1
        }

        producer_stats = producer.broker.middlewares[-1].get_stats()
        # Roots are claimed by the producer; left/right by source's worker; merge by
        # left's or right's: exactly 4 claims won per run, in all processes together.
        assert producer_stats["claims_won"] + stats["claims_won"] == 4 * RUNS
        assert stats["steps_sent"] == 3 * RUNS
        assert stats["runs_done"] == RUNS
        assert stats["errors"] == 0
        races = stats["claims_lost"] + stats["claims_taken"]
        if delay:
            # left and right met before reading: in every run both saw merge ready.
            assert races == RUNS, stats
            assert stats["claims_lost"] >= 1, stats
        # Each run has its four step records under pipeline:{id}:task:*.
        records = [k async for k in client.scan_iter(match="taskiq_flow:pipeline:*:task:*")]
        assert len(records) == 4 * RUNS
        print(
            f"\n[pipeline-it] delay={delay}s runs={RUNS} merge_executions={sum(executions)} "
            f"races={races} (lost_add={stats['claims_lost']} saw_claim={stats['claims_taken']}) "
            f"elapsed={time.monotonic() - started:.1f}s",
        )
        assert all(w.alive for w in workers)
    finally:
        for w in workers:  # SIGTERM both first, so their grace periods overlap
            w.kill(signal.SIGTERM)
        for w in workers:
            w.stop()
        await producer.close()
        await client.aclose()
    logs = "".join((tmp_path / f"worker{i}.log").read_text() for i in range(2))
    assert "could not advance" not in logs
    assert "Traceback" not in logs, logs[-3000:]
