"""Nodes start when their own inputs are ready; a deep chain does not recurse."""

from __future__ import annotations

import asyncio
import time

import pytest

from taskiq_flow.middlewares import DataflowPipeline, pipeline_task


async def test_nodes_start_when_their_own_inputs_are_ready(make_flow) -> None:
    # Level 0: slow (0.4 s) and fast; level 1: after_fast (needs fast), after_slow
    # (needs slow). Level by level, after_fast would wait for slow; dataflow does not.
    flow = await make_flow(await_inplace=False)

    def timed(output: str, delay: float):
        def wrap(func):
            async def body(**kw: int) -> int:
                started = flow.mark(output)
                await asyncio.sleep(delay)
                flow.span(output, started)
                return sum(kw.values()) + 1

            body.__name__ = func.__name__
            return body

        return wrap

    @flow.broker.task
    @pipeline_task(output="slow", inputs=["seed"])
    @timed("slow", 0.4)
    def slow_node(): ...

    @flow.broker.task
    @pipeline_task(output="fast", inputs=["seed"])
    @timed("fast", 0.01)
    def fast_node(): ...

    @flow.broker.task
    @pipeline_task(output="after_fast", inputs=["fast"])
    @timed("after_fast", 0.01)
    def after_fast_node(): ...

    @flow.broker.task
    @pipeline_task(output="after_slow", inputs=["slow", "after_fast"])
    @timed("after_slow", 0.01)
    def after_slow_node(): ...

    pipeline = DataflowPipeline.from_tasks(
        flow.broker,
        [slow_node, fast_node, after_fast_node, after_slow_node],
    )
    out = await pipeline.kiq_dataflow(seed=0, timeout=5)
    assert out == {"slow": 1, "fast": 1, "after_fast": 2, "after_slow": 4}

    slow_start, slow_end = flow.spans["slow"]
    fast_start, fast_end = flow.spans["fast"]
    after_fast_start, after_fast_end = flow.spans["after_fast"]
    after_slow_start, _ = flow.spans["after_slow"]
    # Both roots started together; after_fast ran entirely while slow was still running.
    assert abs(slow_start - fast_start) < 0.2
    assert slow_start < fast_end <= after_fast_start < slow_end
    assert after_fast_end < slow_end
    # after_slow waited for both of its inputs.
    assert after_slow_start >= max(slow_end, after_fast_end)


def _chain(broker, length: int, calls: list[int]):
    tasks = []
    for i in range(length):

        async def step(**previous: int) -> int:
            value = next(iter(previous.values()), 0) + 1
            calls.append(value)
            return value

        step.__name__ = f"step_{i}"
        declared = pipeline_task(output=f"v{i}", inputs=[f"v{i - 1}"] if i else [])(step)
        tasks.append(broker.register_task(declared, task_name=f"chain.step_{i}"))
    return DataflowPipeline.from_tasks(broker, tasks)


@pytest.mark.parametrize("await_inplace", [True, False], ids=["await_inplace", "background"])
async def test_300_node_chain_completes_without_recursion(make_flow, await_inplace) -> None:
    flow = await make_flow(await_inplace=await_inplace)
    calls: list[int] = []
    pipeline = _chain(flow.broker, 300, calls)
    started = time.monotonic()
    run = await pipeline.kiq(pipeline_id="chain_300")
    result = await run.wait_result(timeout=60)
    assert not result.is_err, result.error
    assert result.return_value["v299"] == 300
    assert calls == list(range(1, 301))
    assert time.monotonic() - started < 30
    if await_inplace:
        # Everything ran inside kiq (the trampoline drained every step before returning).
        assert await run.is_ready()
