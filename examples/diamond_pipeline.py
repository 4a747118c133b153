"""A diamond dataflow pipeline on an in-memory broker.

    load(path) -> rows
    count(rows) -> n          mean(rows) -> avg        (both start as soon as rows exists)
    report(n, avg) -> report  (starts when both n and avg exist)

Run it with ``uv run python examples/diamond_pipeline.py``. It runs the pipeline twice:
the second run is answered from the cache (no function executes), and both runs'
history is in the one storage adapter, under ``pipeline:{pipeline_id}:``.
"""

from __future__ import annotations

import asyncio
import logging

from taskiq import InMemoryBroker

from taskiq_flow import DataflowPipeline, PipelineMiddleware, pipeline_task
from taskiq_flow.cache import InMemoryCacheAdapter
from taskiq_flow.middlewares import CacheMiddleware, PipelineStepError, StorageMiddleware
from taskiq_flow.storage import InMemoryStorageAdapter

broker = InMemoryBroker()
storage = InMemoryStorageAdapter()
broker.add_middlewares(
    CacheMiddleware(cache=InMemoryCacheAdapter(), default_ttl=3600),
    StorageMiddleware(storage=storage),
    PipelineMiddleware(),  # keeps run state in the StorageMiddleware's storage
)
executions: list[str] = []


@broker.task
@pipeline_task(output="rows")
async def load(path: str) -> list[float]:
    executions.append("load")
    await asyncio.sleep(0.05)
    if path.endswith(".bad"):
        raise FileNotFoundError(path)
    return [1.0, 2.0, 3.0, 4.0]


@broker.task
@pipeline_task(output="n")
async def count(rows: list[float]) -> int:
    executions.append("count")
    return len(rows)


@broker.task
@pipeline_task(output="avg")
def mean(rows: list[float]) -> float:  # sync tasks work too
    executions.append("mean")
    return sum(rows) / len(rows)


@broker.task
@pipeline_task(output="report")
async def report(n: int, avg: float, unit: str = "ms") -> str:  # unit: optional input
    executions.append("report")
    return f"{n} rows, mean {avg:.2f} {unit}"


async def main() -> None:
    # Run 3 fails on purpose; keep the worker's traceback of it out of the output.
    logging.getLogger("taskiq.receiver").setLevel(logging.CRITICAL)
    pipeline = DataflowPipeline.from_tasks(broker, [load, count, mean, report])
    print("inputs:", sorted(pipeline.inputs), "required:", sorted(pipeline.required_inputs))

    run = await pipeline.kiq(path="latency.csv", pipeline_id="latency_1")
    result = await run.wait_result(timeout=10)
    print("run 1:", result.return_value, f"({result.execution_time:.3f}s)")
    print("  executed:", executions)

    executions.clear()
    outputs = await pipeline.kiq_dataflow(path="latency.csv", pipeline_id="latency_2", timeout=10)
    print("run 2:", outputs)
    print("  executed:", executions or "nothing (every step came from the cache)")

    try:
        await pipeline.kiq_dataflow(path="missing.bad", pipeline_id="latency_3", timeout=10)
    except PipelineStepError as exc:
        print("run 3 failed:", exc)

    await broker.wait_all()
    print("stored under pipeline:latency_1:")
    for key in await storage.keys("pipeline:latency_1:*"):
        print("  ", key)
    await broker.shutdown()
    await storage.close()


if __name__ == "__main__":
    asyncio.run(main())
