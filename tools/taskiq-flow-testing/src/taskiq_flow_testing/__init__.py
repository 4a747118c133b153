"""Private test helpers shared by every taskiq-flow test suite."""

from taskiq_flow_testing.brokers import list_queue_broker
from taskiq_flow_testing.redis_server import RedisServer, free_port, redis_url_or_skip
from taskiq_flow_testing.topologies import RedisClusterServers, SentinelServers, free_low_port
from taskiq_flow_testing.workers import (
    WorkerProcess,
    group_cpu_seconds,
    group_rss_kib,
    wait_workers_up,
)

__all__ = [
    "RedisClusterServers",
    "RedisServer",
    "SentinelServers",
    "WorkerProcess",
    "free_low_port",
    "free_port",
    "group_cpu_seconds",
    "group_rss_kib",
    "list_queue_broker",
    "redis_url_or_skip",
    "wait_workers_up",
]
