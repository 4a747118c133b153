"""Scheduler and worker app for the schedule-source suite (imported by `taskiq scheduler`
and `taskiq worker`, and by the test itself, which adds and deletes the schedules).

Broker, schedules and the firing log all live on the test's private Redis, given by
TASKIQ_FLOW_IT_REDIS_URL. Each execution of `fire` appends to the Redis list
`it:fired:{tag}`, so the test counts firings per schedule.
"""

from __future__ import annotations

import os
import time

import redis.asyncio as aioredis
from taskiq import TaskiqScheduler

from taskiq_flow.middlewares import StorageScheduleSource
from taskiq_flow.storage import RedisStorageAdapter
from taskiq_flow_testing import list_queue_broker

REDIS_URL = os.environ["TASKIQ_FLOW_IT_REDIS_URL"]
QUEUE = os.environ.get("TASKIQ_FLOW_IT_QUEUE", "taskiq_flow_it_schedule")

broker = list_queue_broker(REDIS_URL, QUEUE)
storage = RedisStorageAdapter(redis_url=REDIS_URL)
source = StorageScheduleSource(storage)
scheduler = TaskiqScheduler(broker, sources=[source])

_log = aioredis.from_url(REDIS_URL)


@broker.task(task_name="schedule_app:fire")
async def fire(tag: str) -> None:
    """Record one firing of the schedule ``tag``."""
    await _log.rpush(f"it:fired:{tag}", time.time())
