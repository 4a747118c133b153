"""No stuck runs: a step claimed but never sent (its process "died") is re-driven.

The crash window is made deterministic with the ``before_send`` hook: it runs after
the claim was won and before the message is sent. Here a "dead" sender never returns
from it (an in-process stand-in for SIGKILL; tests-integration kills a real worker at
the same point). The waiting ``wait_result`` watches the run, finds the claim's lease
lapsed and sends the step again, under the same task id.
"""

from __future__ import annotations

import asyncio

import pytest

from taskiq_flow.middlewares import (
    DataflowPipeline,
    PipelineMiddleware,
    PipelineStepError,
    PipelineTimeoutError,
    pipeline_task,
)


@pytest.fixture
def release_all():
    """Wake every hung sender at teardown, also when the test failed (else wait_all hangs)."""
    hung: list[DyingSender] = []
    yield hung.append
    for pipe in hung:
        pipe.released.set()


class DyingSender(PipelineMiddleware):
    """Every send of ``node`` in the first ``deaths`` attempts hangs until ``released``."""

    def __init__(self, node: str, deaths: int = 1, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.node = node
        self.deaths = deaths
        self.released = asyncio.Event()
        self.hung: list[int] = []

    async def before_send(self, pipeline_id: str, node: str, attempt: int) -> None:
        if node == self.node and attempt <= self.deaths:
            self.hung.append(attempt)
            await self.released.wait()


def diamond(flow) -> DataflowPipeline:
    @flow.broker.task
    @pipeline_task(output="raw")
    async def source(n: int) -> int:
        flow.calls["source"] += 1
        return n

    @flow.broker.task
    @pipeline_task(output="left_v")
    async def left(raw: int) -> int:
        flow.calls["left"] += 1
        return raw + 1

    @flow.broker.task
    @pipeline_task(output="right_v")
    async def right(raw: int) -> int:
        flow.calls["right"] += 1
        return raw * 2

    @flow.broker.task
    @pipeline_task(output="merged")
    async def merge(left_v: int, right_v: int) -> int:
        flow.calls["merge"] += 1
        return left_v + right_v

    return DataflowPipeline.from_tasks(flow.broker, [source, left, right, merge])


async def test_claim_without_send_is_redriven(make_flow, release_all) -> None:
    pipe = DyingSender("left", lease_seconds=0.3)
    release_all(pipe)
    flow = await make_flow(await_inplace=False, pipeline=pipe)
    pipeline = diamond(flow)

    run = await pipeline.kiq(n=5, pipeline_id="crash_1")
    result = await run.wait_result(timeout=10)
    assert result.return_value == {"raw": 5, "left_v": 6, "right_v": 10, "merged": 16}
    assert pipe.hung == [1]  # the first sender of left "died" holding the claim
    assert flow.calls == {"source": 1, "left": 1, "right": 1, "merge": 1}
    assert await flow.storage.exists("pipeline:crash_1:claim:left:2")
    assert (await flow.storage.get("pipeline:crash_1:sent:left"))["attempt"] == 2
    stats = pipe.get_stats()
    # The "dead" process had also claimed right (queued behind left in its send loop):
    # both claims lapsed and both nodes were sent again, each exactly once.
    assert stats["steps_redriven"] == 2
    assert await flow.storage.keys("pipeline:crash_1:claim:*") == [
        f"pipeline:crash_1:claim:{name}"
        for name in ("left", "left:2", "merge", "right", "right:2", "source")
    ]
    status = await run.status()
    assert status.state == "done"
    assert status.node("left").attempts == 2
    assert status.node("merge").attempts == 1
    # Both sends of left use the task id fixed at kiq: one record, where it was expected.
    left_sends = [m for m in flow.sends.sent if m.labels["pipeline_node"] == "left"]
    assert [m.task_id for m in left_sends] == [run.task_ids["left"]]

    # The "dead" sender wakes up after all (it was only slow): duplicate executions of
    # left and right, which change nothing: their output adds lose, merge is claimed.
    pipe.released.set()
    await asyncio.sleep(0.05)
    await flow.broker.wait_all()
    assert flow.calls == {"source": 1, "left": 2, "right": 2, "merge": 1}
    assert (await run.wait_result(timeout=1)).return_value["merged"] == 16


async def test_a_step_that_keeps_vanishing_fails_the_run(make_flow, release_all) -> None:
    pipe = DyingSender("left", deaths=99, lease_seconds=0.2, max_attempts=3)
    release_all(pipe)
    flow = await make_flow(await_inplace=False, pipeline=pipe)
    pipeline = diamond(flow)

    run = await pipeline.kiq(n=1, pipeline_id="lost_1")
    result = await run.wait_result(timeout=10)
    assert result.is_err
    assert isinstance(result.error, PipelineStepError)
    assert result.error.node == "left"
    assert result.error.error_type == "PipelineStepLost"
    assert "3 times" in result.error.error_message
    assert pipe.hung == [1, 2, 3]
    assert flow.calls["merge"] == 0
    assert (await run.status()).state == "failed"
    pipe.released.set()


async def test_timeout_reports_the_run_state(make_flow, release_all) -> None:
    pipe = DyingSender("left", lease_seconds=30)
    release_all(pipe)
    flow = await make_flow(await_inplace=False, pipeline=pipe)
    run = await diamond(flow).kiq(n=1, pipeline_id="slow_2")
    with pytest.raises(PipelineTimeoutError) as raised:
        await run.wait_result(timeout=0.2)
    assert raised.value.state == "running"
    assert "state: running" in str(raised.value)
    status = await run.status()
    assert status.node("left").state == "claimed"
    assert status.node("merge").state == "pending"
    assert status.node("source").state == "done"
    pipe.released.set()
    assert (await run.wait_result(timeout=5)).return_value["merged"] == 4


def test_lease_arguments_are_checked() -> None:
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="lease_seconds"):
            PipelineMiddleware(lease_seconds=bad)
    for bad_attempts in (0, 65, 1.5, True):
        with pytest.raises(ValueError, match="max_attempts"):
            PipelineMiddleware(max_attempts=bad_attempts)  # type: ignore[arg-type]
