"""Middleware overhead: tasks/s through InMemoryBroker(await_inplace=True).

Side by side in one run (rounds interleaved, so machine noise hits every broker alike):

* a bare broker;
* the same broker with CacheMiddleware and StorageMiddleware (in-memory adapters);
* a *floor reference* (all-miss only): the least a cache + storage pair of middlewares can
  do inside taskiq -- wrap the function, digest the arguments, one dict lookup, one dict
  store of the encoded value, one dict store of an encoded record. No LRU bound, no TTL,
  no single flight, no statistics, no validation, no error handling. It is not shipped;
  it shows how much of the gap to the bare broker any such pair pays in taskiq's hooks
  and in the Python it has to run.

Workloads: all-miss (every call distinct) and all-hit (one call repeated); and, for a
task that sleeps 20 ms, the latency of a cache hit vs an execution.

``--opcodes`` also counts the Python opcodes each broker executes per all-miss task
(``sys.settrace``): a figure that machine noise cannot move, for comparing changes.

    uv run python scripts/bench/middlewares.py [--tasks 500] [--repeat 21] [--opcodes] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import functools
import hashlib
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

import msgspec
from taskiq import InMemoryBroker, TaskiqMessage, TaskiqMiddleware, TaskiqResult

from taskiq_flow.cache import InMemoryCacheAdapter
from taskiq_flow.middlewares import CacheMiddleware, StorageMiddleware
from taskiq_flow.storage import InMemoryStorageAdapter

# -- the floor reference ------------------------------------------------------------------

_KEYS = msgspec.msgpack.Encoder(order="deterministic")
_VALUES = msgspec.msgpack.Encoder()
_JSON = msgspec.json.Encoder()
_KEY: contextvars.ContextVar[tuple[str, dict[str, bytes]] | None] = contextvars.ContextVar(
    "floor_key", default=None
)


class _FloorCache(TaskiqMiddleware):
    """Reference only: a key per message, no bound, no TTL, no lock."""

    def __init__(self) -> None:
        super().__init__()
        self.entries: dict[str, bytes] = {}

    async def pre_send(self, message: TaskiqMessage) -> TaskiqMessage:
        return message  # CacheMiddleware needs this hook too (kiq(labels=...))

    async def pre_execute(self, message: TaskiqMessage) -> TaskiqMessage:
        digest = hashlib.blake2b(_KEYS.encode(message.args), digest_size=16).hexdigest()
        _KEY.set((f"{message.task_name}:{digest}", self.entries))
        return message


def _floor_wrap(func: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        found = _KEY.get()
        if found is None:
            return await func(*args, **kwargs)
        key, entries = found
        cached = entries.get(key)
        if cached is not None:
            return msgspec.msgpack.decode(cached)
        value = await func(*args, **kwargs)
        entries[key] = _VALUES.encode(value)
        return value

    return wrapper


class _FloorStorage(TaskiqMiddleware):
    """Reference only: one encoded record per execution in a dict."""

    def __init__(self) -> None:
        super().__init__()
        self.records: dict[str, bytes] = {}

    async def post_execute(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> None:
        self.records[f"task:{message.task_id}"] = _VALUES.encode(
            {
                "task_id": message.task_id,
                "pipeline_id": None,
                "task_name": message.task_name,
                "is_err": result.is_err,
                "return_value": _JSON.encode(result.return_value).decode(),
                "error": None,
                "execution_time": result.execution_time,
                "finished_at": time.time(),
            }
        )


# -- the benchmark ------------------------------------------------------------------------


def make_broker(kind: str, n: int) -> tuple[InMemoryBroker, Any, Any]:
    """``kind``: ``"bare"``, ``"stack"`` (both middlewares) or ``"floor"`` (reference)."""
    broker = InMemoryBroker(await_inplace=True, max_stored_results=n * 4)
    if kind == "stack":
        broker.add_middlewares(
            CacheMiddleware(InMemoryCacheAdapter(max_entries=n * 4)),
            StorageMiddleware(InMemoryStorageAdapter(max_entries=n * 4)),
        )
    elif kind == "floor":
        broker.add_middlewares(_FloorCache(), _FloorStorage())

    @broker.task
    async def work(x: int) -> int:
        return x * 2

    @broker.task
    async def slow(x: int) -> int:
        await asyncio.sleep(0.02)
        return x

    if kind == "floor":
        for task in (work, slow):
            found = broker.find_task(task.task_name)
            if found is not None:
                found.original_func = _floor_wrap(found.original_func)
    return broker, work, slow


async def _one_round(work: Any, hit: bool, n: int, offset: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        await work.kiq(1 if hit else offset + i)
    return n / (time.perf_counter() - start)


async def compare(hit: bool, n: int, repeat: int, kinds: list[str]) -> dict[str, float]:
    """Median tasks/s of each kind of broker, rounds interleaved."""
    brokers = {kind: make_broker(kind, n) for kind in kinds}
    samples: dict[str, list[float]] = {kind: [] for kind in kinds}
    for broker, _, _ in brokers.values():
        await broker.startup()
    try:
        for _, work, _ in brokers.values():
            await _one_round(work, hit, 50, 10**8)  # warm up (imports, caches)
        for r in range(repeat):
            # Rotate who goes first so that drift in machine load hits all alike.
            order = kinds[r % len(kinds) :] + kinds[: r % len(kinds)]
            for kind in order:
                work = brokers[kind][1]
                samples[kind].append(await _one_round(work, hit, n, (r + 1) * n * 10))
    finally:
        for broker, _, _ in brokers.values():
            await broker.shutdown()
    return {kind: statistics.median(values) for kind, values in samples.items()}


async def latency(fn: Callable[[], Awaitable[Any]], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


async def count_opcodes(kind: str, tasks: int = 1000) -> float:
    """Python opcodes executed per all-miss task (deterministic, unlike time)."""
    broker, work, _ = make_broker(kind, 500)
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
    args = parser.parse_args()
    n, repeat = args.tasks, args.repeat

    miss = await compare(False, n, repeat, ["bare", "stack", "floor"])
    hit = await compare(True, n, repeat, ["bare", "stack"])

    broker, _, slow = make_broker("stack", 1000)
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
        (
            "all-miss tasks/s, floor reference",
            miss["bare"],
            miss["floor"],
            miss["floor"] / miss["bare"],
            "-",
        ),
        (
            "all-miss overhead, us/task",
            1e6 / miss["bare"],
            1e6 / miss["stack"],
            1e6 / miss["stack"] - 1e6 / miss["bare"],
            "(ratio col: us added)",
        ),
        ("all-hit tasks/s", hit["bare"], hit["stack"], hit["stack"] / hit["bare"], "-"),
        ("20 ms task: execute vs hit (ms)", exec_s * 1e3, hit_s * 1e3, exec_s / hit_s, ">= 20"),
    ]
    if args.opcodes:
        ops = {kind: await count_opcodes(kind) for kind in ("bare", "stack", "floor")}
        base = ops["bare"]
        rows += [
            (f"all-miss opcodes/task, {label}", base, ops[kind], base / ops[kind], "-")
            for label, kind in (("both", "stack"), ("floor", "floor"))
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
