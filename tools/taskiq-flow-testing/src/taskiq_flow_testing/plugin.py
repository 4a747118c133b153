"""pytest plugin: the one Redis fixture of the repository.

``redis_url`` is a private ``redis-server`` per test session (so one per xdist worker)
on a free port, or ``TASKIQ_FLOW_TEST_REDIS_URL`` when set. Without either the
test is skipped with the reason, unless ``TASKIQ_FLOW_REQUIRE_REDIS=1``, which turns the
skip into a failure (CI sets it).

``redis_server`` is a server owned by one test (kill/restart it for fault runs).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
import redis

from taskiq_flow_testing.redis_server import ENV_URL, RedisServer, redis_url_or_skip


@pytest.fixture(scope="session")
def _session_redis() -> Iterator[str | None]:
    url = os.environ.get(ENV_URL)
    if url:
        yield url
        return
    if shutil.which("redis-server") is None:
        yield None
        return
    with RedisServer() as server:
        yield server.url


@pytest.fixture
def redis_url(_session_redis: str | None) -> str:
    """URL of a Redis server that is empty when the test starts."""
    if _session_redis is None:
        redis_url_or_skip(f"no redis-server on PATH and {ENV_URL} is not set")
    client = redis.Redis.from_url(_session_redis)
    try:
        client.flushdb()
    except redis.ConnectionError as exc:
        redis_url_or_skip(f"Redis at {_session_redis} is not reachable: {exc}")
    finally:
        client.close()
    return _session_redis


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private server this test may kill and restart."""
    if shutil.which("redis-server") is None:
        redis_url_or_skip("no redis-server on PATH (needed for a server the test owns)")
    with RedisServer() as server:
        yield server
