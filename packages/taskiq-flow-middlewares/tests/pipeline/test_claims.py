"""Claim-by-add: a fan-in node is sent exactly once, also when its inputs land together."""

from __future__ import annotations

import asyncio

import pytest

from taskiq_flow.middlewares import DataflowPipeline, PipelineMiddleware, pipeline_task
from taskiq_flow.storage import RedisStorageAdapter


class RacyPipelineMiddleware(PipelineMiddleware):
    """Widens the window between writing an output and reading readiness.

    ``delay``: sleep that long. ``rendezvous``: left and right of a run wait for each
    other there, so both have written before either reads (merge is seen ready twice).
    """

    def __init__(self, delay: float = 0.0, *, rendezvous: bool = False) -> None:
        super().__init__()
        self.delay = delay
        self.rendezvous = rendezvous
        self.arrived: dict[str, int] = {}
        self.both: dict[str, asyncio.Event] = {}

    async def before_readiness_check(self, pipeline_id: str, node: str) -> None:
        if self.rendezvous and node in {"left", "right"}:
            self.arrived[pipeline_id] = self.arrived.get(pipeline_id, 0) + 1
            event = self.both.setdefault(pipeline_id, asyncio.Event())
            if self.arrived[pipeline_id] == 2:
                event.set()
            await asyncio.wait_for(event.wait(), timeout=5)
        await asyncio.sleep(self.delay)


def diamond(flow) -> DataflowPipeline:
    @flow.broker.task
    @pipeline_task(output="raw")
    async def source(n: int) -> int:
        return n

    @flow.broker.task
    @pipeline_task(output="left_v")
    async def left(raw: int) -> int:
        return raw + 1

    @flow.broker.task
    @pipeline_task(output="right_v")
    async def right(raw: int) -> int:
        return raw * 2

    @flow.broker.task
    @pipeline_task(output="merged")
    async def merge(left_v: int, right_v: int, n: int) -> int:
        flow.calls[f"merge:{n}"] += 1
        return left_v + right_v

    return DataflowPipeline.from_tasks(flow.broker, [source, left, right, merge])


@pytest.mark.parametrize(
    ("delay", "rendezvous"),
    [(0.0, False), (0.05, False), (0.0, True)],
    ids=["no_delay", "delayed_read", "rendezvous"],
)
async def test_diamond_merge_runs_once_per_run(make_flow, any_storage, delay, rendezvous) -> None:
    pipe = RacyPipelineMiddleware(delay, rendezvous=rendezvous)
    flow = await make_flow(await_inplace=False, storage=any_storage, pipeline=pipe)
    pipeline = diamond(flow)
    runs = 40

    started = await asyncio.gather(*(pipeline.kiq(n=n) for n in range(runs)))
    results = await asyncio.gather(*(run.wait_result(timeout=10) for run in started))
    assert [r.return_value["merged"] for r in results] == [3 * n + 1 for n in range(runs)]
    await flow.broker.wait_all()
    assert all(flow.calls[f"merge:{n}"] == 1 for n in range(runs))
    assert sum(flow.calls.values()) == runs
    stats = pipe.get_stats()
    assert stats["runs_started"] == runs
    assert stats["runs_done"] == runs
    # source claims left and right; left or right claims merge: 4 sends per run.
    assert stats["claims_won"] == 4 * runs
    assert stats["steps_sent"] == 4 * runs
    races = stats["claims_lost"] + stats["claims_taken"]
    if rendezvous:
        # Both wrote before either read: both saw merge ready in every run. Each race was
        # settled by add() (claims_lost: both read it unclaimed) or by reading the
        # winner's claim (claims_taken); never by a second send.
        assert races == runs
    elif delay:
        assert races >= 1
    if (delay or rendezvous) and isinstance(any_storage, RedisStorageAdapter):
        # A network round trip between read and add: some reads coincide.
        assert stats["claims_lost"] >= 1
    assert stats["claims_won"] + stats["claims_lost"] <= 5 * runs
