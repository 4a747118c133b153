"""A stampede worker process (run by the tests with ``sys.executable``, not collected).

Waits for ``--go`` to exist in Redis, then runs ``--callers`` concurrent ``get_or_create``
on one key with a creator that counts its executions with ``INCR`` and logs when it
started, and prints one JSON line: the values received and the adapter's stats.
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
    cache = RedisCacheAdapter(
        args.url, lock_timeout=args.lease, max_wait=args.max_wait, key_prefix=args.prefix
    )
    control = aioredis.Redis.from_url(args.url)
    try:

        async def creator() -> str:
            count = await control.incr(args.counter)
            await control.rpush(
                args.counter + ":log", json.dumps({"pid": os.getpid(), "t": time.time()})
            )
            await asyncio.sleep(args.sleep)
            return f"value-{count}"

        await control.incr(args.ready)
        while not await control.exists(args.go):
            await asyncio.sleep(0.005)
        results = await asyncio.gather(
            *(cache.get_or_create(args.key, creator, 60) for _ in range(args.callers)),
            return_exceptions=True,
        )
        print(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "values": [r if isinstance(r, str) else repr(r) for r in results],
                    "stats": cache.get_stats(),
                }
            ),
            flush=True,
        )
    finally:
        await control.aclose()
        await cache.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", default="hot")
    parser.add_argument("--prefix", default="taskiq_flow_cache:")
    parser.add_argument("--callers", type=int, default=50)
    parser.add_argument("--lease", type=float, default=10)
    parser.add_argument("--max-wait", type=float, default=30)
    parser.add_argument("--sleep", type=float, default=0.5)
    parser.add_argument("--counter", default="test:executions")
    parser.add_argument("--ready", default="test:ready")
    parser.add_argument("--go", default="test:go")
    asyncio.run(main(parser.parse_args()))
