"""What one Redis round trip costs the client: redis-py asyncio, side by side, in one run.

    uv run python scripts/bench/redis_client.py [--redis-url URL] [--json] [--quick]

The figure behind every "round trips" decision in this repository (see docs/cache.md,
"Round trips, end to end"): the client CPU time (``time.process_time``) per operation,
one caller at a time, rounds interleaved, median over rounds. Rows:

* ``execute_command GET``: ``redis.asyncio.Redis.execute_command("GET", k)`` (the
  baseline: what the bare taskiq-redis broker pays per command);
* ``connection GET``: the same ``GET`` on one dedicated connection,
  ``send_packed_command`` + ``read_response`` (no pool, no retry, no client wrapper): the
  floor of any client built on redis-py's asyncio connection;
* ``2 x execute_command GET``: two in a row (what two writes of one task cost);
* ``pipeline of 1`` / ``pipeline of 2``: ``pipeline(transaction=False)`` with one or two
  ``GET``s (what merging two writes into one round trip could save at best).

``ratio``: the baseline's time over the row's (above 1: cheaper than one
``execute_command``). Without ``--redis-url`` a private ``redis-server`` is started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from typing import Any

import redis.asyncio as aioredis

Op = Callable[[], Awaitable[Any]]


async def measure(url: str, calls: int, rounds: int) -> list[dict[str, Any]]:
    client = aioredis.Redis.from_url(url, socket_timeout=5)
    await client.set("bench:k", b"v" * 100)
    pool = client.connection_pool
    connection = await pool.get_connection()

    async def on_connection() -> Any:
        await connection.send_packed_command(connection.pack_command("GET", "bench:k"), False)
        return await connection.read_response()

    async def two() -> None:
        await client.execute_command("GET", "bench:k")
        await client.execute_command("GET", "bench:k")

    async def pipeline(n: int) -> Any:
        pipe = client.pipeline(transaction=False)
        for _ in range(n):
            pipe.execute_command("GET", "bench:k")
        return await pipe.execute(raise_on_error=False)

    ops: dict[str, Op] = {
        "execute_command GET": lambda: client.execute_command("GET", "bench:k"),
        "connection GET": on_connection,
        "2 x execute_command GET": two,
        "pipeline of 1": lambda: pipeline(1),
        "pipeline of 2": lambda: pipeline(2),
    }
    samples: dict[str, list[float]] = {name: [] for name in ops}
    try:
        for op in ops.values():
            for _ in range(100):  # warm up
                await op()
        for r in range(rounds):
            names = list(ops)
            names = names[r % len(names) :] + names[: r % len(names)]
            for name in names:
                op = ops[name]
                started = time.process_time()
                for _ in range(calls):
                    await op()
                samples[name].append((time.process_time() - started) / calls * 1e6)
    finally:
        await pool.release(connection)
        await client.aclose()
    base = statistics.median(samples["execute_command GET"])
    rows = []
    for name, values in samples.items():
        us = statistics.median(values)
        rows.append({"op": name, "client_cpu_us": round(us, 1), "ratio": round(base / us, 3)})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few calls")
    args = parser.parse_args()
    calls, rounds = (50, 2) if args.quick else (2000, 9)
    with ExitStack() as stack:
        url = args.redis_url
        if url is None:
            from taskiq_flow_testing import RedisServer  # noqa: PLC0415 - a dev tool

            url = stack.enter_context(RedisServer()).url
        rows = asyncio.run(measure(url, calls, rounds))
    if args.json:
        print(json.dumps({"calls": calls, "rounds": rounds, "rows": rows}, indent=2))
        return 0
    print(f"{'op':26} {'client CPU us/op':>17} {'ratio':>7}")
    for row in rows:
        print(f"{row['op']:26} {row['client_cpu_us']:>17.1f} {row['ratio']:>7.3f}")
    print(
        f"\n{calls} calls per round, {rounds} rounds interleaved, median; ratio = "
        "execute_command GET's CPU per op over the row's"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
