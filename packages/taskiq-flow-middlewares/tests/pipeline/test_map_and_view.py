"""Fan-out with ``map_over``, and the pictures of a pipeline and of a run."""

from __future__ import annotations

import asyncio

import pytest

from taskiq_flow.middlewares import (
    DataflowPipeline,
    PipelineDefinitionError,
    PipelineStepError,
    pipeline_task,
)
from taskiq_flow.middlewares.pipeline import MAX_MAP_ELEMENTS, render_run


def fan_out(flow, *, fail_on: int | None = None) -> DataflowPipeline:
    @flow.broker.task
    @pipeline_task(output="items")
    async def listing(count: int) -> list[int]:
        return list(range(count))

    @flow.broker.task
    @pipeline_task(output="squares", map_over="items")
    async def square(items: int, offset: int = 0) -> int:
        flow.calls["square"] += 1
        await asyncio.sleep(0.001 * (items % 7))  # finish out of order
        if items == fail_on:
            raise ValueError(f"bad element {items}")
        return items * items + offset

    @flow.broker.task
    @pipeline_task(output="total")
    async def total(squares: list[int]) -> int:
        flow.calls["total"] += 1
        return sum(squares)

    return DataflowPipeline.from_tasks(flow.broker, [listing, square, total])


@pytest.mark.parametrize("await_inplace", [True, False], ids=["await_inplace", "background"])
async def test_map_over_a_hundred_elements(make_flow, await_inplace) -> None:
    flow = await make_flow(await_inplace=await_inplace)
    pipeline = fan_out(flow)
    run = await pipeline.kiq(count=100, offset=1, pipeline_id="map_1")
    result = await run.wait_result(timeout=10)
    assert result.return_value["squares"] == [i * i + 1 for i in range(100)]
    assert result.return_value["total"] == sum(i * i + 1 for i in range(100))
    await flow.broker.wait_all()
    assert flow.calls == {"square": 100, "total": 1}
    element_ids = sorted(
        m.task_id for m in flow.sends.sent if m.labels["pipeline_node"] == "square"
    )
    assert element_ids == sorted(f"{run.task_ids['square']}-{i}" for i in range(100))
    status = await run.status()
    assert (status.node("square").elements, status.node("square").elements_done) == (100, 100)
    assert status.node("square").state == "done"


async def test_a_failing_element_fails_the_node(make_flow) -> None:
    flow = await make_flow(await_inplace=False)
    pipeline = fan_out(flow, fail_on=7)
    with pytest.raises(PipelineStepError) as raised:
        await pipeline.kiq_dataflow(count=20, timeout=10)
    assert raised.value.node == "square"
    assert raised.value.element == 7
    assert raised.value.error_type == "ValueError"
    assert "element 7" in str(raised.value)
    await flow.broker.wait_all()
    assert flow.calls["total"] == 0


async def test_map_over_an_empty_list(make_flow) -> None:
    flow = await make_flow()
    assert await fan_out(flow).kiq_dataflow(count=0, timeout=5) == {
        "items": [],
        "squares": [],
        "total": 0,
    }


async def test_map_over_bad_input(make_flow) -> None:
    flow = await make_flow()

    @flow.broker.task
    @pipeline_task(output="doubled", map_over="values")
    async def double(values: int) -> int:
        return 2 * values

    pipeline = DataflowPipeline.from_tasks(flow.broker, [double])
    with pytest.raises(PipelineDefinitionError, match="must be a list, got int"):
        await pipeline.kiq(values=3)
    with pytest.raises(PipelineDefinitionError, match=f"the limit is {MAX_MAP_ELEMENTS}"):
        await pipeline.kiq(values=[0] * (MAX_MAP_ELEMENTS + 1))
    assert flow.sends.sent == []
    assert await pipeline.kiq_dataflow(values=[1, 2], timeout=5) == {"doubled": [2, 4]}

    with pytest.raises(PipelineDefinitionError, match="map_over='nope' must name a required"):

        @pipeline_task(output="y", map_over="nope")
        async def bad(values: int) -> int: ...

    with pytest.raises(PipelineDefinitionError, match="must name a required input"):

        @pipeline_task(output="y", map_over="values")
        async def optional(values: int = 0) -> int: ...


async def test_map_over_a_produced_non_list_fails_the_run(make_flow) -> None:
    flow = await make_flow()

    @flow.broker.task
    @pipeline_task(output="values")
    async def produce() -> int:
        return 3

    @flow.broker.task
    @pipeline_task(output="doubled", map_over="values")
    async def double(values: int) -> int:
        flow.calls["double"] += 1
        return 2 * values

    pipeline = DataflowPipeline.from_tasks(flow.broker, [produce, double])
    with pytest.raises(PipelineStepError) as raised:
        await pipeline.kiq_dataflow(timeout=5)
    assert raised.value.node == "double"
    assert raised.value.error_type == "PipelineDefinitionError"
    assert "must be a list, got int" in raised.value.error_message
    assert flow.calls["double"] == 0


async def test_mermaid_dot_and_run_picture(make_flow) -> None:
    flow = await make_flow(await_inplace=False)
    pipeline = fan_out(flow)
    mermaid = pipeline.to_mermaid()
    assert mermaid.startswith("flowchart TD\n")
    assert 'input__count(["count"])' in mermaid
    assert "input__count -->|count| listing" in mermaid
    assert "listing -->|items| square" in mermaid
    assert "square -->|squares| total" in mermaid
    assert "[map over items]" in mermaid
    dot = pipeline.to_dot()
    assert dot.startswith("digraph pipeline {")
    assert '"listing" -> "square" [label="items"];' in dot
    assert '"input:offset" -> "square" [label="offset"];' in dot

    run = await pipeline.kiq(count=3, pipeline_id="pic_1")
    await run.wait_result(timeout=5)
    status = await run.status()
    assert status.state == "done"
    assert status.finished_at is not None
    for node in status.nodes:
        assert node.state == "done"
        assert node.claimed_at <= node.sent_at
        assert node.started_at <= node.finished_at
    text = render_run(status, (await _spec(flow, "pic_1")).nodes)
    assert text.startswith("pipeline pic_1: done\n")
    assert "square -> squares" in text
    assert "done 3/3" in text
    assert status.to_dict()["nodes"][0]["name"] == "listing"


async def _spec(flow, pipeline_id: str):
    return await flow.pipeline.load_spec(pipeline_id)
