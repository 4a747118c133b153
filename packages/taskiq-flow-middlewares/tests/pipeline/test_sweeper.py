"""The sweeper: a run nobody waits for still finishes after its sender "died".

As in ``test_recovery.py``, a dead sender is one that never returns from the
``before_send`` hook (after winning a claim, before sending). Here nobody calls
``wait_result``: the runs are only read from storage, and it is the middleware's own
sweeper (``PipelineMiddleware.startup`` under ``InMemoryBroker``) that re-drives them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

import pytest
from taskiq import Context, TaskiqDepends, TaskiqEvents

from taskiq_flow.middlewares import (
    DataflowPipeline,
    PipelineMiddleware,
    pipeline_task,
)
from taskiq_flow.storage import InMemoryStorageAdapter, RedisStorageAdapter

LEASE = 0.3


class DeadSender(PipelineMiddleware):
    """The first send of ``node`` (attempt 1) of every run hangs until ``released``."""

    def __init__(self, node: str | None = "left", **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.node = node
        self.released = asyncio.Event()
        self.hung: list[str] = []

    async def before_send(self, pipeline_id: str, node: str, attempt: int) -> None:
        if node == self.node and attempt == 1:
            self.hung.append(pipeline_id)
            await self.released.wait()


@pytest.fixture
def release_all():
    """Wake every hung sender at teardown, also when the test failed."""
    hung: list[DeadSender] = []
    yield hung.append
    for pipe in hung:
        pipe.released.set()


def diamond(flow, ran: Counter[tuple[str, str]]) -> DataflowPipeline:
    """source -> left, right -> merge; executions counted per (run, node) in ``ran``."""

    def count(context: Context, node: str) -> None:
        ran[context.message.labels["pipeline_id"], node] += 1

    @flow.broker.task(task_name="sweep.source")
    @pipeline_task(output="raw")
    async def source(n: int, context: Context = TaskiqDepends()) -> int:
        count(context, "source")
        return n

    @flow.broker.task(task_name="sweep.left")
    @pipeline_task(output="left_v")
    async def left(raw: int, context: Context = TaskiqDepends()) -> int:
        count(context, "left")
        return raw + 1

    @flow.broker.task(task_name="sweep.right")
    @pipeline_task(output="right_v")
    async def right(raw: int, context: Context = TaskiqDepends()) -> int:
        count(context, "right")
        return raw * 2

    @flow.broker.task(task_name="sweep.merge")
    @pipeline_task(output="merged")
    async def merge(left_v: int, right_v: int, context: Context = TaskiqDepends()) -> int:
        count(context, "merge")
        return left_v + right_v

    return DataflowPipeline.from_tasks(flow.broker, [source, left, right, merge])


async def wait_done(storage, pipeline_ids: list[str], within: float = 10.0) -> None:
    """Poll the run state in storage (no ``wait_result``: nobody watches these runs)."""
    deadline = time.monotonic() + within
    keys = [f"pipeline:{pid}:done" for pid in pipeline_ids]
    while len(await storage.get_many(keys)) < len(keys):
        assert time.monotonic() < deadline, "runs not done: the sweeper did not re-drive them"
        await asyncio.sleep(0.02)


async def test_a_run_nobody_waits_for_is_finished_by_the_sweeper(make_flow, release_all) -> None:
    pipe = DeadSender(lease_seconds=LEASE)
    release_all(pipe)
    flow = await make_flow(await_inplace=False, pipeline=pipe)
    ran: Counter[tuple[str, str]] = Counter()
    pipeline = diamond(flow, ran)
    assert pipe.sweep_interval == LEASE / 2  # "auto"

    await pipeline.kiq(n=5, pipeline_id="nobody_1")  # the run handle is dropped
    assert await flow.storage.exists("pipeline-active:nobody_1")  # indexed at kiq
    await wait_done(flow.storage, ["nobody_1"])

    status = await (await pipeline.run("nobody_1")).status()
    assert status.state == "done"
    assert pipe.hung == ["nobody_1"]  # its first sender of left "died" holding the claim
    assert status.node("left").attempts == 2
    assert status.node("right").attempts == 2  # queued behind left in the dead send loop
    assert status.node("merge").attempts == 1
    assert await flow.storage.get("pipeline:nobody_1:data:merged") == 16
    assert ran == {("nobody_1", n): 1 for n in ("source", "left", "right", "merge")}
    stats = pipe.get_stats()
    assert stats["steps_redriven"] == 2
    assert stats["sweeps"] >= 1
    assert stats["runs_swept"] >= 1
    assert stats["errors"] == 0
    assert not await flow.storage.exists("pipeline-active:nobody_1")  # dropped at done


async def test_without_a_sweeper_the_run_stays_stalled(make_flow, release_all) -> None:
    pipe = DeadSender(lease_seconds=0.1, sweep_interval=None)
    release_all(pipe)
    flow = await make_flow(await_inplace=False, pipeline=pipe)
    run = await diamond(flow, Counter()).kiq(n=1, pipeline_id="nobody_2")
    await asyncio.sleep(0.5)  # five leases, nobody watching
    status = await run.status()
    assert status.state == "running"
    assert status.stalled
    assert pipe.get_stats()["sweeps"] == 0
    # A waiting caller still re-drives it (the watcher the sweeper shares its code with).
    assert (await run.wait_result(timeout=5)).return_value["merged"] == 4


async def test_several_sweepers_send_each_lapsed_step_once(make_flow, release_all) -> None:
    # Three "workers" (brokers) over one store, all sweeping every 20 ms: each lapsed
    # claim is re-sent by exactly one of them (add claim:{node}:{n+1} has one winner).
    storage = InMemoryStorageAdapter()
    ran: Counter[tuple[str, str]] = Counter()
    pipes = [
        DeadSender(node="left" if i == 0 else None, lease_seconds=LEASE, sweep_interval=0.02)
        for i in range(3)
    ]
    flows = []
    for pipe in pipes:
        release_all(pipe)
        flows.append(await make_flow(await_inplace=False, storage=storage, pipeline=pipe))
    pipelines = [diamond(flow, ran) for flow in flows]

    run_ids = [f"many_{i}" for i in range(10)]
    for pid in run_ids:
        await pipelines[0].kiq(n=1, pipeline_id=pid)
    await wait_done(storage, run_ids)

    assert sorted(pipes[0].hung) == run_ids
    for pid in run_ids:
        assert ran[pid, "left"] == ran[pid, "right"] == ran[pid, "merge"] == 1, pid
        claims = await storage.keys(f"pipeline:{pid}:claim:left*")
        assert claims == [f"pipeline:{pid}:claim:left", f"pipeline:{pid}:claim:left:2"]
    stats = [pipe.get_stats() for pipe in pipes]
    assert sum(s["steps_redriven"] for s in stats) == 2 * len(run_ids)  # left and right
    assert all(s["sweeps"] > 0 for s in stats)
    assert await storage.keys("pipeline-active:*") == []


async def test_the_index_follows_the_run_state(make_flow) -> None:
    flow = await make_flow(pipeline=PipelineMiddleware(sweep_interval=0))
    assert flow.pipeline.sweep_interval is None

    @flow.broker.task(task_name="sweep.flaky")
    @pipeline_task(output="y")
    async def flaky(x: int) -> int:
        if x < 0:
            raise ValueError("negative")
        return x

    pipeline = DataflowPipeline.from_tasks(flow.broker, [flaky])
    await pipeline.kiq(x=1, pipeline_id="ok_1")  # await_inplace: done inside kiq
    failed = await pipeline.kiq(x=-1, pipeline_id="bad_1")
    assert (await failed.wait_result(timeout=5)).is_err
    assert await flow.storage.keys("pipeline-active:*") == []

    await pipeline.resume("bad_1")  # fails again, unindexed again
    assert await flow.storage.keys("pipeline-active:*") == []

    # An entry that outlived its run (a crash between ending and unindexing, or the
    # run's state expired) is dropped by the next sweep; a running run is kept.
    await flow.storage.set("pipeline-active:ok_1", {"at": 0})
    await flow.storage.set("pipeline-active:gone_1", {"at": 0})
    assert await flow.pipeline._sweeper.sweep() == 0
    assert await flow.storage.keys("pipeline-active:*") == []


async def test_cancel_drops_the_run_from_the_index(make_flow, release_all) -> None:
    pipe = DeadSender(lease_seconds=30)
    release_all(pipe)
    flow = await make_flow(await_inplace=False, pipeline=pipe)
    pipeline = diamond(flow, Counter())
    await pipeline.kiq(n=1, pipeline_id="cancel_s")
    assert await flow.storage.keys("pipeline-active:*") == ["pipeline-active:cancel_s"]
    assert await pipeline.cancel("cancel_s")
    assert await flow.storage.keys("pipeline-active:*") == []
    await pipeline.resume("cancel_s")
    assert await flow.storage.keys("pipeline-active:*") == ["pipeline-active:cancel_s"]


async def test_storage_errors_never_stop_the_sweeper(make_flow, caplog) -> None:
    # A real Redis client on a port nobody listens on: every sweep fails to connect.
    dead = RedisStorageAdapter("redis://127.0.0.1:1/0", connect_timeout=0.2, retries=0)
    pipe = PipelineMiddleware(dead, lease_seconds=0.2, sweep_interval=0.02)
    caplog.set_level(logging.WARNING, logger="taskiq_flow.pipeline")
    flow = await make_flow(pipeline=pipe)
    deadline = time.monotonic() + 5
    while pipe.get_stats()["errors"] < 3:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    assert pipe._sweeper.running  # still sweeping (the next one retries)
    warnings = [r for r in caplog.records if "pipeline sweeper" in r.getMessage()]
    assert len(warnings) == 1  # rate limited: once a minute
    assert "sweep failed" in warnings[0].getMessage()
    await flow.broker.shutdown()
    assert not pipe._sweeper.running
    await dead.close()


async def test_the_sweeper_stops_before_the_shutdown_handlers(make_flow) -> None:
    flow = await make_flow(pipeline=PipelineMiddleware(lease_seconds=0.1))
    sweeper = flow.pipeline._sweeper
    seen: list[bool] = []
    flow.broker.add_event_handler(
        TaskiqEvents.CLIENT_SHUTDOWN, lambda _state: seen.append(sweeper.running)
    )
    await flow.broker.startup()  # a second startup starts no second sweeper
    assert sweeper.running
    await flow.broker.shutdown()
    assert seen == [False]  # stopped before the app's own shutdown handlers ran
    assert not sweeper.running
    handlers = [h for event in TaskiqEvents for h in flow.broker.event_handlers[event]]
    assert sweeper._on_shutdown not in handlers


def test_sweep_interval_is_checked() -> None:
    assert PipelineMiddleware(lease_seconds=10).sweep_interval == 5.0
    assert PipelineMiddleware(sweep_interval=2).sweep_interval == 2.0
    assert PipelineMiddleware(sweep_interval=None).sweep_interval is None
    for bad in (-1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="sweep_interval"):
            PipelineMiddleware(sweep_interval=bad)
    with pytest.raises(TypeError, match="sweep_interval"):
        PipelineMiddleware(sweep_interval="fast")  # type: ignore[arg-type]
