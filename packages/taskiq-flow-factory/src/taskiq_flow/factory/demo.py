"""The demo workload: repeated tasks through a broker with both middlewares.

It is what ``taskiq-flow demo`` runs: ``tasks`` calls of one task over ``distinct``
different inputs, ``concurrency`` at a time, through an ``InMemoryBroker`` carrying
the ``CacheMiddleware`` and ``StorageMiddleware`` that ``StorageAdapterFactory``
builds from the configuration. It counts real executions of the function (not
cache statistics) and checks every result against a locally computed one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
import uuid
from collections import Counter
from typing import Any

from taskiq import InMemoryBroker

from taskiq_flow.config import TaskiqFlowConfig
from taskiq_flow.factory._progress import Progress
from taskiq_flow.factory.builder import StorageAdapterFactory
from taskiq_flow.middlewares import (
    DataflowPipeline,
    PipelineMiddleware,
    StorageMiddleware,
    pipeline_task,
)
from taskiq_flow.storage import BaseStorageAdapter

__all__ = ["DEMO_TASK_NAME", "DemoReport", "run_demo"]

DEMO_TASK_NAME = "taskiq_flow.demo.fingerprint"
DEMO_PIPELINE_TEXT = "taskiq flow stores every result and answers repeats from cache"


def _expected(n: int) -> dict[str, Any]:
    digest = hashlib.sha256(f"taskiq-flow demo input {n}".encode()).hexdigest()
    return {"input": n, "sha256": digest}


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoReport:
    """What one demo run did, measured."""

    tasks: int
    distinct_inputs: int
    concurrency: int
    work_seconds: float
    executions: int
    saved_by_cache: int
    results_correct: int
    hit_rate: float
    lock_waits: int
    cache_stats: dict[str, Any]
    storage_stats: dict[str, Any]
    records_written: int
    records_in_store: int
    seconds: float
    storage_backend: str
    cache_backend: str
    pipeline_id: str
    pipeline_outputs: dict[str, Any]
    pipeline_steps_stored: int

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready data."""
        return dataclasses.asdict(self)


async def run_demo(
    config: TaskiqFlowConfig,
    *,
    tasks: int = 200,
    distinct: int = 20,
    concurrency: int | None = None,
    work_seconds: float = 0.05,
    progress: Progress | None = None,
) -> DemoReport:
    """Run the workload on ``config``'s adapters and return what happened.

    Args:
        config: where the cache and the records go.
        tasks: how many task calls to send.
        distinct: how many different inputs they use (``tasks // distinct`` calls each).
        concurrency: calls in flight at once (default: ``distinct``).
        work_seconds: how long one real execution of the task takes.
        progress: drawn as the results come in.
    """
    if tasks < 1 or distinct < 1 or distinct > tasks:
        msg = f"need 1 <= distinct <= tasks, got tasks={tasks}, distinct={distinct}"
        raise ValueError(msg)
    concurrency = concurrency or distinct
    middlewares = StorageAdapterFactory.create_default_middlewares(config)
    cache_mw, storage_mw = middlewares["cache"], middlewares["storage"]
    broker = InMemoryBroker(await_inplace=True)
    broker.add_middlewares(cache_mw, storage_mw)
    executions: Counter[int] = Counter()

    async def fingerprint(n: int) -> dict[str, Any]:
        executions[n] += 1
        await asyncio.sleep(work_seconds)  # stands for real work: I/O, a model, a query
        return _expected(n)

    task = broker.task(task_name=DEMO_TASK_NAME)(fingerprint)
    window = asyncio.Semaphore(concurrency)
    correct = 0

    async def call(n: int) -> None:
        nonlocal correct
        async with window:
            handle = await task.kiq(n)
            result = await handle.wait_result(timeout=60)
        if not result.is_err and result.return_value == _expected(n):
            correct += 1
        if progress is not None:
            progress.advance()

    started = time.perf_counter()
    await broker.startup()
    try:
        # Input i % distinct: the first window sees each input once, later ones repeat them.
        await asyncio.gather(*(call(i % distinct) for i in range(tasks)))
        seconds = time.perf_counter() - started
        pipeline_id, outputs, steps = await _run_pipeline(storage_mw.storage)
        count = 0
        async for _key in storage_mw.storage.iter_keys("task:*"):
            count += 1
    finally:
        if progress is not None:
            progress.close()
        await broker.shutdown()  # CacheMiddleware closes its cache; StorageMiddleware flushes
        await cache_mw.cache.close()
        await storage_mw.storage.close()
    cache_stats = dict(cache_mw.get_stats())
    storage_stats = dict(storage_mw.get_stats())
    ran = sum(executions.values())
    # The middleware's view: a call that waited for another call's execution (the
    # dogpile lock) was answered from the cache too, though the adapter counts a miss.
    counters = cache_stats.get("middleware", {})
    # Hits answered at kiq() (answer at send) never reach the worker: counted apart.
    answered = int(counters.get("hits", 0)) + int(counters.get("answered_at_send", 0))
    calls = answered + int(counters.get("executions", 0))
    return DemoReport(
        tasks=tasks,
        distinct_inputs=distinct,
        concurrency=concurrency,
        work_seconds=work_seconds,
        executions=ran,
        saved_by_cache=tasks - ran,
        results_correct=correct,
        hit_rate=answered / calls if calls else 0.0,
        lock_waits=int(cache_stats.get("lock_waits", 0)),
        cache_stats=cache_stats,
        storage_stats=storage_stats,
        records_written=int(storage_stats.get("records_written", 0)),
        records_in_store=count,
        seconds=seconds,
        storage_backend=config.resolved_storage_type,
        cache_backend=config.resolved_cache_type,
        pipeline_id=pipeline_id,
        pipeline_outputs=outputs,
        pipeline_steps_stored=steps,
    )


async def _run_pipeline(storage: BaseStorageAdapter) -> tuple[str, dict[str, Any], int]:
    """Run the demo's diamond pipeline once, on its own broker, into the same store.

    Its own broker keeps the workload's counters (executions, hit rate, records) about
    the workload alone; the shared store keeps every record in one place.
    """
    broker = InMemoryBroker(await_inplace=True)
    broker.add_middlewares(StorageMiddleware(storage=storage), PipelineMiddleware())
    pipeline = _demo_pipeline(broker)
    await broker.startup()
    try:
        run = await pipeline.kiq(
            text=DEMO_PIPELINE_TEXT,
            pipeline_id=f"demo-{uuid.uuid4().hex[:8]}",
        )
        outputs = (await run.wait_result(timeout=60)).return_value
        steps = len(await storage.keys(f"pipeline:{run.pipeline_id}:task:*"))
    finally:
        await broker.shutdown()
    return run.pipeline_id, dict(outputs or {}), steps


def _demo_pipeline(broker: InMemoryBroker) -> DataflowPipeline:
    """A diamond: split the text, count words and letters side by side, then merge."""

    @broker.task(task_name="taskiq_flow.demo.split")
    @pipeline_task(output="words")
    async def split(text: str) -> list[str]:
        return text.split()

    @broker.task(task_name="taskiq_flow.demo.count_words")
    @pipeline_task(output="word_count")
    async def count_words(words: list[str]) -> int:
        return len(words)

    @broker.task(task_name="taskiq_flow.demo.count_letters")
    @pipeline_task(output="letter_count")
    async def count_letters(words: list[str]) -> int:
        return sum(len(word) for word in words)

    @broker.task(task_name="taskiq_flow.demo.summary")
    @pipeline_task(output="summary")
    async def summary(word_count: int, letter_count: int) -> str:
        return f"{word_count} words, {letter_count} letters"

    return DataflowPipeline.from_tasks(broker, [split, count_words, count_letters, summary])
