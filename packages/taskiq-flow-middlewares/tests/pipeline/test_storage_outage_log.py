"""A storage outage under running pipelines: many failures, a handful of log lines.

Real parts: a private redis-server with an append-only file (so run state survives the
SIGKILL), killed while 20 runs' first steps are running and started again 2.5 s later.
Every step that finishes during the outage fails to save its output (and its markers,
and each retry); the middleware reports all of it through one ``OutageLog``, the
sweeper through its own, and the runs finish once the store is back.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections import Counter

import pytest

from taskiq_flow.middlewares import DataflowPipeline, PipelineMiddleware, pipeline_task
from taskiq_flow.storage import RedisStorageAdapter
from taskiq_flow_testing import RedisServer

pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
]

RUNS = 20
OUTAGE_SECONDS = 2.5
INTERVAL = 1.0


async def test_pipeline_storage_outage_is_logged_at_a_rate(make_flow, caplog) -> None:
    caplog.set_level(logging.INFO, logger="taskiq_flow")
    server = RedisServer(extra_args=["--appendonly", "yes", "--appendfsync", "always"]).start()
    # retries=0: a refused connection fails at once; a generous connect timeout for the
    # reads after the restart on a busy machine.
    store = RedisStorageAdapter(server.url, connect_timeout=2.0, retries=0)
    pipe = PipelineMiddleware(store, lease_seconds=1.0, error_log_interval=INTERVAL)
    calls: Counter[str] = Counter()
    all_started = asyncio.Event()
    outage_on = asyncio.Event()
    try:
        flow = await make_flow(await_inplace=False, storage=store, pipeline=pipe)

        @flow.broker.task(task_name="outage.source")
        @pipeline_task(output="raw")
        async def source(n: int) -> int:
            calls["source"] += 1
            if calls["source"] == RUNS:
                all_started.set()
            await outage_on.wait()  # every first attempt finishes during the outage
            await asyncio.sleep(0.05)
            return n

        @flow.broker.task(task_name="outage.double")
        @pipeline_task(output="doubled")
        async def double(raw: int) -> int:
            calls["double"] += 1
            return raw * 2

        pipeline = DataflowPipeline.from_tasks(flow.broker, [source, double])
        runs = [await pipeline.kiq(n=i) for i in range(RUNS)]
        await asyncio.wait_for(all_started.wait(), 10)
        await asyncio.to_thread(server.kill)
        outage_on.set()
        await asyncio.sleep(OUTAGE_SECONDS)
        await asyncio.to_thread(server.start)

        results = await asyncio.gather(*(run.wait_result(timeout=10) for run in runs))
        for i, result in enumerate(results):
            assert not result.is_err, result.error
            assert result.return_value == {"raw": i, "doubled": 2 * i}
        await flow.broker.shutdown()  # flushes the records while the store is up
    finally:
        await store.close()
        server.stop()

    lines = [r for r in caplog.records if r.name == "taskiq_flow.pipeline"]
    storage_lines = [r for r in lines if "pipeline storage" in r.getMessage()]
    sweeper_lines = [r for r in lines if "pipeline sweeper" in r.getMessage()]
    messages = [r.getMessage() for r in lines]
    # Every source step finished during the outage and failed: its finish marker, each
    # attempt to write its output, then the step as a whole (5 each, at least).
    assert pipe.outage.failures >= 5 * RUNS, messages
    # ... reported as: the first at once, one line per INTERVAL, one "recovered".
    failed = [r for r in storage_lines if "failed" in r.getMessage()]
    assert 1 <= len(failed) <= OUTAGE_SECONDS / INTERVAL + 2, messages
    assert sum("recovered" in r.getMessage() for r in storage_lines) == 1, messages
    assert pipe.outage.recoveries == 1
    # The sweeper's own reports (index scans during the outage) are rate-limited too.
    assert len(sweeper_lines) <= OUTAGE_SECONDS / INTERVAL + 3, messages
    # Nothing else from the pipelines: no line per step.
    assert len(lines) == len(storage_lines) + len(sweeper_lines), messages
    assert len(lines) <= 10, messages
    assert calls["double"] >= RUNS
    print(  # the figures, for the record (-s)
        f"\nstorage failures={pipe.outage.failures} sweeper failures="
        f"{pipe._sweeper.outage.failures} -> {len(lines)} lines "
        f"({len(storage_lines)} storage, {len(sweeper_lines)} sweeper); source runs="
        f"{calls['source']} double runs={calls['double']}"
    )
    for message in messages:
        print("   ", message[:170])
