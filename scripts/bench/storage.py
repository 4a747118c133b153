"""Storage benchmark: each adapter beside the raw client doing the same work, in one run.

    uv run python scripts/bench/storage.py [--redis-url URL] [--json] [--quick] [--check]

Rows (speed ratio = baseline time / measured time, so > 1 means faster than baseline):

* redis  set / get         adapter vs raw redis-py ``SET PX`` / ``GET`` of the same bytes, one
                           caller at a time (a lone caller: coalescing must cost it nothing);
                           the same with ``coalesce=False`` for reference
* redis  set / get x50     50 concurrent callers (``asyncio.gather``): the adapter, whose
                           connection coalesces them into one pipeline, vs raw redis-py (50
                           connections) and vs the adapter with ``coalesce=False``
* redis  set_many / get_many (100 keys)   vs the adapter's own per-key loop; raw pipeline shown
* sqlite set / get         adapter vs raw aiosqlite upsert + commit / select, same file
* sqlite set_many / get_many (1,000 keys) vs the adapter's own per-key loop
* memory set_many / get_many (1,000 keys) vs the per-key loop (for reference)

Times are medians over repeated rounds (``time.perf_counter``); adapter and baseline
rounds alternate so that machine noise hits both alike. A private ``redis-server`` is
started unless ``--redis-url`` is given. ``--check`` exits 1 when a threshold is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiosqlite
import redis.asyncio as aioredis

from taskiq_flow.storage import BaseStorageAdapter, InMemoryStorageAdapter, SQLiteStorageAdapter
from taskiq_flow.storage.redis import RedisStorageAdapter

TTL = 3600
RECORD = {
    "task_id": uuid.uuid4().hex,
    "pipeline_id": "audio_v1",
    "task_name": "pipeline:transcode",
    "is_err": False,
    "return_value": '{"duration": 12.5, "codec": "opus", "channels": 2}',
    "error": None,
    "execution_time": 0.42,
    "finished_at": "2026-11-27T05:00:00+00:00",
}
UPSERT = (
    "INSERT INTO taskiq_flow_storage (key, value, created_at, expires_at) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (key) DO UPDATE SET value = excluded.value,"
    " created_at = excluded.created_at, expires_at = excluded.expires_at"
)
SELECT = "SELECT value, created_at, expires_at FROM taskiq_flow_storage WHERE key = ?"


@dataclass
class Row:
    backend: str
    operation: str
    measured: str
    baseline: str
    measured_us: float  # per operation (single-key) or per batch
    baseline_us: float
    ratio: float  # baseline time / measured time
    threshold: float | None

    @property
    def ok(self) -> bool:
        return self.threshold is None or self.ratio >= self.threshold


Round = Callable[[], Awaitable[None]]


def batch_rounds_for(
    adapter: BaseStorageAdapter, batch: dict[str, Any]
) -> tuple[Round, Round, Round, Round]:
    """The batched calls and their per-key loops over ``batch``, for any backend."""

    async def set_many() -> None:
        await adapter.set_many(batch, ttl_seconds=TTL)

    async def set_loop() -> None:
        for key, value in batch.items():
            await adapter.set(key, value, ttl_seconds=TTL)

    async def get_many() -> None:
        await adapter.get_many(batch)

    async def get_loop() -> None:
        for key in batch:
            await adapter.get(key)

    return set_many, set_loop, get_many, get_loop


async def compare(rounds: int, measured: Round, baseline: Round, ops: int) -> tuple[float, float]:
    """Median µs per op of ``measured`` and ``baseline``, rounds interleaved."""
    await measured()  # warm up connections, statement caches, code paths
    await baseline()
    m_times: list[float] = []
    b_times: list[float] = []
    gc.collect()
    gc.disable()  # a collection landing in one side's round is noise, not cost
    try:
        for i in range(rounds):
            pair = [(measured, m_times), (baseline, b_times)]
            if i % 2:
                pair.reverse()
            for func, sink in pair:
                start = time.perf_counter()
                await func()
                sink.append((time.perf_counter() - start) / ops * 1e6)
    finally:
        gc.enable()
    return statistics.median(m_times), statistics.median(b_times)


def row(backend: str, op: str, measured: str, baseline: str, times: tuple[float, float],
        threshold: float | None) -> Row:  # fmt: skip
    m, b = times
    ratio = round(b / m, 2)
    return Row(backend, op, measured, baseline, round(m, 2), round(b, 2), ratio, threshold)


CONCURRENT = 50


async def bench_redis(url: str, n: int, rounds: int) -> list[Row]:
    adapter = RedisStorageAdapter(url, key_prefix="bench:")
    alone = RedisStorageAdapter(url, key_prefix="bench:", coalesce=False)
    raw = aioredis.Redis.from_url(url)
    try:
        keys = [f"k{i}" for i in range(n)]
        # The exact bytes the adapter stores (header + msgpack), encoded once for raw.
        await adapter.set("probe", RECORD, ttl_seconds=TTL)
        blob = await raw.get("bench:probe")
        if blob is None:
            raise RuntimeError("the probe write is missing")

        async def a_set() -> None:
            for key in keys:
                await adapter.set(key, RECORD, ttl_seconds=TTL)

        async def r_set() -> None:
            for key in keys:
                await raw.set("bench:" + key, blob, px=TTL * 1000)

        async def a_get() -> None:
            for key in keys:
                await adapter.get(key)

        async def r_get() -> None:
            for key in keys:
                await raw.get("bench:" + key)

        async def o_set() -> None:
            for key in keys:
                await alone.set(key, RECORD, ttl_seconds=TTL)

        async def o_get() -> None:
            for key in keys:
                await alone.get(key)

        def concurrently(op: Callable[[str], Awaitable[Any]]) -> Round:
            async def run() -> None:
                for start in range(0, n, CONCURRENT):
                    await asyncio.gather(*(op(key) for key in keys[start : start + CONCURRENT]))

            return run

        c_set = concurrently(lambda key: adapter.set(key, RECORD, ttl_seconds=TTL))
        c_set_raw = concurrently(lambda key: raw.set("bench:" + key, blob, px=TTL * 1000))
        c_set_off = concurrently(lambda key: alone.set(key, RECORD, ttl_seconds=TTL))
        c_get = concurrently(adapter.get)
        c_get_raw = concurrently(lambda key: raw.get("bench:" + key))
        c_get_off = concurrently(alone.get)
        x = f"x{CONCURRENT}"
        rows = [
            row("redis", "set", "adapter.set", "raw SET PX",
                await compare(rounds, a_set, r_set, n), 0.85),
            row("redis", "get", "adapter.get", "raw GET",
                await compare(rounds, a_get, r_get, n), 0.85),
            row("redis", "set", "coalesce=False", "raw SET PX",
                await compare(rounds, o_set, r_set, n), None),
            row("redis", "get", "coalesce=False", "raw GET",
                await compare(rounds, o_get, r_get, n), None),
            row("redis", f"set {x}", "adapter.set", "raw SET PX",
                await compare(rounds, c_set, c_set_raw, n), None),
            row("redis", f"get {x}", "adapter.get", "raw GET",
                await compare(rounds, c_get, c_get_raw, n), None),
            row("redis", f"set {x}", "adapter.set", "coalesce=False",
                await compare(rounds, c_set, c_set_off, n), None),
            row("redis", f"get {x}", "adapter.get", "coalesce=False",
                await compare(rounds, c_get, c_get_off, n), None),
        ]  # fmt: skip
        batch = {f"b{i}": RECORD for i in range(100)}

        a_set_many, a_set_loop, a_get_many, a_get_loop = batch_rounds_for(adapter, batch)

        async def r_pipeline() -> None:
            async with raw.pipeline(transaction=True) as pipe:
                for key in batch:
                    pipe.set("bench:" + key, blob, px=TTL * 1000)
                await pipe.execute()

        rows += [
            row("redis", "set_many(100)", "adapter.set_many", "adapter.set loop",
                await compare(rounds, a_set_many, a_set_loop, 1), 5.0),
            row("redis", "get_many(100)", "adapter.get_many", "adapter.get loop",
                await compare(rounds, a_get_many, a_get_loop, 1), 5.0),
            row("redis", "set_many(100)", "adapter.set_many", "raw MULTI SET PX pipeline",
                await compare(rounds, a_set_many, r_pipeline, 1), None),
        ]  # fmt: skip
        return rows
    finally:
        await adapter.close()
        await alone.close()
        await raw.aclose()


async def bench_sqlite(directory: Path, n: int, rounds: int) -> list[Row]:
    path = directory / "bench.db"
    adapter = SQLiteStorageAdapter(path)
    await adapter.set("probe", RECORD)  # creates the schema, WAL mode
    raw = await aiosqlite.connect(path)
    try:
        # The adapter's connection settings, so that only the code path differs.
        await raw.execute("PRAGMA busy_timeout = 10000")
        await raw.execute("PRAGMA synchronous = NORMAL")
        rows_ = list(await raw.execute_fetchall(SELECT, ("probe",)))
        blob = rows_[0][0]
        keys = [f"k{i}" for i in range(n)]

        async def a_set() -> None:
            for key in keys:
                await adapter.set(key, RECORD, ttl_seconds=TTL)

        async def r_set() -> None:
            for key in keys:
                now = time.time()
                await raw.execute(UPSERT, (key, blob, now, now + TTL))
                await raw.commit()

        async def a_get() -> None:
            for key in keys:
                await adapter.get(key)

        async def r_get() -> None:
            for key in keys:
                await raw.execute_fetchall(SELECT, (key,))

        rows = [
            row("sqlite", "set", "adapter.set", "raw upsert+commit",
                await compare(rounds, a_set, r_set, n), 0.8),
            row("sqlite", "get", "adapter.get", "raw select",
                await compare(rounds, a_get, r_get, n), None),
        ]  # fmt: skip
        batch = {f"b{i}": RECORD for i in range(1000)}

        a_set_many, a_set_loop, a_get_many, a_get_loop = batch_rounds_for(adapter, batch)

        batch_rounds = max(3, rounds // 4)
        rows += [
            row("sqlite", "set_many(1000)", "adapter.set_many", "adapter.set loop",
                await compare(batch_rounds, a_set_many, a_set_loop, 1), 10.0),
            row("sqlite", "get_many(1000)", "adapter.get_many", "adapter.get loop",
                await compare(batch_rounds, a_get_many, a_get_loop, 1), None),
        ]  # fmt: skip
        return rows
    finally:
        await raw.close()
        await adapter.close()


async def bench_memory(rounds: int) -> list[Row]:
    adapter = InMemoryStorageAdapter()
    batch = {f"b{i}": RECORD for i in range(1000)}

    a_set_many, a_set_loop, a_get_many, a_get_loop = batch_rounds_for(adapter, batch)

    return [
        row("memory", "set_many(1000)", "adapter.set_many", "adapter.set loop",
            await compare(rounds, a_set_many, a_set_loop, 1), None),
        row("memory", "get_many(1000)", "adapter.get_many", "adapter.get loop",
            await compare(rounds, a_get_many, a_get_loop, 1), None),
    ]  # fmt: skip


async def run(url: str, n: int, rounds: int) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="taskiq-flow-bench-") as directory:
        return [
            *await bench_redis(url, n, rounds),
            *await bench_sqlite(Path(directory), n, rounds),
            *await bench_memory(rounds),
        ]


def print_table(rows: list[Row]) -> None:
    header = ("backend", "operation", "measured", "µs", "baseline", "µs", "ratio", "need", "")
    lines = [header] + [
        (
            r.backend, r.operation, r.measured, f"{r.measured_us:.1f}", r.baseline,
            f"{r.baseline_us:.1f}", f"{r.ratio:.2f}x",
            "" if r.threshold is None else f">={r.threshold:g}x",
            "" if r.threshold is None else ("ok" if r.ok else "MISS"),
        )
        for r in rows
    ]  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
    print("\nratio = baseline time / measured time (µs per op for set/get, per batch for *_many)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", help="use this Redis (else a private redis-server)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--quick", action="store_true", help="fewer operations and rounds")
    parser.add_argument("--check", action="store_true", help="exit 1 if a threshold is missed")
    args = parser.parse_args()
    # Many short rounds, alternating sides: the median shrugs off a busy neighbour.
    n, rounds = (100, 9) if args.quick else (250, 31)

    if args.redis_url:
        rows = asyncio.run(run(args.redis_url, n, rounds))
    else:
        from taskiq_flow_testing import RedisServer  # noqa: PLC0415 - only without --redis-url

        with RedisServer() as server:
            rows = asyncio.run(run(server.url, n, rounds))

    if args.json:
        out: dict[str, Any] = {
            "ops_per_round": n,
            "rounds": rounds,
            "rows": [{**asdict(r), "ok": r.ok} for r in rows],
        }
        print(json.dumps(out, indent=2))
    else:
        print_table(rows)
    return 1 if args.check and not all(r.ok for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
