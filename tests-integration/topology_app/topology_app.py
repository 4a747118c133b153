"""Worker app over a Redis Cluster or a Sentinel service (``taskiq worker topology_app:broker``).

Configured by the environment (read at import):

- ``TOPO_URL``: the storage and cache URL (``redis+cluster://`` or ``redis+sentinel://``);
- ``TOPO_BROKER``: ``cluster`` — taskiq-redis's ``ListQueueClusterBroker`` at
  ``TOPO_BROKER_URL`` (a ``redis://`` URL of one cluster node), results in the storage
  (``StorageResultBackend``); ``list`` — ``ListQueueBroker`` and taskiq-redis results on
  the plain server ``TOPO_BROKER_URL``, so only the storage and cache see the topology;
- ``TOPO_QUEUE``: the queue; ``TOPO_WAIT_REPLICAS``: the storage's ``wait_replicas``.

Tasks: ``identical(x)`` counts executions (``topo:runs:{x}`` on the broker's Redis) and
takes 0.5 s; ``stamp(n)`` returns ``{"n": n, "at": <end time>}`` after ``TOPO_SLEEP`` s.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncGenerator
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from taskiq import AsyncBroker
from taskiq.serializers import JSONSerializer
from taskiq_redis import ListQueueBroker, ListQueueClusterBroker, RedisAsyncResultBackend

from taskiq_flow.cache import RedisCacheAdapter
from taskiq_flow.middlewares import CacheMiddleware, StorageMiddleware, StorageResultBackend
from taskiq_flow.storage import RedisStorageAdapter

logger = logging.getLogger("topology_app")

URL = os.environ["TOPO_URL"]
BROKER_URL = os.environ["TOPO_BROKER_URL"]
KIND = os.environ.get("TOPO_BROKER", "cluster")
QUEUE = os.environ.get("TOPO_QUEUE", "topo")
SLEEP = float(os.environ.get("TOPO_SLEEP", "0"))


class PatientClusterBroker(ListQueueClusterBroker):
    """taskiq-redis's cluster broker, popping with a bounded ``BRPOP``.

    Its own ``listen`` blocks without a timeout, which redis-py 8's default socket
    timeout ends with an error when the queue stays empty for 5 s.
    """

    async def listen(self) -> AsyncGenerator[bytes, None]:
        """Pop messages, one bounded ``BRPOP`` at a time."""
        while True:
            popped = await self.redis.brpop([self.queue_name], timeout=1)
            if popped is not None:
                yield popped[1]


class PatientListBroker(ListQueueBroker):
    """``ListQueueBroker`` whose listener outlives a lost connection (see fault_app)."""

    async def listen(self) -> AsyncGenerator[bytes, None]:
        """Pop messages; on a connection error, wait a little and pop again."""
        while True:
            try:
                async with aioredis.Redis(connection_pool=self.connection_pool) as conn:
                    while True:
                        popped = await conn.brpop([self.queue_name], timeout=1)
                        if popped is not None:
                            yield popped[1]
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                logger.warning("broker connection lost (%s); retrying", exc)
                await asyncio.sleep(0.1)


storage = RedisStorageAdapter(URL, wait_replicas=int(os.environ.get("TOPO_WAIT_REPLICAS", "0")))
counter: Any
broker: AsyncBroker
if KIND == "cluster":
    broker = PatientClusterBroker(BROKER_URL, queue_name=QUEUE).with_result_backend(
        StorageResultBackend(storage, ttl_seconds=600)
    )
    counter = RedisCluster.from_url(BROKER_URL)
else:
    broker = PatientListBroker(BROKER_URL, queue_name=QUEUE).with_result_backend(
        RedisAsyncResultBackend(BROKER_URL, result_ex_time=600, serializer=JSONSerializer())
    )
    counter = aioredis.from_url(BROKER_URL)
broker.add_middlewares(
    CacheMiddleware(cache=RedisCacheAdapter(URL, lock_timeout=5, max_wait=60), default_ttl=600),
    StorageMiddleware(storage=storage, retry_interval=0.1, max_retry_interval=0.5),
)


@broker.task(task_name="topo.identical")
async def identical(x: int) -> int:
    """Count each real execution, then take a while."""
    await counter.incr(f"topo:runs:{x}")
    await asyncio.sleep(0.5)
    return x * 2


@broker.task(task_name="topo.stamp")
async def stamp(n: int) -> dict[str, float]:
    """``n`` and when the execution ended."""
    if SLEEP:
        await asyncio.sleep(SLEEP)
    return {"n": n, "at": time.time()}
