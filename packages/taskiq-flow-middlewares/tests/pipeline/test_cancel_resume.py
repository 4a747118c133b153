"""Cancel a run mid-chain; resume a failed run without redoing finished steps."""

from __future__ import annotations

import asyncio

import pytest

from taskiq_flow.middlewares import (
    DataflowPipeline,
    PipelineCancelledError,
    PipelineError,
    PipelineRunNotFoundError,
    PipelineRunStateError,
    pipeline_task,
)

CHAIN = 10


def chain(flow, gate_at: int, gate: asyncio.Event, started: asyncio.Event) -> DataflowPipeline:
    """s0(x0) -> x1 -> s1 -> x2 ... -> s9 -> x10; s{gate_at} waits for ``gate``."""
    tasks = []
    for i in range(CHAIN):

        async def step(_i: int = i, **kwargs: int) -> int:
            flow.calls[f"s{_i}"] += 1
            if _i == gate_at:
                started.set()
                await gate.wait()
            return next(iter(kwargs.values())) + 1

        step.__name__ = f"s{i}"
        task = flow.broker.task(task_name=f"chain.s{i}")(
            pipeline_task(output=f"x{i + 1}", inputs=[f"x{i}"])(step),
        )
        tasks.append(task)
    return DataflowPipeline.from_tasks(flow.broker, tasks)


async def test_cancel_during_a_ten_step_chain(make_flow) -> None:
    flow = await make_flow(await_inplace=False)
    gate, started = asyncio.Event(), asyncio.Event()
    pipeline = chain(flow, gate_at=4, gate=gate, started=started)

    run = await pipeline.kiq(x0=0, pipeline_id="cancel_1")
    await asyncio.wait_for(started.wait(), 5)
    assert await run.cancel() is True
    assert await run.cancel() is False  # already cancelled: nothing to do
    gate.set()  # the running step finishes: its result is recorded, it starts nothing
    await asyncio.sleep(0.1)
    await flow.broker.wait_all()

    assert flow.calls == {f"s{i}": 1 for i in range(5)}  # s5..s9 never started
    assert await flow.storage.get("pipeline:cancel_1:data:x5") == 5  # s4's output is kept
    sent = [m.labels["pipeline_node"] for m in flow.sends.sent]
    assert sent == [f"s{i}" for i in range(5)]
    with pytest.raises(PipelineCancelledError) as raised:
        await run.wait_result(timeout=5)
    assert raised.value.pipeline_id == "cancel_1"
    assert isinstance(raised.value, PipelineError)

    status = await run.status()
    assert status.state == "cancelled"
    assert [status.node(f"s{i}").state for i in range(CHAIN)] == ["done"] * 5 + [
        "cancelled",
    ] * 5
    assert status.finished_at is not None
    assert await run.is_ready()


async def test_cancel_bad_input(make_flow) -> None:
    flow = await make_flow()
    pipeline = chain(flow, gate_at=-1, gate=asyncio.Event(), started=asyncio.Event())
    with pytest.raises(PipelineRunNotFoundError, match="nope"):
        await pipeline.cancel("nope")
    run = await pipeline.kiq(x0=0, pipeline_id="finished_1")
    assert (await run.wait_result(timeout=5)).return_value[f"x{CHAIN}"] == CHAIN
    with pytest.raises(PipelineRunStateError, match="it is done"):
        await pipeline.cancel("finished_1")
    with pytest.raises(PipelineRunStateError, match="cannot resume pipeline 'finished_1'"):
        await pipeline.resume("finished_1")
    with pytest.raises(PipelineRunNotFoundError):
        await pipeline.resume("nope")
    with pytest.raises(PipelineRunNotFoundError):
        await pipeline.run("nope")
    assert len(flow.sends.sent) == CHAIN  # none of the refusals sent anything


def flaky_chain(flow, broken: dict[str, bool]) -> DataflowPipeline:
    @flow.broker.task
    @pipeline_task(output="loaded")
    async def load(path: str) -> list[int]:
        flow.calls["load"] += 1
        return [1, 2, 3]

    @flow.broker.task
    @pipeline_task(output="side")
    async def side(loaded: list[int]) -> int:
        flow.calls["side"] += 1
        return len(loaded)

    @flow.broker.task
    @pipeline_task(output="parsed")
    async def parse(loaded: list[int]) -> list[int]:
        flow.calls["parse"] += 1
        if broken["parse"]:
            raise KeyError("column 'x' is missing")
        return [v * 10 for v in loaded]

    @flow.broker.task
    @pipeline_task(output="report")
    async def report(parsed: list[int], side: int) -> str:
        flow.calls["report"] += 1
        return f"{sum(parsed)}/{side}"

    return DataflowPipeline.from_tasks(flow.broker, [load, side, parse, report])


@pytest.mark.parametrize("await_inplace", [True, False], ids=["await_inplace", "background"])
async def test_resume_after_the_failing_step_is_fixed(make_flow, await_inplace) -> None:
    flow = await make_flow(await_inplace=await_inplace)
    broken = {"parse": True}
    pipeline = flaky_chain(flow, broken)

    run = await pipeline.kiq(path="in.csv", pipeline_id="resume_1")
    failed = await run.wait_result(timeout=5)
    assert failed.is_err
    assert failed.error.node == "parse"
    await flow.broker.wait_all()
    assert flow.calls == {"load": 1, "side": 1, "parse": 1}
    assert (await run.status()).state == "failed"

    broken["parse"] = False  # the fix is deployed
    resumed = await pipeline.resume("resume_1")
    assert resumed.pipeline_id == "resume_1"
    assert resumed.task_ids == run.task_ids
    result = await resumed.wait_result(timeout=5)
    assert not result.is_err
    assert result.return_value == {
        "loaded": [1, 2, 3],
        "side": 3,
        "parsed": [10, 20, 30],
        "report": "60/3",
    }
    await flow.broker.wait_all()
    # Finished steps did not run again; the failed one and its downstream ran once more.
    assert flow.calls == {"load": 1, "side": 1, "parse": 2, "report": 1}
    status = await run.status()
    assert status.state == "done"
    assert status.node("parse").attempts == 2
    assert status.node("load").attempts == 1
    # The same task id: the step record of parse now holds the successful attempt.
    record = await flow.storage.get(f"pipeline:resume_1:task:{run.task_ids['parse']}")
    assert record["is_err"] is False
    assert pipeline.resume is not None
    with pytest.raises(PipelineRunStateError):
        await pipeline.resume("resume_1")


async def test_resume_a_cancelled_run(make_flow) -> None:
    flow = await make_flow(await_inplace=False)
    gate, started = asyncio.Event(), asyncio.Event()
    pipeline = chain(flow, gate_at=2, gate=gate, started=started)
    run = await pipeline.kiq(x0=0, pipeline_id="cancel_2")
    await asyncio.wait_for(started.wait(), 5)
    await pipeline.cancel("cancel_2")
    gate.set()
    await asyncio.sleep(0.05)
    await flow.broker.wait_all()
    assert sum(flow.calls.values()) == 3
    resumed = await pipeline.resume("cancel_2")
    assert (await resumed.wait_result(timeout=5)).return_value[f"x{CHAIN}"] == CHAIN
    assert flow.calls == {f"s{i}": 1 for i in range(CHAIN)}
    assert (await run.status()).state == "done"
