"""With CacheMiddleware (the guide's order) a repeated run executes nothing and still finishes."""

from __future__ import annotations

import pytest

from taskiq_flow.cache import InMemoryCacheAdapter
from taskiq_flow.middlewares import CacheMiddleware, DataflowPipeline, pipeline_task


@pytest.mark.parametrize("await_inplace", [True, False], ids=["await_inplace", "background"])
async def test_second_identical_run_is_served_from_cache(make_flow, await_inplace) -> None:
    cache = CacheMiddleware(cache=InMemoryCacheAdapter(), default_ttl=3600)
    flow = await make_flow(await_inplace=await_inplace, before=(cache,))

    @flow.broker.task
    @pipeline_task(output="features")
    async def extract_features(data: list[int]) -> dict[str, int]:
        flow.calls["extract_features"] += 1
        return {"n": len(data)}

    @flow.broker.task
    @pipeline_task(output="stats")
    def compute_stats(features: dict[str, int], data: list[int]) -> int:  # sync
        flow.calls["compute_stats"] += 1
        return sum(data)

    pipeline = DataflowPipeline.from_tasks(flow.broker, [extract_features, compute_stats])
    first = await pipeline.kiq(data=[1, 2, 3], pipeline_id="cold")
    cold = await first.wait_result(timeout=5)
    assert cold.return_value == {"features": {"n": 3}, "stats": 6}
    assert flow.calls == {"extract_features": 1, "compute_stats": 1}

    second = await pipeline.kiq(data=[1, 2, 3], pipeline_id="warm")
    warm = await second.wait_result(timeout=5)
    assert warm.return_value == cold.return_value
    await flow.broker.wait_all()
    assert flow.calls == {"extract_features": 1, "compute_stats": 1}  # nothing executed

    for node, task_id in second.task_ids.items():
        record = await flow.storage.get(f"pipeline:warm:task:{task_id}")
        assert record is not None, node
        assert record["cached"] is True
        assert record["pipeline_id"] == "warm"
        assert record["is_err"] is False
    for task_id in first.task_ids.values():
        assert "cached" not in await flow.storage.get(f"pipeline:cold:task:{task_id}")
