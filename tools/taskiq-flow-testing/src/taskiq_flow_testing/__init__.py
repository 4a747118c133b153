"""Private test helpers shared by every taskiq-flow test suite."""

from taskiq_flow_testing.redis_server import RedisServer, free_port, redis_url_or_skip
from taskiq_flow_testing.workers import WorkerProcess, group_rss_kib

__all__ = ["RedisServer", "WorkerProcess", "free_port", "group_rss_kib", "redis_url_or_skip"]
