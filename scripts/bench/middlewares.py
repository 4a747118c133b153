"""Middleware overhead: tasks/s through InMemoryBroker(await_inplace=True).

Side by side in one run: a bare broker vs the same broker with CacheMiddleware and
StorageMiddleware (in-memory adapters), for an all-miss workload (every call distinct)
and an all-hit workload (one call repeated); and, for a task that sleeps 20 ms, the
latency of a cache hit vs an execution.

    uv run python scripts/bench/middlewares.py [--tasks 2000] [--repeat 5] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from taskiq import InMemoryBroker

from taskiq_flow.cache import InMemoryCacheAdapter
from taskiq_flow.middlewares import CacheMiddleware, StorageMiddleware
from taskiq_flow.storage import InMemoryStorageAdapter


def make_broker(with_middlewares: bool, n: int) -> tuple[InMemoryBroker, Any, Any]:
    broker = InMemoryBroker(await_inplace=True, max_stored_results=n * 4)
    if with_middlewares:
        broker.add_middlewares(
            CacheMiddleware(InMemoryCacheAdapter(max_entries=n * 4)),
            StorageMiddleware(InMemoryStorageAdapter(max_entries=n * 4)),
        )

    @broker.task
    async def work(x: int) -> int:
        return x * 2

    @broker.task
    async def slow(x: int) -> int:
        await asyncio.sleep(0.02)
        return x

    return broker, work, slow


async def _one_round(work: Any, hit: bool, n: int, offset: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        await work.kiq(1 if hit else offset + i)
    return n / (time.perf_counter() - start)


async def compare(hit: bool, n: int, repeat: int) -> tuple[float, float]:
    """Median tasks/s of the bare broker and the middleware stack, rounds interleaved."""
    bare, _, _ = make_broker(False, n)
    stack, _, _ = make_broker(True, n)
    bare_work = bare.find_task(next(iter(bare.get_all_tasks())))
    stack_work = stack.find_task(next(iter(stack.get_all_tasks())))
    await bare.startup()
    await stack.startup()
    bare_samples, stack_samples = [], []
    try:
        await _one_round(stack_work, hit, 50, 10**8)  # warm both (imports, caches)
        await _one_round(bare_work, hit, 50, 10**8)
        for r in range(repeat):
            # Alternate which goes first so drift in machine load hits both alike.
            pair = [(bare_work, bare_samples), (stack_work, stack_samples)]
            for work, samples in pair if r % 2 == 0 else reversed(pair):
                samples.append(await _one_round(work, hit, n, (r + 1) * n * 10))
    finally:
        await bare.shutdown()
        await stack.shutdown()
    return statistics.median(bare_samples), statistics.median(stack_samples)


async def latency(fn: Callable[[], Awaitable[Any]], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=21)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    n, repeat = args.tasks, args.repeat

    bare_miss, mw_miss = await compare(False, n, repeat)
    bare_hit, mw_hit = await compare(True, n, repeat)

    broker, _, slow = make_broker(True, 1000)
    await broker.startup()
    counter = iter(range(10**9))

    async def execute() -> Any:
        return await (await slow.kiq(next(counter) + 10**6)).wait_result()

    async def hit() -> Any:
        return await (await slow.kiq(0)).wait_result()

    await hit()
    exec_s = await latency(execute, 30)
    hit_s = await latency(hit, 200)
    await broker.shutdown()

    rows = [
        ("all-miss tasks/s", bare_miss, mw_miss, mw_miss / bare_miss, ">= 0.70"),
        ("all-hit tasks/s", bare_hit, mw_hit, mw_hit / bare_hit, "-"),
        ("20 ms task: execute vs hit (ms)", exec_s * 1e3, hit_s * 1e3, exec_s / hit_s, ">= 20"),
    ]
    if args.json:
        print(
            json.dumps(
                [
                    {"case": c, "baseline": b, "measured": m, "ratio": r, "target": t}
                    for c, b, m, r, t in rows
                ],
                indent=2,
            )
        )
        return
    print(f"{'case':34} {'bare/exec':>12} {'with mw/hit':>12} {'ratio':>8}  target")
    for c, b, m, r, t in rows:
        print(f"{c:34} {b:12.1f} {m:12.1f} {r:8.2f}  {t}")


if __name__ == "__main__":
    asyncio.run(main())
