"""Middleware overhead: tasks/s through InMemoryBroker(await_inplace=True).

Side by side in one run (rounds interleaved, so machine noise hits every broker alike):

* a bare broker;
* the same broker with CacheMiddleware and StorageMiddleware (in-memory adapters);
* two references (all-miss only; see ``_reference.py``, not shipped): ``lean``, the same
  hot-path work flattened into one wrapper and one hook, and ``floor``, the least any
  cache + storage pair can do inside taskiq.

Workloads: all-miss (every call distinct) and all-hit (one call repeated) of a task that
does nothing; all-miss of a task doing 1 ms of CPU work; and, for a task that sleeps
20 ms, the latency of a cache hit vs an execution.

``--opcodes`` also counts the Python opcodes each broker executes per all-miss task
(``sys.settrace``): a figure that machine noise cannot move, for comparing changes.

    uv run python scripts/bench/middlewares.py [--tasks 500] [--repeat 21] [--opcodes] [--json]
        [--metrics on|off]

Metrics on vs off, in the same run: a second stack built with ``metrics=False`` on both
middlewares (no Prometheus metrics, no span attributes) runs interleaved with the first,
and the ``metrics ... vs off`` rows give the first's rate over its (all-miss and all-hit;
the ratio is the median of the per-round ratios, so drift between rounds cancels out).
Metrics are on by default when prometheus-client (or opentelemetry-api) is installed;
``--metrics off`` builds the first stack with ``metrics=False`` too (an A/A check: its
ratios show the run's noise).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import FrameType
from typing import Any

from taskiq import InMemoryBroker

from taskiq_flow.cache import InMemoryCacheAdapter
from taskiq_flow.middlewares import CacheMiddleware, StorageMiddleware
from taskiq_flow.storage import InMemoryStorageAdapter

sys.path.insert(0, str(Path(__file__).parent))
import _reference  # a sibling module of this script, found through sys.path

# -- the benchmark ------------------------------------------------------------------------

METRICS = {"on": True}
PAIRED = [("stack", "nometrics")]  # metrics on vs off: compared round by round


def make_broker(kind: str, n: int) -> tuple[InMemoryBroker, dict[str, Any]]:
    """``kind``: ``"bare"``, ``"stack"`` (both middlewares), ``"nometrics"`` (the same,
    ``metrics=False``), ``"lean"`` or ``"floor"``.

    Tasks: ``work`` (does nothing), ``busy`` (1 ms of CPU), ``slow`` (sleeps 20 ms).
    """
    broker = InMemoryBroker(await_inplace=True, max_stored_results=n * 4)
    if kind in {"stack", "nometrics"}:
        metrics = METRICS["on"] and kind == "stack"
        broker.add_middlewares(
            CacheMiddleware(InMemoryCacheAdapter(max_entries=n * 4), metrics=metrics),
            StorageMiddleware(InMemoryStorageAdapter(max_entries=n * 4), metrics=metrics),
        )

    @broker.task
    async def work(x: int) -> int:
        return x * 2

    @broker.task
    async def busy(x: int) -> int:
        start = time.perf_counter()
        while time.perf_counter() - start < 0.001:
            pass
        return x

    @broker.task
    async def slow(x: int) -> int:
        await asyncio.sleep(0.02)
        return x

    if kind in {"floor", "lean"}:
        _reference.install(broker, kind, n * 4)
    return broker, {"work": work, "busy": busy, "slow": slow}


async def _one_round(work: Any, hit: bool, n: int, offset: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        await work.kiq(1 if hit else offset + i)
    return n / (time.perf_counter() - start)


async def compare(
    hit: bool, n: int, repeat: int, kinds: list[str], task: str = "work"
) -> dict[str, float]:
    """Median tasks/s of each kind of broker, rounds interleaved.

    Also ``"<kind>/<other>"``: the median over rounds of ``kind``'s rate over ``other``'s
    in the same round, for the pairs of ``PAIRED`` (drift between rounds cancels out).
    """
    brokers = {kind: make_broker(kind, n) for kind in kinds}
    samples: dict[str, list[float]] = {kind: [] for kind in kinds}
    for broker, _ in brokers.values():
        await broker.startup()
    try:
        for _, tasks in brokers.values():
            await _one_round(tasks[task], hit, 50, 10**8)  # warm up (imports, caches)
        for r in range(repeat):
            # Rotate who goes first so that drift in machine load hits all alike.
            order = kinds[r % len(kinds) :] + kinds[: r % len(kinds)]
            for kind in order:
                work = brokers[kind][1][task]
                samples[kind].append(await _one_round(work, hit, n, (r + 1) * n * 10))
    finally:
        for broker, _ in brokers.values():
            await broker.shutdown()
    medians = {kind: statistics.median(values) for kind, values in samples.items()}
    for kind, other in PAIRED:
        if kind in samples and other in samples:
            paired = [a / b for a, b in zip(samples[kind], samples[other], strict=True)]
            medians[f"{kind}/{other}"] = statistics.median(paired)
    return medians


async def latency(fn: Callable[[], Awaitable[Any]], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


async def count_opcodes(kind: str, tasks: int = 1000) -> float:
    """Python opcodes executed per all-miss task (deterministic, unlike time)."""
    broker, named = make_broker(kind, 500)
    work = named["work"]
    await broker.startup()
    for i in range(300):  # warm up: first calls build caches, signatures, wrappers
        await work.kiq(10**7 + i)
    count = 0

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal count
        if event == "call":
            frame.f_trace_opcodes = True
        elif event == "opcode":
            count += 1
        return tracer

    sys.settrace(tracer)
    try:
        for i in range(tasks):
            await work.kiq(i)
    finally:
        sys.settrace(None)
        await broker.shutdown()
    return count / tasks


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=21)
    parser.add_argument("--opcodes", action="store_true", help="also count opcodes per task")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--metrics", choices=["on", "off"], default="on")
    args = parser.parse_args()
    n, repeat = args.tasks, args.repeat
    METRICS["on"] = args.metrics == "on"

    miss = await compare(False, n, repeat, ["bare", "stack", "nometrics", "lean", "floor"])
    hit = await compare(True, n, repeat, ["bare", "stack", "nometrics"])
    busy = await compare(False, max(n // 5, 20), repeat, ["bare", "stack"], task="busy")

    broker, stack_tasks = make_broker("stack", 1000)
    slow = stack_tasks["slow"]
    await broker.startup()
    counter = iter(range(10**9))

    async def execute() -> Any:
        return await (await slow.kiq(next(counter) + 10**6)).wait_result()

    async def hit_once() -> Any:
        return await (await slow.kiq(0)).wait_result()

    await hit_once()
    exec_s = await latency(execute, 30)
    hit_s = await latency(hit_once, 200)
    await broker.shutdown()

    rows = [
        ("all-miss tasks/s", miss["bare"], miss["stack"], miss["stack"] / miss["bare"], ">= 0.70"),
        *(
            (
                f"all-miss tasks/s, {kind} reference",
                miss["bare"],
                miss[kind],
                miss[kind] / miss["bare"],
                "-",
            )
            for kind in ("lean", "floor")
        ),
        (
            "all-miss overhead, us/task",
            1e6 / miss["bare"],
            1e6 / miss["stack"],
            1e6 / miss["stack"] - 1e6 / miss["bare"],
            "(ratio col: us added)",
        ),
        ("all-hit tasks/s", hit["bare"], hit["stack"], hit["stack"] / hit["bare"], "-"),
        (
            "all-miss tasks/s, 1 ms CPU task",
            busy["bare"],
            busy["stack"],
            busy["stack"] / busy["bare"],
            "-",
        ),
        ("20 ms task: execute vs hit (ms)", exec_s * 1e3, hit_s * 1e3, exec_s / hit_s, ">= 20"),
        *(
            (
                f"{label} tasks/s, metrics {args.metrics} vs off",
                rates["nometrics"],
                rates["stack"],
                rates["stack/nometrics"],
                ">= 0.95",
            )
            for label, rates in (("all-miss", miss), ("all-hit", hit))
        ),
    ]
    if args.opcodes:
        ops = {kind: await count_opcodes(kind) for kind in ("bare", "stack", "lean", "floor")}
        base = ops["bare"]
        rows += [
            (f"all-miss opcodes/task, {label}", base, ops[kind], base / ops[kind], "-")
            for label, kind in (("both", "stack"), ("lean", "lean"), ("floor", "floor"))
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
    print(f"{'case':36} {'bare/exec':>12} {'measured':>12} {'ratio':>8}  target")
    for c, b, m, r, t in rows:
        print(f"{c:36} {b:12.1f} {m:12.1f} {r:8.2f}  {t}")


if __name__ == "__main__":
    asyncio.run(main())
