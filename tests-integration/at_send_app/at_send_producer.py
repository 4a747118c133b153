"""One producer process: wait for the go signal, kiq N identical calls, print the outcome.

    python at_send_producer.py TASK ARG N      (settings from ASA_* like the app)

Prints one JSON line: the values every call got and the seconds from the go signal (or
from ``asa:killed`` when set) to the last value.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import at_send_app
import redis.asyncio as aioredis


async def main(task_name: str, arg: str, n: int) -> None:
    broker = at_send_app.broker
    task = broker.find_task(task_name)
    assert task is not None
    value: object = int(arg) if arg.isdigit() else arg
    client = aioredis.from_url(at_send_app.REDIS_URL)
    await broker.startup()
    try:
        await client.incr("asa:producers:ready")
        while not await client.exists("asa:go"):
            await asyncio.sleep(0.005)
        sent = await asyncio.gather(*(task.kiq(value) for _ in range(n)))
        await client.incr("asa:producers:sent")
        results = await asyncio.gather(
            *(t.wait_result(check_interval=0.02, timeout=60) for t in sent)
        )
        done = time.time()
        killed = await client.get("asa:killed")
        print(
            json.dumps(
                {
                    "values": [r.return_value for r in results],
                    "errors": [repr(r.error) for r in results if r.is_err],
                    "done_at": done,
                    "since_kill": None if killed is None else done - float(killed),
                    "stats": broker.middlewares[0].get_stats()["middleware"],
                }
            )
        )
    finally:
        await broker.shutdown()
        await client.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
