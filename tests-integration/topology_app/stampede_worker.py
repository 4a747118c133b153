"""A stampede process over any Redis topology (run with ``sys.executable``, not collected).

The cache is at ``--url`` (``redis+cluster://``, ``redis+sentinel://``...); the
coordination (``--go``, the ready count, the executions counter and its log) lives on
the plain server ``--control-url``, so the counting never depends on the topology under
test. Prints one JSON line: the values received and the adapter's stats.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

import redis.asyncio as aioredis

from taskiq_flow.cache.redis import RedisCacheAdapter


async def main(args: argparse.Namespace) -> None:
    cache = RedisCacheAdapter(args.url, lock_timeout=args.lease, max_wait=args.max_wait)
    control = aioredis.Redis.from_url(args.control_url)
    try:

        async def creator() -> str:
            count = await control.incr("test:executions")
            await control.rpush(
                "test:executions:log", json.dumps({"pid": os.getpid(), "t": time.time()})
            )
            await asyncio.sleep(args.sleep)
            return f"value-{count}"

        await control.incr("test:ready")
        while not await control.exists("test:go"):
            await asyncio.sleep(0.005)
        results = await asyncio.gather(
            *(cache.get_or_create(args.key, creator, 60) for _ in range(args.callers)),
            return_exceptions=True,
        )
        values = [r if isinstance(r, str) else repr(r) for r in results]
        print(json.dumps({"values": values, "stats": cache.get_stats()}), flush=True)
    finally:
        await control.aclose()
        await cache.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--control-url", required=True)
    parser.add_argument("--key", default="hot{1}")
    parser.add_argument("--callers", type=int, default=50)
    parser.add_argument("--lease", type=float, default=10)
    parser.add_argument("--max-wait", type=float, default=30)
    parser.add_argument("--sleep", type=float, default=0.5)
    asyncio.run(main(parser.parse_args()))
