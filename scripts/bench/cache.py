"""Benchmark taskiq_flow.cache against a raw Redis client, on one server, in one run.

Measures:
1. hit throughput: ``RedisCacheAdapter.get`` / ``get_or_create`` on a fresh key vs a raw
   ``redis.asyncio`` ``GET`` + ``msgspec.msgpack.decode`` of the very same bytes, one
   caller at a time (also with the connection's coalescing off), and 50 callers at once
   (``x50`` rows, against 50 raw callers: the connection coalesces their ``GET``s);
2. Redis commands per hit, from ``INFO commandstats``;
3. a stampede: N concurrent ``get_or_create`` on one cold key from 1, 2 and 4 OS processes,
   the creator sleeping 200 ms; creator executions (counted with ``INCR``) and wall time;
   plus the in-memory adapter in one process.

Usage: uv run python scripts/bench/cache.py [--redis-url URL] [--json] [--quick]
Without --redis-url a private redis-server is started (taskiq_flow_testing.RedisServer).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from typing import Any

import msgspec
import redis
import redis.asyncio as aioredis

from taskiq_flow.cache import InMemoryCacheAdapter
from taskiq_flow.cache.redis import RedisCacheAdapter

VALUE = {
    "task": "resize_image",
    "ok": True,
    "sizes": [128, 256, 512, 1024],
    "meta": {"format": "webp", "quality": 82, "source": "s3://bucket/key/" + "x" * 200},
    "scores": [i / 7 for i in range(40)],
}
BYTES_VALUE = msgspec.msgpack.encode(VALUE)  # what CacheMiddleware stores: pre-encoded bytes
CONCURRENT = 50


# -- hit path ----------------------------------------------------------------------------------


async def _time_loop(op: Any, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        await op()
    return n / (time.perf_counter() - started)


async def bench_hits(url: str, n: int, rounds: int) -> dict[str, Any]:
    """Each round times every operation for ``n`` calls back to back (interleaved), so a
    noisy neighbour slows every row of a round alike; ratios are taken per round, then the
    median over rounds is reported."""
    raw = aioredis.Redis.from_url(url)
    cache = RedisCacheAdapter(url, key_prefix="bench_cache:")
    shared = RedisCacheAdapter(client=raw, key_prefix="bench_cache:")
    alone = RedisCacheAdapter(url, key_prefix="bench_cache:")
    alone.connection.coalesce = False
    rows: dict[str, Any] = {}
    try:
        for label, value in (("dict ~1 KB", VALUE), ("bytes ~1 KB", BYTES_VALUE)):
            await cache.set("hot", value, ttl_seconds=3600)
            key = "bench_cache:v:hot"
            if await raw.get(key) is None:
                msg = "the adapter did not store the benchmark value"
                raise RuntimeError(msg)
            decode = msgspec.msgpack.Decoder().decode

            async def raw_get() -> Any:
                return decode(await raw.get(key))  # noqa: B023 - bound per iteration on purpose

            async def adapter_get() -> Any:
                return await cache.get("hot")

            async def adapter_goc() -> Any:
                return await cache.get_or_create("hot", _never, 3600)

            async def shared_goc() -> Any:
                return await shared.get_or_create("hot", _never, 3600)

            async def alone_get() -> Any:
                return await alone.get("hot")

            def together(op: Any) -> Any:
                async def run() -> None:
                    await asyncio.gather(*(op() for _ in range(CONCURRENT)))

                return run

            x = f"x{CONCURRENT} "
            ops = {
                "raw GET+decode": raw_get,
                "adapter.get": adapter_get,
                "adapter.get_or_create": adapter_goc,
                "get_or_create, client=raw": shared_goc,
                "adapter.get, coalesce=False": alone_get,
                # 50 callers at once: the connection coalesces their GETs into one pipeline.
                x + "raw GET+decode": together(raw_get),
                x + "adapter.get": together(adapter_get),
                x + "adapter.get, coalesce=False": together(alone_get),
            }
            for op in ops.values():  # warm connections and scripts
                await _time_loop(op, 200)
            samples: dict[str, list[float]] = {name: [] for name in ops}
            ratios: dict[str, list[float]] = {name: [] for name in ops}
            for _ in range(rounds):
                rates = {
                    name: (
                        await _time_loop(op, n // CONCURRENT) * CONCURRENT
                        if name.startswith(x)
                        else await _time_loop(op, n)
                    )
                    for name, op in ops.items()
                }
                for name, rate in rates.items():
                    samples[name].append(rate)
                    base = x + "raw GET+decode" if name.startswith(x) else "raw GET+decode"
                    ratios[name].append(rate / rates[base])
            rows[label] = {
                name: {
                    "ops_per_s": round(statistics.median(samples[name])),
                    "ratio_vs_raw": round(statistics.median(ratios[name]), 3),
                }
                for name in ops
            }

        # Commands per fresh hit, counted by the server.
        await raw.config_resetstat()
        hits = 1000
        for _ in range(hits):
            await cache.get_or_create("hot", _never, 3600)
        info: dict[str, Any] = await raw.info("commandstats")
        ignored = {"cmdstat_info", "cmdstat_config|resetstat"}
        total = sum(s["calls"] for name, s in info.items() if name not in ignored)
        rows["commands_per_hit"] = total / hits
        rows["commands_seen"] = {
            name: s["calls"] for name, s in info.items() if name not in ignored
        }
    finally:
        await cache.close()
        await shared.close()
        await alone.close()
        await raw.aclose()
    return rows


def _never() -> Any:
    msg = "a fresh hit must not call the creator"
    raise AssertionError(msg)


# -- stampede --------------------------------------------------------------------------------


async def _worker(args: argparse.Namespace) -> None:
    cache = RedisCacheAdapter(args.redis_url, key_prefix="bench_cache:")
    control = aioredis.Redis.from_url(args.redis_url)
    try:

        async def creator() -> str:
            await control.incr("bench:executions")
            await asyncio.sleep(0.2)
            return "value"

        # Warm the pool first: a worker's connections are open long before a stampede.
        await asyncio.gather(*(cache.get("warm-up") for _ in range(args.callers)))
        await control.incr("bench:ready")
        while not await control.exists("bench:go"):  # noqa: ASYNC110 - the go signal is in Redis
            await asyncio.sleep(0.002)
        values = await asyncio.gather(
            *(cache.get_or_create(args.key, creator, 60) for _ in range(args.callers))
        )
        if values != ["value"] * args.callers:
            msg = f"a caller got a wrong value: {set(values)}"
            raise RuntimeError(msg)
        await control.rpush("bench:done", repr(time.time()))
    finally:
        await control.aclose()
        await cache.close()


def bench_stampede(url: str, processes: int, callers: int, run: int) -> dict[str, Any]:
    control = redis.Redis.from_url(url)
    key = f"cold-{processes}-{run}"
    try:
        control.delete("bench:executions", "bench:ready", "bench:go", "bench:done")
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--worker",
                    "--redis-url",
                    url,
                    "--key",
                    key,
                    "--callers",
                    str(callers),
                ]
            )
            for _ in range(processes)
        ]
        deadline = time.monotonic() + 60
        while int(control.get("bench:ready") or 0) < processes:
            if time.monotonic() > deadline:
                msg = "stampede workers did not start"
                raise RuntimeError(msg)
            time.sleep(0.005)
        go = time.time()
        control.set("bench:go", 1)
        for proc in procs:
            if proc.wait(timeout=60) != 0:
                msg = f"stampede worker exited with {proc.returncode}"
                raise RuntimeError(msg)
        finished = [float(x) for x in control.lrange("bench:done", 0, -1)]
        return {
            "executions": int(control.get("bench:executions") or 0),
            "wall_s": max(finished) - go,
        }
    finally:
        control.close()


async def bench_memory_stampede(callers: int) -> dict[str, Any]:
    cache = InMemoryCacheAdapter()
    executions = 0

    async def creator() -> str:
        nonlocal executions
        executions += 1
        await asyncio.sleep(0.2)
        return "value"

    started = time.perf_counter()
    await asyncio.gather(*(cache.get_or_create("cold", creator, 60) for _ in range(callers)))
    return {"executions": executions, "wall_s": time.perf_counter() - started}


# -- main --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--key", default="cold", help=argparse.SUPPRESS)
    parser.add_argument("--callers", type=int, default=50)
    args = parser.parse_args()
    if args.worker:
        asyncio.run(_worker(args))
        return

    n, repeats, runs = (300, 10, 1) if args.quick else (500, 40, 3)
    with ExitStack() as stack:
        url = args.redis_url
        if url is None:
            from taskiq_flow_testing import RedisServer  # noqa: PLC0415 - dev-only helper

            url = stack.enter_context(RedisServer()).url
        hits = asyncio.run(bench_hits(url, n, repeats))
        stampede: dict[str, Any] = {}
        for processes in (1, 2, 4):
            samples = [bench_stampede(url, processes, args.callers, r) for r in range(runs)]
            stampede[f"redis x{processes} proc"] = {
                "callers": processes * args.callers,
                "executions_max": max(s["executions"] for s in samples),
                "wall_s_median": round(statistics.median(s["wall_s"] for s in samples), 3),
            }
        memory = [asyncio.run(bench_memory_stampede(args.callers)) for _ in range(runs)]
        stampede["memory x1 proc"] = {
            "callers": args.callers,
            "executions_max": max(s["executions"] for s in memory),
            "wall_s_median": round(statistics.median(s["wall_s"] for s in memory), 3),
        }

    report = {
        "iterations": n,
        "rounds": repeats,
        "hits": {k: v for k, v in hits.items() if k.endswith("KB")},
        "commands_per_hit": hits["commands_per_hit"],
        "commands_seen": hits["commands_seen"],
        "stampede": stampede,
        "creator_sleep_s": 0.2,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"Hit path: sequential awaits, {repeats} interleaved rounds of {n} ops; medians")
    print(f"{'value':<13} {'operation':<32} {'ops/s':>9} {'vs raw':>7}")
    for label, ops in report["hits"].items():
        for name, row in ops.items():
            print(f"{label:<13} {name:<32} {row['ops_per_s']:>9} {row['ratio_vs_raw']:>7.3f}")
    print(
        f"\nRedis commands per fresh hit: {report['commands_per_hit']:.3f} "
        f"{report['commands_seen']}"
    )
    print("\nStampede: one cold key, creator sleeps 200 ms")
    print(f"{'setup':<18} {'callers':>8} {'executions':>11} {'wall s':>8}")
    for label, row in stampede.items():
        print(
            f"{label:<18} {row['callers']:>8} {row['executions_max']:>11} "
            f"{row['wall_s_median']:>8.3f}"
        )


if __name__ == "__main__":
    main()
