"""Private test helpers shared by every taskiq-flow test suite."""

from taskiq_flow_testing.redis_server import RedisServer, free_port, redis_url_or_skip

__all__ = ["RedisServer", "free_port", "redis_url_or_skip"]
