"""pytest plugin: the one Redis fixture of the repository.

``redis_url`` is a private ``redis-server`` per test session (so one per xdist worker)
on a free port, or ``TASKIQ_FLOW_TEST_REDIS_URL`` when set. Without either the
test is skipped with the reason, unless ``TASKIQ_FLOW_REQUIRE_REDIS=1``, which turns the
skip into a failure (CI sets it).

``redis_server`` is a server owned by one test (kill/restart it for fault runs).

``redis_cluster_url`` and ``redis_sentinel_url`` are the same for the two other
topologies (:mod:`taskiq_flow_testing.topologies`): a three-primary Redis Cluster and a
master + replica + three sentinels, each started once per session (per xdist worker)
on first use, emptied before every test. Tests over them carry the markers
``redis_cluster`` / ``redis_sentinel`` (registered here). ``redis_cluster`` and
``redis_sentinel`` give the topology objects themselves (node ports, ``count_keys``...).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis._parsers.commands import AsyncCommandsParser

from taskiq_flow_testing.redis_server import ENV_URL, RedisServer, redis_url_or_skip
from taskiq_flow_testing.topologies import RedisClusterServers, SentinelServers


def pytest_configure(config: pytest.Config) -> None:
    """Register the topology markers."""
    config.addinivalue_line("markers", "redis_cluster: runs on a 3-primary Redis Cluster")
    config.addinivalue_line(
        "markers", "redis_sentinel: runs on a Sentinel set (master, replica, 3 sentinels)"
    )


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


def _binaries_or_skip(*names: str) -> None:
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        redis_url_or_skip(f"{', '.join(missing)} not on PATH (needed for a Redis topology)")


@pytest.fixture(scope="session")
def _session_cluster() -> Iterator[RedisClusterServers | None]:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        yield None
        return
    with RedisClusterServers() as cluster, _command_table_fetched_once(cluster.nodes[0].port):
        yield cluster


@contextlib.contextmanager
def _command_table_fetched_once(port: int) -> Iterator[None]:
    """Every new ``RedisCluster`` client of this process reuses the first one's table.

    redis-py fetches and parses ``COMMAND`` (some 200 KB) whenever a cluster client
    starts: 0.3-0.5 s on a busy machine, paid by the first command of every adapter a
    test builds, which shifts the timing of tests that race two callers. The table is
    the servers' (one version here), so fetching it once changes nothing else.
    """
    original = AsyncCommandsParser.initialize
    with redis.Redis(port=port) as client:
        table: dict[str, Any] = {name.lower(): info for name, info in client.command().items()}

    async def initialize(self: AsyncCommandsParser, node: Any = None) -> None:
        if node:
            self.node = node
        self.commands = dict(table)

    AsyncCommandsParser.initialize = initialize  # type: ignore[method-assign]
    try:
        yield
    finally:
        AsyncCommandsParser.initialize = original  # type: ignore[method-assign]


@pytest.fixture(scope="session")
def _session_sentinel() -> Iterator[SentinelServers | None]:
    if shutil.which("redis-server") is None:
        yield None
        return
    # No failover on the shared set (fault tests own theirs): no wait for peer discovery.
    with SentinelServers(await_peers=False) as servers:
        yield servers


@pytest.fixture
def redis_cluster(_session_cluster: RedisClusterServers | None) -> RedisClusterServers:
    """The session's Redis Cluster, emptied (every primary) for this test."""
    if _session_cluster is None:
        _binaries_or_skip("redis-server", "redis-cli")
        raise AssertionError  # pragma: no cover - the line above skips or fails
    _session_cluster.flush()
    return _session_cluster


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisClusterServers) -> str:
    """``redis+cluster://`` URL of an empty three-primary Redis Cluster."""
    return redis_cluster.url


@pytest.fixture
def redis_sentinel(_session_sentinel: SentinelServers | None) -> SentinelServers:
    """The session's Sentinel set, its master emptied for this test."""
    if _session_sentinel is None:
        _binaries_or_skip("redis-server")
        raise AssertionError  # pragma: no cover - the line above skips or fails
    _session_sentinel.flush()
    return _session_sentinel


@pytest.fixture
def redis_sentinel_url(redis_sentinel: SentinelServers) -> str:
    """``redis+sentinel://`` URL of an empty Sentinel-watched master."""
    return redis_sentinel.url
