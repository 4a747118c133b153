"""The issue's two-node example, run ids and keys, decorator forms, the guide's wiring."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Annotated

import pytest
from taskiq import Context, InMemoryBroker, TaskiqDepends

from taskiq_flow.middlewares import (
    DataflowPipeline,
    DataflowRun,
    PipelineMiddleware,
    StorageMiddleware,
    pipeline_task,
)
from taskiq_flow.middlewares.pipeline import LABEL_PIPELINE_ID, LABEL_PIPELINE_NODE
from taskiq_flow.storage import InMemoryStorageAdapter, RedisStorageAdapter


def two_node_pipeline(flow) -> DataflowPipeline:
    @flow.broker.task
    @pipeline_task(output="features")
    async def extract_features(data: list[int]) -> dict[str, int]:
        flow.calls["extract_features"] += 1
        return {"n": len(data)}

    @flow.broker.task
    @pipeline_task(output="stats")
    async def compute_stats(features: dict[str, int], data: list[int]) -> int:
        flow.calls["compute_stats"] += 1
        return sum(data) if features["n"] == len(data) else -1

    return DataflowPipeline.from_tasks(flow.broker, [extract_features, compute_stats])


@pytest.mark.parametrize("await_inplace", [True, False], ids=["await_inplace", "background"])
async def test_issue_example(make_flow, await_inplace: bool) -> None:
    flow = await make_flow(await_inplace=await_inplace)
    pipeline = two_node_pipeline(flow)

    run = await pipeline.kiq(data=[1, 2, 3], pipeline_id="audio_v1")
    assert isinstance(run, DataflowRun)
    assert run.pipeline_id == "audio_v1"
    assert set(run.task_ids) == {"extract_features", "compute_stats"}

    result = await run.wait_result(timeout=5)
    assert not result.is_err
    assert result.return_value == {"features": {"n": 3}, "stats": 6}

    await flow.broker.wait_all()
    keys = await flow.storage.keys("pipeline:audio_v1:task:*")
    assert keys == sorted(f"pipeline:audio_v1:task:{tid}" for tid in run.task_ids.values())
    for node, task_id in run.task_ids.items():
        record = await flow.storage.get(f"pipeline:audio_v1:task:{task_id}")
        assert record["pipeline_id"] == "audio_v1"
        assert record["is_err"] is False
        assert record["task_name"].endswith(node)

    assert await pipeline.kiq_dataflow(data=[1, 2, 3]) == {"features": {"n": 3}, "stats": 6}
    assert flow.calls == {"extract_features": 2, "compute_stats": 2}


async def test_run_state_keys_and_labels(make_flow) -> None:
    flow = await make_flow()
    pipeline = two_node_pipeline(flow)
    run = await pipeline.kiq(data=[1, 2, 3], pipeline_id="state_v1")
    await run.wait_result(timeout=5)

    state = set(await flow.storage.keys("pipeline:state_v1:*")) - set(
        await flow.storage.keys("pipeline:state_v1:task:*"),
    )
    assert state == {
        "pipeline:state_v1:spec",
        "pipeline:state_v1:done",
        "pipeline:state_v1:data:data",
        "pipeline:state_v1:data:features",
        "pipeline:state_v1:data:stats",
        "pipeline:state_v1:claim:extract_features",
        "pipeline:state_v1:claim:compute_stats",
        # signs of life (the lease): when each node was sent, started and finished
        "pipeline:state_v1:sent:extract_features",
        "pipeline:state_v1:sent:compute_stats",
        "pipeline:state_v1:step:extract_features",
        "pipeline:state_v1:step:compute_stats",
    }
    sent = {m.labels[LABEL_PIPELINE_NODE]: m for m in flow.sends.sent}
    assert set(sent) == {"extract_features", "compute_stats"}
    for node, message in sent.items():
        assert message.labels[LABEL_PIPELINE_ID] == "state_v1"
        assert message.task_id == run.task_ids[node]
    # A step message carries only its own inputs, never the whole pipeline.
    assert sent["extract_features"].kwargs == {"data": [1, 2, 3]}
    assert sent["compute_stats"].kwargs == {"features": {"n": 3}, "data": [1, 2, 3]}


async def test_guide_basic_usage_wiring() -> None:
    # The guide's Basic Usage wiring (its top-level import of the meta-package is covered
    # by tests-integration/test_guide_snippets.py; this package must pass without it).
    broker = InMemoryBroker(await_inplace=True)
    storage = InMemoryStorageAdapter()
    broker.add_middlewares(
        StorageMiddleware(storage=storage, enabled=True),
        PipelineMiddleware(),
    )

    @broker.task
    @pipeline_task(output="doubled")
    async def double(x: int) -> int:
        return 2 * x

    pipeline = DataflowPipeline.from_tasks(broker, [double])
    run = await pipeline.kiq(x=21, pipeline_id="guide_1")
    assert (await run.wait_result(timeout=5)).return_value == {"doubled": 42}
    # "one place": the run's state and its step records share the StorageMiddleware store.
    assert await storage.exists("pipeline:guide_1:spec")
    assert await storage.keys("pipeline:guide_1:task:*") == [
        f"pipeline:guide_1:task:{run.task_ids['double']}",
    ]
    await broker.shutdown()
    await storage.close()


async def test_two_node_example_on_redis_storage(make_flow, redis_url: str) -> None:
    store = RedisStorageAdapter(redis_url=redis_url)
    flow = await make_flow(await_inplace=False, storage=store)
    pipeline = two_node_pipeline(flow)
    run = await pipeline.kiq(data=[1, 2, 3], pipeline_id="audio_v1")
    result = await run.wait_result(timeout=5)
    assert result.return_value == {"features": {"n": 3}, "stats": 6}
    await flow.broker.wait_all()
    assert await store.keys("pipeline:audio_v1:task:*") == sorted(
        f"pipeline:audio_v1:task:{tid}" for tid in run.task_ids.values()
    )


async def test_decorator_orders_sync_tasks_and_depends(make_flow) -> None:
    flow = await make_flow(await_inplace=False)
    seen: dict[str, object] = {}

    @pipeline_task(output="a")  # outside @broker.task
    @flow.broker.task
    def make_a(x: int) -> int:  # sync: taskiq runs it in its executor
        seen["thread"] = threading.current_thread().name
        return x + 1

    @flow.broker.task
    @pipeline_task(output="b")  # inside @broker.task
    async def make_b(a: int, context: Context = TaskiqDepends()) -> dict[str, object]:
        return {"a": a, "pipeline_id": context.message.labels["pipeline_id"]}

    @flow.broker.task
    @pipeline_task(output="c")
    async def make_c(
        b: dict[str, object],
        ctx: Annotated[Context, TaskiqDepends()],
        scale: int = 10,
    ) -> int:
        assert ctx.message.labels["pipeline_node"] == "make_c"
        return int(b["a"]) * scale

    pipeline = DataflowPipeline.from_tasks(flow.broker, [make_c, make_b, make_a])
    assert pipeline.nodes == ("make_c", "make_b", "make_a")
    assert pipeline.inputs == {"x", "scale"}
    assert pipeline.required_inputs == {"x"}

    out = await pipeline.kiq_dataflow(x=1, pipeline_id="orders_1", timeout=5)
    assert out == {"c": 20, "b": {"a": 2, "pipeline_id": "orders_1"}, "a": 2}
    assert seen["thread"] != threading.main_thread().name
    # An optional input given to kiq reaches the node; not given, the default applies.
    assert (await pipeline.kiq_dataflow(x=1, scale=3, timeout=5))["c"] == 6


async def test_optional_input_produced_by_a_node_is_waited_for(make_flow) -> None:
    flow = await make_flow(await_inplace=False)

    @flow.broker.task
    @pipeline_task(output="slow")
    async def produce_slow() -> str:
        await asyncio.sleep(0.05)
        return "from node"

    @flow.broker.task
    @pipeline_task(output="final")
    async def use(slow: str = "default") -> str:
        return slow

    pipeline = DataflowPipeline.from_tasks(flow.broker, [produce_slow, use])
    assert await pipeline.kiq_dataflow(timeout=5) == {"slow": "from node", "final": "from node"}


async def test_explicit_inputs_and_kwargs_task(make_flow) -> None:
    flow = await make_flow()

    @flow.broker.task
    @pipeline_task(output="total", inputs=["left", "right"])
    async def total(**values: int) -> int:
        return sum(values.values())

    @flow.broker.task
    @pipeline_task(output="label", inputs=["total"], name="labeller")
    async def label(total: int, suffix: str = "!") -> str:
        return f"{total}{suffix}"

    pipeline = DataflowPipeline.from_tasks(flow.broker, [total, label])
    assert pipeline.nodes == ("total", "labeller")
    assert pipeline.inputs == {"left", "right"}
    assert await pipeline.kiq_dataflow(left=1, right=2) == {"total": 3, "label": "3!"}


async def test_pipeline_task_returns_its_argument() -> None:
    broker = InMemoryBroker()

    async def plain(x: int) -> int:
        return x

    assert pipeline_task(output="y")(plain) is plain
    decorated = broker.task(plain)
    assert pipeline_task(output="y")(decorated) is decorated
    # The function stays callable as before.
    assert await plain(3) == 3
    await broker.shutdown()


async def test_pipeline_middleware_without_any_storage_warns_and_works(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = InMemoryBroker(await_inplace=True)
    middleware = PipelineMiddleware()
    broker.add_middlewares(middleware)

    @broker.task
    @pipeline_task(output="y")
    async def one(x: int) -> int:
        return x + 1

    with caplog.at_level("WARNING", logger="taskiq_flow.pipeline"):
        out = await DataflowPipeline.from_tasks(broker, [one]).kiq_dataflow(x=1, timeout=5)
    assert out == {"y": 2}
    assert "no StorageMiddleware" in caplog.text
    assert isinstance(middleware.storage, InMemoryStorageAdapter)
    await broker.shutdown()


async def test_pipeline_middleware_uses_the_storage_middleware_store() -> None:
    broker = InMemoryBroker()
    store = InMemoryStorageAdapter()
    pipe = PipelineMiddleware()
    # Added before StorageMiddleware: the store is looked up on first use, not at add time.
    broker.add_middlewares(pipe, StorageMiddleware(storage=store))
    assert pipe.storage is store
    explicit = InMemoryStorageAdapter()
    assert PipelineMiddleware(explicit).storage is explicit
    await broker.shutdown()
    await store.close()
    await explicit.close()


async def test_step_record_return_value_is_json(make_flow) -> None:
    flow = await make_flow()
    pipeline = two_node_pipeline(flow)
    run = await pipeline.kiq(data=[4, 5], pipeline_id="json_1")
    await run.wait_result(timeout=5)
    record = await flow.storage.get(f"pipeline:json_1:task:{run.task_ids['compute_stats']}")
    assert json.loads(record["return_value"]) == 9


async def test_run_state_carries_the_run_ttl(make_flow) -> None:
    flow = await make_flow(pipeline=PipelineMiddleware(ttl_seconds=60))
    pipeline = two_node_pipeline(flow)
    run = await pipeline.kiq(data=[1], pipeline_id="ttl_1")
    await run.wait_result(timeout=5)
    state = [k for k in await flow.storage.keys("pipeline:ttl_1:*") if ":task:" not in k]
    assert len(state) == 11  # spec, done, 3 data, 2 claims, 2 sent, 2 step markers
    for key in state:
        entry = await flow.storage.get_entry(key)
        assert entry is not None
        assert 0 < entry.remaining_ttl() <= 60, key


def test_pipeline_middleware_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError, match="BaseStorageAdapter"):
        PipelineMiddleware(storage={})  # type: ignore[arg-type]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="ttl_seconds"):
            PipelineMiddleware(ttl_seconds=bad)  # type: ignore[arg-type]
