"""A node that fails for good fails the run; downstream nodes never run."""

from __future__ import annotations

import asyncio

import pytest

from taskiq_flow.middlewares import (
    DataflowPipeline,
    PipelineError,
    PipelineStepError,
    pipeline_task,
)
from taskiq_flow.middlewares.pipeline import PipelineTimeoutError


def failing_pipeline(flow) -> DataflowPipeline:
    @flow.broker.task
    @pipeline_task(output="loaded")
    async def load(path: str) -> list[int]:
        flow.calls["load"] += 1
        return [1, 2, 3]

    @flow.broker.task
    @pipeline_task(output="parsed")
    async def parse(loaded: list[int]) -> list[int]:
        flow.calls["parse"] += 1
        raise KeyError("column 'x' is missing")

    @flow.broker.task
    @pipeline_task(output="side")
    async def side(loaded: list[int]) -> int:
        flow.calls["side"] += 1
        return len(loaded)

    @flow.broker.task
    @pipeline_task(output="report")
    async def report(parsed: list[int], side: int) -> str:
        flow.calls["report"] += 1
        return "never"

    @flow.broker.task
    @pipeline_task(output="summary")
    async def summary(report: str) -> str:
        flow.calls["summary"] += 1
        return "never"

    return DataflowPipeline.from_tasks(flow.broker, [load, parse, side, report, summary])


@pytest.mark.parametrize("await_inplace", [True, False], ids=["await_inplace", "background"])
async def test_failure_fails_the_run_and_stops_downstream(make_flow, await_inplace) -> None:
    flow = await make_flow(await_inplace=await_inplace)
    pipeline = failing_pipeline(flow)

    run = await pipeline.kiq(path="in.csv", pipeline_id="fails_1")
    result = await run.wait_result(timeout=5)
    assert result.is_err
    error = result.error
    assert isinstance(error, PipelineStepError)
    assert error.node == "parse"
    assert error.error_type == "KeyError"
    assert error.task_id == run.task_ids["parse"]
    assert "parse" in str(error)
    assert "KeyError" in str(error)
    assert "column 'x' is missing" in str(error)
    # Partial outputs: what was produced before the failure.
    assert result.return_value["loaded"] == [1, 2, 3]
    assert "report" not in result.return_value

    await flow.broker.wait_all()
    assert flow.calls["report"] == 0
    assert flow.calls["summary"] == 0
    assert flow.calls["parse"] == 1
    failed = await flow.storage.get("pipeline:fails_1:failed")
    assert failed["node"] == "parse"
    assert failed["error_type"] == "KeyError"
    assert not await flow.storage.exists("pipeline:fails_1:done")
    assert not await flow.storage.exists("pipeline:fails_1:claim:report")
    record = await flow.storage.get(f"pipeline:fails_1:task:{run.task_ids['parse']}")
    assert record["is_err"] is True

    with pytest.raises(PipelineStepError) as raised:
        await pipeline.kiq_dataflow(path="in.csv", timeout=5)
    assert raised.value.node == "parse"
    assert isinstance(raised.value, PipelineError)
    await flow.broker.wait_all()
    assert flow.calls["report"] == 0


class Opaque:
    """Nothing msgspec can encode."""


async def test_unstorable_output_fails_the_run(make_flow) -> None:
    flow = await make_flow()

    @flow.broker.task
    @pipeline_task(output="thing")
    async def make_thing() -> Opaque:
        return Opaque()

    @flow.broker.task
    @pipeline_task(output="after")
    async def after(thing: object) -> int:
        flow.calls["after"] += 1
        return 1

    pipeline = DataflowPipeline.from_tasks(flow.broker, [make_thing, after])
    with pytest.raises(PipelineStepError) as raised:
        await pipeline.kiq_dataflow(timeout=5)
    assert raised.value.node == "make_thing"
    assert raised.value.error_type == "StorageSerializationError"
    assert flow.calls["after"] == 0


async def test_wait_result_times_out_on_a_stuck_run(make_flow) -> None:
    flow = await make_flow(await_inplace=False)
    gate = asyncio.Event()

    @flow.broker.task
    @pipeline_task(output="late")
    async def late() -> int:
        await gate.wait()
        return 1

    run = await DataflowPipeline.from_tasks(flow.broker, [late]).kiq(pipeline_id="slow_1")
    with pytest.raises(PipelineTimeoutError) as raised:
        await run.wait_result(timeout=0.2)
    assert raised.value.pipeline_id == "slow_1"
    assert not await run.is_ready()
    gate.set()
    assert (await run.wait_result(timeout=5)).return_value == {"late": 1}
