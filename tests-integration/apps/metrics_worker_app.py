"""Worker app of the metrics suite: taskiq's PrometheusMiddleware beside both of ours.

Everything goes through the test's private Redis (TASKIQ_FLOW_IT_REDIS_URL): the broker,
the result backend, the cache (with its cluster-wide stats) and the store. The
Prometheus endpoint listens on 127.0.0.1:TASKIQ_FLOW_IT_METRICS_PORT; the workers share
the multiprocess directory PROMETHEUS_MULTIPROC_DIR, which must be set before
prometheus-client is imported (so in the worker's environment, not here). Whichever
worker binds the port serves the sum of every worker's metrics.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from taskiq.middlewares import PrometheusMiddleware
from taskiq_redis import RedisAsyncResultBackend

from taskiq_flow.cache import RedisCacheAdapter
from taskiq_flow.middlewares import CacheMiddleware, StorageMiddleware
from taskiq_flow.storage import RedisStorageAdapter
from taskiq_flow_testing import list_queue_broker

REDIS_URL = os.environ["TASKIQ_FLOW_IT_REDIS_URL"]
QUEUE = os.environ.get("TASKIQ_FLOW_IT_QUEUE", "taskiq_flow_it_metrics")
TASK_NAME = "it_metrics.square"

broker = list_queue_broker(REDIS_URL, QUEUE).with_result_backend(
    RedisAsyncResultBackend(REDIS_URL, result_ex_time=600),
)
broker.add_middlewares(
    PrometheusMiddleware(
        metrics_path=Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]),
        server_port=int(os.environ["TASKIQ_FLOW_IT_METRICS_PORT"]),
        server_addr="127.0.0.1",
    ),
    CacheMiddleware(
        cache=RedisCacheAdapter(redis_url=REDIS_URL, lock_timeout=5),
        default_ttl=600,
        # The producer sends without our middlewares: every call reaches a worker, so
        # each is a hit or a miss there (none is answered at send).
        answer_at_send=False,
    ),
    # One record per task, hits included: 200 tasks, 200 storage writes.
    StorageMiddleware(storage=RedisStorageAdapter(redis_url=REDIS_URL), store_cache_hits=True),
)


@broker.task(task_name=TASK_NAME)
async def square(x: int) -> int:
    """Take a while, so that calls of one input overlap and some wait for its run."""
    await asyncio.sleep(0.05)
    return x * x
