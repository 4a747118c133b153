"""Redis specifics: key prefix, native expiry, URLs and passwords, a server that goes away."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from taskiq_flow.storage import (
    InvalidStorageURLError,
    StorageConfigError,
    StorageConnectionError,
    StorageCorruptError,
    StorageError,
)
from taskiq_flow.storage.redis import RedisStorageAdapter
from taskiq_flow_testing import RedisServer, free_port


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_guide_constructor_and_native_px(redis_url: str, raw: aioredis.Redis) -> None:
    async with RedisStorageAdapter(redis_url=redis_url, ttl_seconds=86400) as storage:
        await storage.set("status", {"running": True})
        await storage.set("forever", 1, ttl_seconds=None)
        await storage.set("short", 1, ttl_seconds=30)
    assert 86_399_000 < await raw.pttl("taskiq_flow:status") <= 86_400_000
    assert 29_000 < await raw.pttl("taskiq_flow:short") <= 30_000
    assert 86_399_000 < await raw.pttl("taskiq_flow:forever") <= 86_400_000  # None: the default


async def test_no_ttl_means_no_expiry(redis_url: str, raw: aioredis.Redis) -> None:
    async with RedisStorageAdapter(redis_url) as storage:
        await storage.set("k", 1, ttl_seconds=60)
        await storage.set("k", 2)
        await storage.set_many({"m": 1})
    assert await raw.pttl("taskiq_flow:k") == -1
    assert await raw.pttl("taskiq_flow:m") == -1


async def test_key_prefix_isolation(redis_url: str, raw: aioredis.Redis) -> None:
    one = RedisStorageAdapter(redis_url, key_prefix="app1:")
    two = RedisStorageAdapter(redis_url, key_prefix="app2:")
    glob = RedisStorageAdapter(redis_url, key_prefix="app*:")  # glob syntax in a prefix
    try:
        await one.set_many({"shared": 1, "only1": 1})
        await two.set("shared", 2)
        await glob.set("g", 3)
        await raw.set("foreign", b"not ours")
        assert await one.get("shared") == 1
        assert await two.get("shared") == 2
        assert await one.keys() == ["only1", "shared"]
        assert await two.keys() == ["shared"]
        assert await glob.keys("*") == ["g"]
        assert await two.get_many(["shared", "only1"]) == {"shared": 2}
        assert not await two.exists("only1")
        assert await two.delete_many(["shared", "only1"]) == 1
        assert await one.keys() == ["only1", "shared"]
        assert await glob.keys() == ["g"]
        assert await raw.get("foreign") == b"not ours"
    finally:
        for adapter in (one, two, glob):
            await adapter.close()


async def test_cleanup_by_age_skips_foreign_values(redis_url: str, raw: aioredis.Redis) -> None:
    async with RedisStorageAdapter(redis_url, key_prefix="p:") as storage:
        await storage.set_many({"old": 1, "old2": 2}, ttl_seconds=600)
        await raw.set("p:foreign", b"no header here")
        await raw.hset("p:hash", "f", "v")
        await asyncio.sleep(1.01)  # age the entries: TTLs are whole seconds
        await storage.set("young", 3)
        assert await storage.cleanup() == 0  # Redis expires by itself
        assert await storage.cleanup(ttl_seconds=1) == 2
        assert sorted(k.decode() for k in await raw.keys("p:*")) == [
            "p:foreign",
            "p:hash",
            "p:young",
        ]


async def test_corrupt_bytes_name_the_key(redis_url: str, raw: aioredis.Redis) -> None:
    async with RedisStorageAdapter(redis_url) as storage:
        await storage.set("good", 1)
        header = (await raw.get("taskiq_flow:good"))[:17]
        await raw.set("taskiq_flow:bad", header + b"\xc1")
        await raw.set("taskiq_flow:short", b"\x01\x02")
        await raw.set("taskiq_flow:text", "plain text written by someone else")
        for key in ("bad", "short", "text"):
            with pytest.raises(StorageCorruptError, match=f"'{key}'") as info:
                await storage.get(key)
            assert info.value.key == key
            with pytest.raises(StorageCorruptError, match=f"'{key}'"):
                await storage.get_entry(key)
            with pytest.raises(StorageCorruptError, match=f"'{key}'"):
                await storage.get_many(["good", key])
        assert await storage.delete("bad")


async def test_wrong_type_under_key_is_a_storage_error(redis_url: str, raw: aioredis.Redis) -> None:
    async with RedisStorageAdapter(redis_url) as storage:
        await raw.hset("taskiq_flow:h", "f", "v")
        with pytest.raises(StorageError, match="WRONGTYPE"):
            await storage.get("h")


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:6379",
        "localhost:6379",
        "redis://localhost:notaport/0",
        "redis://user:s3cr3t-pw@localhost:99999999/0",
        "redis://:s3cr3t-pw@localhost:6379/notadb",
    ],
)
def test_bad_url(url: str) -> None:
    with pytest.raises(InvalidStorageURLError) as info:
        RedisStorageAdapter(url)
    assert isinstance(info.value, StorageConnectionError)
    assert isinstance(info.value, ValueError)
    assert "s3cr3t-pw" not in str(info.value)


def test_neither_or_both_url_and_client() -> None:
    with pytest.raises(StorageConfigError):
        RedisStorageAdapter()
    client = aioredis.Redis()
    with pytest.raises(StorageConfigError):
        RedisStorageAdapter("redis://localhost", client=client)
    with pytest.raises(StorageConfigError, match="decode_responses"):
        RedisStorageAdapter(client=aioredis.Redis(decode_responses=True))
    with pytest.raises(StorageConfigError):
        RedisStorageAdapter("redis://localhost", key_prefix=b"x")  # type: ignore[arg-type]


async def test_a_key_prefix_utf8_cannot_hold_is_a_config_error(
    redis_url: str, raw: aioredis.Redis
) -> None:
    # It used to be a bare UnicodeEncodeError from the constructor.
    for bad in ("p\udc80:", "\ud800"):
        with pytest.raises(StorageConfigError, match="key_prefix") as info:
            RedisStorageAdapter(redis_url, key_prefix=bad)
        assert isinstance(info.value.__cause__, UnicodeEncodeError)
    # Any prefix UTF-8 can hold works, the empty one (no namespace) included.
    for prefix in ("café☕:", ""):
        async with RedisStorageAdapter(redis_url, key_prefix=prefix) as storage:
            await storage.set("prefix-test", prefix)
            assert await raw.exists(f"{prefix}prefix-test".encode())
            assert await storage.keys("prefix-test*") == ["prefix-test"]
            assert await storage.delete("prefix-test")


async def test_unreachable_server_fails_promptly_without_the_password() -> None:
    port = free_port()
    storage = RedisStorageAdapter(f"redis://user:s3cr3t-pw@127.0.0.1:{port}/0")
    assert "s3cr3t-pw" not in repr(storage)
    assert "***" in repr(storage)
    started = time.monotonic()
    for call in (storage.set("k", 1), storage.get("k"), storage.keys(), storage.set_many({"a": 1})):
        with pytest.raises(StorageConnectionError) as info:
            await call
        assert "s3cr3t-pw" not in str(info.value)
        assert str(port) in str(info.value)
    assert time.monotonic() - started < 5
    await storage.close()


async def test_server_killed_and_restarted() -> None:
    with RedisServer() as server:
        async with RedisStorageAdapter(server.url) as storage:
            await storage.set("k", 1)
            server.kill()
            started = time.monotonic()
            with pytest.raises(StorageConnectionError):
                await storage.get("k")
            assert time.monotonic() - started < 5
            server.start()
            await storage.set("k", 2)  # the same adapter reconnects
            assert await storage.get("k") == 2


async def test_given_client_is_used_and_not_closed(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        storage = RedisStorageAdapter(client=client, key_prefix="c:")
        assert storage.client is client
        assert "127.0.0.1" in repr(storage)
        await storage.set("k", 1)
        await storage.close()
        assert await client.get("c:k") is not None  # still usable: not ours to close
    finally:
        await client.aclose()


async def test_more_concurrent_calls_than_connections_wait_for_one(redis_url: str) -> None:
    # A worker runs ~100 tasks at once; redis-py's default pool raised "Too many
    # connections" past its limit instead of letting callers wait.
    async with RedisStorageAdapter(redis_url, max_connections=4) as storage:
        await asyncio.gather(*(storage.set(f"k{i}", i) for i in range(300)))
        values = await asyncio.gather(*(storage.get(f"k{i}") for i in range(300)))
        assert values == list(range(300))
    with pytest.raises(ValueError, match="max_connections"):
        RedisStorageAdapter(redis_url, max_connections=0)


@pytest.mark.parametrize(
    "url",
    [
        "redis://:hunter2@127.0.0.1:1/0",
        "redis://user:hunter2@127.0.0.1:1/0",
        "redis://hunter2@127.0.0.1:1/0",
        "redis://127.0.0.1:1/0?password=hunter2",
        "rediss://user:hunter2@127.0.0.1:1/0",
    ],
)
async def test_password_never_in_repr_or_errors(url: str) -> None:
    storage = RedisStorageAdapter(url, connect_timeout=0.2, retries=0)
    try:
        assert "hunter2" not in repr(storage)
        with pytest.raises(StorageConnectionError) as info:
            await storage.set("k", 1)
        assert "hunter2" not in str(info.value)
    finally:
        await storage.close()


def test_bad_url_error_hides_the_password() -> None:
    with pytest.raises(InvalidStorageURLError) as info:
        RedisStorageAdapter("redis://user:hunter2@127.0.0.1:notaport/0")
    assert "hunter2" not in str(info.value)
    with pytest.raises(InvalidStorageURLError) as info:
        RedisStorageAdapter("http://127.0.0.1/0?password=hunter2")
    assert "hunter2" not in str(info.value)
