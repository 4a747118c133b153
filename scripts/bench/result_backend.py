"""Result backend benchmark: StorageResultBackend(RedisStorageAdapter) vs taskiq-redis.

    uv run python scripts/bench/result_backend.py [--redis-url URL] [--json] [--quick] [--check]

One operation is a ``set_result`` followed by a ``get_result`` of the same task id (what a
worker writes and its caller reads). Both backends run against the same Redis server
with the same ``TaskiqResult`` objects and a one-hour TTL:

* ours: ``StorageResultBackend(RedisStorageAdapter(url), ttl_seconds=3600)``, used alone
  (no ``StorageMiddleware``), so ``set_result`` also builds the record from the result;
* baseline: ``taskiq_redis.RedisAsyncResultBackend(url, result_ex_time=3600)`` with its
  default serializer (pickle).

Payloads: ``int`` (``42``), ``dict`` (a small record-like dict), ``list`` (100 floats),
``error`` (a ``ValueError`` result). Each is measured sequentially (one pair at a time:
latency) and with 50 pairs in flight (``asyncio.gather``: throughput under load).

Ratio = our results/s / baseline results/s (> 1 means faster than taskiq-redis). Times
are medians over repeated rounds (``time.perf_counter``); the two sides' rounds
alternate so that machine noise hits both alike. A private ``redis-server`` is started
unless ``--redis-url`` is given. ``--check`` exits 1 when a ratio is below 1.0.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from taskiq import AsyncResultBackend, TaskiqResult
from taskiq_redis import RedisAsyncResultBackend

from taskiq_flow.middlewares import StorageResultBackend
from taskiq_flow.storage.redis import RedisStorageAdapter

TTL = 3600
THRESHOLD = 1.0
CONCURRENCY = 50
LABELS = {"priority": "5"}


def _payloads() -> dict[str, TaskiqResult[Any]]:
    def ok(value: Any) -> TaskiqResult[Any]:
        return TaskiqResult(is_err=False, return_value=value, execution_time=0.012, labels=LABELS)

    return {
        "int": ok(42),
        "dict": ok(
            {
                "user_id": 1234,
                "name": "transcode",
                "codec": "opus",
                "channels": 2,
                "duration": 12.5,
                "tags": ["audio", "v1"],
                "ok": True,
            }
        ),
        "list": ok([i * 0.5 for i in range(100)]),
        "error": TaskiqResult(
            is_err=True,
            return_value=None,
            execution_time=0.003,
            labels=LABELS,
            error=ValueError("bad input: 17"),
        ),
    }


@dataclass
class Row:
    payload: str
    mode: str
    ours_per_s: float
    baseline_per_s: float
    ratio: float  # ours / baseline results per second

    @property
    def ok(self) -> bool:
        return self.ratio >= THRESHOLD


Round = Callable[[], Awaitable[None]]


async def compare(rounds: int, measured: Round, baseline: Round, ops: int) -> tuple[float, float]:
    """Median operations per second of ``measured`` and ``baseline``, rounds interleaved."""
    await measured()  # warm up connections, scripts, code paths
    await baseline()
    m_rates: list[float] = []
    b_rates: list[float] = []
    gc.collect()
    gc.disable()  # a collection landing in one side's round is noise, not cost
    try:
        for i in range(rounds):
            pair = [(measured, m_rates), (baseline, b_rates)]
            if i % 2:
                pair.reverse()
            for func, sink in pair:
                start = time.perf_counter()
                await func()
                sink.append(ops / (time.perf_counter() - start))
    finally:
        gc.enable()
    return statistics.median(m_rates), statistics.median(b_rates)


def rounds_for(
    backend: AsyncResultBackend[Any], result: TaskiqResult[Any], ids: list[str]
) -> tuple[Round, Round]:
    """Sequential and concurrent set_result + get_result pairs over ``ids``."""

    async def pair(task_id: str) -> None:
        await backend.set_result(task_id, result)
        got = await backend.get_result(task_id)
        if got.is_err != result.is_err:
            raise RuntimeError(f"{type(backend).__name__} returned the wrong result")

    async def sequential() -> None:
        for task_id in ids:
            await pair(task_id)

    async def concurrent() -> None:
        for start in range(0, len(ids), CONCURRENCY):
            await asyncio.gather(*(pair(task_id) for task_id in ids[start : start + CONCURRENCY]))

    return sequential, concurrent


async def check_same_answers(
    backends: list[AsyncResultBackend[Any]], payloads: dict[str, TaskiqResult[Any]]
) -> None:
    """Both backends give back what was stored (value, or error type and message)."""
    for name, result in payloads.items():
        for backend in backends:
            await backend.set_result(f"check-{name}", result)
            got = await backend.get_result(f"check-{name}")
            same = (got.is_err, got.return_value) == (result.is_err, result.return_value)
            if result.error is not None:
                same = same and (type(got.error), str(got.error)) == (
                    type(result.error),
                    str(result.error),
                )
            if not same:
                raise RuntimeError(f"{type(backend).__name__} changed the {name} result: {got}")


async def run(url: str, n: int, rounds: int) -> list[Row]:
    ours = StorageResultBackend(RedisStorageAdapter(url, key_prefix="bench:ours:"), ttl_seconds=TTL)
    theirs: RedisAsyncResultBackend[Any] = RedisAsyncResultBackend(
        url, result_ex_time=TTL, prefix_str="bench:theirs"
    )
    await ours.startup()
    await theirs.startup()
    rows: list[Row] = []
    try:
        await check_same_answers([ours, theirs], _payloads())
        for name, result in _payloads().items():
            ids = [f"{name}-{i:05d}" for i in range(n)]
            o_seq, o_con = rounds_for(ours, result, ids)
            t_seq, t_con = rounds_for(theirs, result, ids)
            for mode, o_round, t_round in (
                ("sequential", o_seq, t_seq),
                (f"{CONCURRENCY} in flight", o_con, t_con),
            ):
                o_rate, t_rate = await compare(rounds, o_round, t_round, n)
                rows.append(
                    Row(name, mode, round(o_rate), round(t_rate), round(o_rate / t_rate, 2))
                )
    finally:
        await ours.shutdown()
        await theirs.shutdown()
    return rows


def print_table(rows: list[Row]) -> None:
    header = ("payload", "mode", "ours results/s", "taskiq-redis results/s", "ratio", "")
    lines = [header] + [
        (
            r.payload, r.mode, f"{r.ours_per_s:,.0f}", f"{r.baseline_per_s:,.0f}",
            f"{r.ratio:.2f}x", "ok" if r.ok else "MISS",
        )
        for r in rows
    ]  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
    print(
        "\nresult = set_result + get_result of one task id; ratio = ours / taskiq-redis "
        f"(default pickle serializer); need >= {THRESHOLD:g}x"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", help="use this Redis (else a private redis-server)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--quick", action="store_true", help="fewer operations and rounds")
    parser.add_argument("--check", action="store_true", help="exit 1 if a ratio is below 1.0")
    args = parser.parse_args()
    # Many short rounds, alternating sides: the median shrugs off a busy neighbour.
    n, rounds = (100, 5) if args.quick else (300, 21)

    if args.redis_url:
        rows = asyncio.run(run(args.redis_url, n, rounds))
    else:
        from taskiq_flow_testing import RedisServer  # noqa: PLC0415 - only without --redis-url

        with RedisServer() as server:
            rows = asyncio.run(run(server.url, n, rounds))

    if args.json:
        out: dict[str, Any] = {
            "results_per_round": n,
            "rounds": rounds,
            "concurrency": CONCURRENCY,
            "threshold": THRESHOLD,
            "rows": [{**asdict(r), "ok": r.ok} for r in rows],
        }
        print(json.dumps(out, indent=2))
    else:
        print_table(rows)
    return 1 if args.check and not all(r.ok for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
