"""Bad pipelines, inputs and ids raise PipelineDefinitionError before any message is sent."""

from __future__ import annotations

import pytest
from taskiq import InMemoryBroker

from taskiq_flow.middlewares import DataflowPipeline, PipelineDefinitionError, pipeline_task


async def test_missing_input(make_flow) -> None:
    flow = await make_flow()

    @flow.broker.task
    @pipeline_task(output="b")
    async def needs_a(a: int) -> int:
        return a

    pipeline = DataflowPipeline.from_tasks(flow.broker, [needs_a])
    with pytest.raises(PipelineDefinitionError, match=r"missing input\(s\) \['a'\]"):
        await pipeline.kiq()
    assert flow.sends.sent == []
    assert await flow.storage.keys("*") == []


async def test_unknown_and_produced_inputs(make_flow) -> None:
    flow = await make_flow()

    @flow.broker.task
    @pipeline_task(output="b")
    async def node(a: int) -> int:
        return a

    pipeline = DataflowPipeline.from_tasks(flow.broker, [node])
    with pytest.raises(PipelineDefinitionError, match=r"unknown input\(s\) \['typo'\]"):
        await pipeline.kiq(a=1, typo=2)
    with pytest.raises(PipelineDefinitionError, match="produced by the pipeline"):
        await pipeline.kiq(a=1, b=2)
    assert flow.sends.sent == []


async def test_duplicate_output(make_flow) -> None:
    flow = await make_flow()

    @flow.broker.task
    @pipeline_task(output="same")
    async def first(x: int) -> int:
        return x

    @flow.broker.task
    @pipeline_task(output="same")
    async def second(x: int) -> int:
        return x

    with pytest.raises(PipelineDefinitionError, match="duplicate output 'same'"):
        DataflowPipeline.from_tasks(flow.broker, [first, second])
    assert flow.sends.sent == []


async def test_cycle(make_flow) -> None:
    flow = await make_flow()

    @flow.broker.task
    @pipeline_task(output="a")
    async def make_a(c: int) -> int:
        return c

    @flow.broker.task
    @pipeline_task(output="b")
    async def make_b(a: int) -> int:
        return a

    @flow.broker.task
    @pipeline_task(output="c")
    async def make_c(b: int) -> int:
        return b

    @flow.broker.task
    @pipeline_task(output="d")
    async def make_d(x: int) -> int:
        return x

    with pytest.raises(
        PipelineDefinitionError, match=r"cycle among nodes \['make_a', 'make_b', 'make_c'\]"
    ):
        DataflowPipeline.from_tasks(flow.broker, [make_d, make_a, make_b, make_c])

    @flow.broker.task
    @pipeline_task(output="self_loop")
    async def loop(self_loop: int = 0) -> int:  # an optional input produced by itself
        return self_loop

    with pytest.raises(PipelineDefinitionError, match="cycle"):
        DataflowPipeline.from_tasks(flow.broker, [loop])
    assert flow.sends.sent == []


async def test_reused_pipeline_id(make_flow) -> None:
    flow = await make_flow()

    @flow.broker.task
    @pipeline_task(output="y")
    async def node(x: int) -> int:
        flow.calls["node"] += 1
        return x

    pipeline = DataflowPipeline.from_tasks(flow.broker, [node])
    run = await pipeline.kiq(x=1, pipeline_id="once")
    assert (await run.wait_result(timeout=5)).return_value == {"y": 1}
    sent_before = len(flow.sends.sent)
    with pytest.raises(PipelineDefinitionError, match="'once' is already used"):
        await pipeline.kiq(x=2, pipeline_id="once")
    assert len(flow.sends.sent) == sent_before == 1
    assert flow.calls["node"] == 1
    # The first run's data was not touched.
    assert await flow.storage.get("pipeline:once:data:x") == 1


@pytest.mark.parametrize(
    "bad",
    ["", "has:colon", "glob*", "sp ace", "a" * 129, "-leading", 42, "[x]"],
)
async def test_bad_pipeline_id(make_flow, bad) -> None:
    flow = await make_flow()

    @flow.broker.task
    @pipeline_task(output="y")
    async def node(x: int) -> int:
        return x

    with pytest.raises(PipelineDefinitionError, match="bad pipeline_id"):
        await DataflowPipeline.from_tasks(flow.broker, [node]).kiq(x=1, pipeline_id=bad)
    assert flow.sends.sent == []
    assert await flow.storage.keys("*") == []


async def test_unstorable_input_releases_the_id(make_flow) -> None:
    flow = await make_flow()

    @flow.broker.task
    @pipeline_task(output="y")
    async def node(x: object) -> int:
        return 1

    pipeline = DataflowPipeline.from_tasks(flow.broker, [node])
    with pytest.raises(PipelineDefinitionError, match="cannot store the inputs"):
        await pipeline.kiq(x=object(), pipeline_id="retry_me")
    assert flow.sends.sent == []
    assert await flow.storage.keys("*") == []
    assert (
        await (await pipeline.kiq(x=1, pipeline_id="retry_me")).wait_result(timeout=5)
    ).return_value == {"y": 1}


async def test_definition_errors_at_decoration_and_from_tasks() -> None:
    broker = InMemoryBroker()

    with pytest.raises(PipelineDefinitionError, match="identifier"):
        pipeline_task(output="not-an-identifier")
    with pytest.raises(PipelineDefinitionError, match="retries"):
        pipeline_task(output="x", retries=-1)

    async def f(a: int, b: int) -> int:
        return a + b

    with pytest.raises(PipelineDefinitionError, match=r"unknown input\(s\) \['c'\]"):
        pipeline_task(output="x", inputs=["a", "b", "c"])(f)
    with pytest.raises(
        PipelineDefinitionError, match=r"\['b'\] are not inputs and have no default"
    ):
        pipeline_task(output="x", inputs=["a"])(f)
    with pytest.raises(PipelineDefinitionError, match="not a string"):
        pipeline_task(output="x", inputs="a")(f)

    @broker.task
    async def undeclared(a: int) -> int:
        return a

    with pytest.raises(PipelineDefinitionError, match="no @pipeline_task"):
        DataflowPipeline.from_tasks(broker, [undeclared])
    with pytest.raises(PipelineDefinitionError, match="not a taskiq task"):
        DataflowPipeline.from_tasks(broker, [f])
    with pytest.raises(PipelineDefinitionError, match="at least one task"):
        DataflowPipeline.from_tasks(broker, [])

    other = InMemoryBroker()

    @other.task
    @pipeline_task(output="z")
    async def elsewhere(a: int) -> int:
        return a

    with pytest.raises(PipelineDefinitionError, match="not registered on this broker"):
        DataflowPipeline.from_tasks(broker, [elsewhere])

    @broker.task
    @pipeline_task(output="w")
    async def takes_timeout(timeout: float) -> float:
        return timeout

    with pytest.raises(PipelineDefinitionError, match="reserved"):
        DataflowPipeline.from_tasks(broker, [takes_timeout])

    @broker.task
    @pipeline_task(output="v")
    async def fine(a: int) -> int:
        return a

    # No PipelineMiddleware on the broker: refused before sending.
    with pytest.raises(PipelineDefinitionError, match="no PipelineMiddleware"):
        await DataflowPipeline.from_tasks(broker, [fine]).kiq(a=1)
    await broker.shutdown()
    await other.shutdown()
