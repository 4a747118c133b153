"""Redis Cluster and Sentinel: URLs, hash tags, scans over every primary, bad input.

The contract suite (test_contract.py) runs on both topologies too; these are the
topology-specific rules.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.cluster import ClusterNode, RedisCluster

from taskiq_flow.storage import InvalidStorageURLError, StorageConfigError, StorageConnectionError
from taskiq_flow.storage.kit import parse_redis_url, redact_url
from taskiq_flow.storage.kit.cluster import by_slot, check_tag_prefix, hash_tag, slot_of, untag
from taskiq_flow.storage.redis import RedisStorageAdapter
from taskiq_flow_testing import RedisClusterServers, SentinelServers, free_low_port

# ---------------------------------------------------------------- URLs


def test_cluster_and_sentinel_urls_parse() -> None:
    cluster = parse_redis_url("redis+cluster://app:s3cret@h1:7000,h2,[::1]:7002")
    assert cluster.topology == "cluster"
    assert cluster.nodes == (("h1", 7000), ("h2", 6379), ("::1", 7002))
    assert (cluster.username, cluster.password) == ("app", "s3cret")
    sentinel = parse_redis_url(
        "rediss+sentinel://:pw@s1:26379,s2/mymaster/3?sentinel_password=sp%40"
    )
    assert sentinel.topology == "sentinel"
    assert sentinel.nodes == (("s1", 26379), ("s2", 26379))
    assert (sentinel.service, sentinel.db, sentinel.tls) == ("mymaster", 3, True)
    assert (sentinel.password, sentinel.sentinel_password) == ("pw", "sp@")
    assert "pw" not in repr(sentinel)
    assert "sp@" not in repr(sentinel)
    assert parse_redis_url("redis://h/1").topology == "server"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis+cluster://:hunter2@h1:1,h2:2", "redis+cluster://:***@h1:1,h2:2"),
        (
            "redis+sentinel://u:hunter2@s1,s2/m?sentinel_password=hunter2",
            "redis+sentinel://u:***@s1,s2/m?sentinel_password=***",
        ),
    ],
)
def test_topology_urls_are_redacted(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    ("url", "cause"),
    [
        ("redis+cluster://", "no host"),
        ("redis+cluster://:hunter2@h:1/2", "only database 0"),
        ("redis+cluster://:hunter2@h:99999", "bad port"),
        ("redis+cluster://:hunter2@h:1?sentinel_password=x", "sentinel_password"),
        ("redis+sentinel://:hunter2@s:1", "no service name"),
        ("redis+sentinel://:hunter2@s:1/m/x", "database number"),
        ("redis+sentinel://:hunter2@s:1/m?timeout=3", "unsupported option timeout"),
    ],
)
def test_bad_topology_urls_name_the_redacted_url_and_the_cause(url: str, cause: str) -> None:
    with pytest.raises(InvalidStorageURLError, match=cause) as info:
        RedisStorageAdapter(url)
    assert "hunter2" not in str(info.value)


# ---------------------------------------------------------------- hash tags


@given(st.text(min_size=1), st.text(alphabet="ab{}:", max_size=6))
def test_every_name_built_on_a_tag_shares_its_slot(key: str, tail: str) -> None:
    tag = hash_tag(key)
    names = [f"p:v:{tag}", f"p:lock:{tag}", f"p:wake:{tag}:{tail}"]
    assert len({slot_of(name) for name in names}) == 1


@given(st.text(min_size=1), st.text(min_size=1))
def test_tags_of_different_keys_differ_and_give_the_key_back(one: str, other: str) -> None:
    if one != other:
        assert hash_tag(one) != hash_tag(other)
    assert untag(hash_tag(one)) == one


def test_tags_are_readable_when_they_can_be() -> None:
    assert hash_tag("task:v1:abc") == "{task:v1:abc}"
    assert hash_tag("a{b}").endswith("}a{b}")
    with pytest.raises(StorageConfigError, match="hash slot"):
        check_tag_prefix("app{1}:", lambda v, r: StorageConfigError(r))
    assert check_tag_prefix("app}:", lambda v, r: StorageConfigError(r)) == "app}:"
    assert by_slot(["{x}1", "{x}2", "y"]) == {slot_of("x"): ["{x}1", "{x}2"], slot_of("y"): ["y"]}


# ---------------------------------------------------------------- Cluster


@pytest.mark.redis
@pytest.mark.redis_cluster
async def test_10000_keys_over_three_primaries_are_all_listed(
    redis_cluster: RedisClusterServers,
) -> None:
    async with RedisStorageAdapter(redis_cluster.url) as storage:
        items = {f"record:{i}": i for i in range(10_000)}
        for start in range(0, 10_000, 2_500):
            batch = dict(list(items.items())[start : start + 2_500])
            await storage.set_many(batch, ttl_seconds=600)
        per_node = redis_cluster.count_keys()
        assert len(per_node) == 3
        assert all(count > 2_000 for count in per_node), per_node
        assert sum(per_node) == 10_000
        assert await storage.keys("*") == sorted(items)
        assert len([key async for key in storage.iter_keys("record:1*")]) == 1_111
        got = await storage.get_many(list(items))
        assert got == items
        assert await storage.delete_many(list(items)[:5_000]) == 5_000
        assert await storage.cleanup(ttl_seconds=3600) == 0
        assert sum(redis_cluster.count_keys()) == 5_000
        await asyncio.sleep(1.0)
        assert await storage.cleanup(ttl_seconds=1) == 5_000  # every primary's share
        assert redis_cluster.count_keys() == [0, 0, 0]


@pytest.mark.redis
@pytest.mark.redis_cluster
async def test_a_given_cluster_client_is_used_and_left_open(
    redis_cluster: RedisClusterServers,
) -> None:
    port = redis_cluster.nodes[0].port
    client = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", port)])
    try:
        storage = RedisStorageAdapter(client=client, key_prefix="mine:")
        assert storage.client is client
        assert storage.connection.is_cluster
        assert "redis+cluster://127.0.0.1:" in repr(storage)
        await asyncio.gather(*(storage.set(f"k{i}", i) for i in range(50)))
        assert len(await storage.keys()) == 50
        await storage.close()
        assert await client.get("mine:k1") is not None  # still open
    finally:
        await client.aclose()


@pytest.mark.redis
@pytest.mark.redis_cluster
async def test_wait_replicas_is_refused_on_a_cluster(redis_cluster_url: str) -> None:
    with pytest.raises(StorageConfigError, match="Cluster"):
        RedisStorageAdapter(redis_cluster_url, wait_replicas=1)


# ---------------------------------------------------------------- Sentinel


@pytest.mark.redis
@pytest.mark.redis_sentinel
async def test_wait_replicas_confirms_writes_and_reports_missing_replicas(
    redis_sentinel: SentinelServers,
) -> None:
    async with RedisStorageAdapter(redis_sentinel.url, wait_replicas=1) as storage:
        await storage.set("k", 1)
        assert await storage.add("claim", 1)
        await asyncio.gather(*(storage.set(f"c{i}", i) for i in range(20)))  # coalesced
        await storage.set_many({f"m{i}": i for i in range(1_500)}, ttl_seconds=60)  # MULTI
        assert await storage.delete_many([f"m{i}" for i in range(1_500)]) == 1_500
    with redis.Redis(port=redis_sentinel.replica.port) as replica:
        assert replica.exists(b"taskiq_flow:claim", b"taskiq_flow:c19") == 2
    storage = RedisStorageAdapter(redis_sentinel.url, wait_replicas=2, wait_timeout=0.2)
    try:
        with pytest.raises(StorageConnectionError, match="1 of the 2 replicas") as info:
            await storage.set("k", 2)
        assert "redis+sentinel://127.0.0.1:" in str(info.value)
    finally:
        await storage.close()
    with pytest.raises(StorageConfigError, match="below socket_timeout"):
        RedisStorageAdapter(redis_sentinel.url, wait_replicas=1, wait_timeout=5)


# ---------------------------------------------------------------- bad input


async def _first_error(url: str) -> StorageConnectionError:
    storage = RedisStorageAdapter(url, connect_timeout=0.5, retries=0)
    try:
        with pytest.raises(StorageConnectionError) as info:
            await storage.get("k")
    finally:
        await storage.close()
    return info.value


@pytest.mark.redis
async def test_cluster_url_at_a_plain_server(redis_server: Any) -> None:
    redis_server.password = None
    url = f"redis+cluster://app:hunter2@127.0.0.1:{redis_server.port}"
    error = await _first_error(url)
    assert f"redis+cluster://app:***@127.0.0.1:{redis_server.port}" in str(error)
    assert "hunter2" not in str(error)
    assert "cluster" in str(error).lower()
    assert "not enabled" in str(error) or "cannot be connected" in str(error)


@pytest.mark.redis
@pytest.mark.redis_sentinel
async def test_sentinel_url_with_an_unknown_service(redis_sentinel: SentinelServers) -> None:
    url = redis_sentinel.url.replace("redis+sentinel://", "redis+sentinel://:hunter2@")
    error = await _first_error(url.replace(redis_sentinel.service, "no-such-service"))
    assert "No master found for 'no-such-service'" in str(error)
    assert "redis+sentinel://:***@127.0.0.1:" in str(error)
    assert "hunter2" not in str(error)


async def test_unreachable_seeds() -> None:
    ports = [free_low_port() for _ in range(2)]
    seeds = ",".join(f"127.0.0.1:{port}" for port in ports)
    error = await _first_error(f"redis+cluster://:hunter2@{seeds}")
    assert f"redis+cluster://:***@{seeds}" in str(error)
    assert "hunter2" not in str(error)
    assert "connect" in str(error).lower()
    sentinel = await _first_error(f"redis+sentinel://:hunter2@{seeds}/svc")
    assert "No master found for 'svc'" in str(sentinel)
    assert "hunter2" not in str(sentinel)
