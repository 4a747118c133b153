"""StorageAdapterFactory: every setting changes what is built, on real Redis and SQLite files."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from taskiq_flow.cache import InMemoryCacheAdapter, RedisCacheAdapter
from taskiq_flow.config import ConfigError, TaskiqFlowConfig
from taskiq_flow.factory import StorageAdapterFactory
from taskiq_flow.middlewares import CacheMiddleware, StorageMiddleware
from taskiq_flow.storage import (
    InMemoryStorageAdapter,
    RedisStorageAdapter,
    SQLiteStorageAdapter,
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for item in TaskiqFlowConfig.settings():
        monkeypatch.delenv(item["env_var"], raising=False)


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


def _sqlite_keys(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        tables = [r[0] for r in conn.execute("select name from sqlite_master where type='table'")]
        assert tables, "the SQLite file has no table"
        return sum(conn.execute(f'select count(*) from "{t}"').fetchone()[0] for t in tables)  # noqa: S608


# -- one test per variable of the guide's table ---------------------------------------


async def test_env_storage_type_selects_the_backend(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, redis_url: str
) -> None:
    db = tmp_path / "store.db"
    monkeypatch.setenv("TASKIQ_FLOW_STORAGE_SQLITE_PATH", str(db))
    monkeypatch.setenv("TASKIQ_FLOW_STORAGE_REDIS_URL", redis_url)
    built = {}
    for kind in ("sqlite", "inmemory", "redis", "auto"):
        monkeypatch.setenv("TASKIQ_FLOW_STORAGE_TYPE", kind)
        built[kind] = StorageAdapterFactory.create_storage_adapter()
    try:
        assert isinstance(built["sqlite"], SQLiteStorageAdapter)
        assert isinstance(built["inmemory"], InMemoryStorageAdapter)
        assert isinstance(built["redis"], RedisStorageAdapter)
        # auto: Redis beats SQLite when both are configured.
        assert isinstance(built["auto"], RedisStorageAdapter)
        await built["sqlite"].set("k", 1)
        assert db.exists()
        assert _sqlite_keys(db) == 1
    finally:
        for adapter in built.values():
            await adapter.close()


async def test_env_storage_redis_url_points_storage_at_that_server(
    monkeypatch: pytest.MonkeyPatch, raw: aioredis.Redis, redis_url: str
) -> None:
    monkeypatch.setenv("TASKIQ_FLOW_STORAGE_REDIS_URL", redis_url)
    storage = StorageAdapterFactory.create_storage_adapter()
    try:
        assert isinstance(storage, RedisStorageAdapter)
        await storage.set("task:abc", {"ok": True})
        assert await raw.exists("taskiq_flow:task:abc") == 1
        assert await storage.get("task:abc") == {"ok": True}
    finally:
        await storage.close()


async def test_env_storage_ttl_seconds_sets_retention(
    monkeypatch: pytest.MonkeyPatch, raw: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    monkeypatch.setenv("TASKIQ_FLOW_STORAGE_TTL_SECONDS", "86400")
    monkeypatch.setenv("TASKIQ_FLOW_STORAGE_REDIS_URL", redis_url)
    storage = StorageAdapterFactory.create_storage_adapter()
    try:
        await storage.set("k", "v")
        assert 86_000_000 < await raw.pttl("taskiq_flow:k") <= 86_400_000
    finally:
        await storage.close()
    # Same on SQLite, and on the middleware.
    monkeypatch.delenv("TASKIQ_FLOW_STORAGE_REDIS_URL")
    monkeypatch.setenv("TASKIQ_FLOW_STORAGE_SQLITE_PATH", str(tmp_path / "ttl.db"))
    middleware = StorageAdapterFactory.create_default_middlewares()["storage"]
    try:
        assert middleware.ttl_seconds == 86_400
        await middleware.storage.set("k", "v")
        entry = await middleware.storage.get_entry("k")
        assert entry is not None
        remaining = entry.remaining_ttl()
        assert remaining is not None
        assert 86_000 < remaining <= 86_400
    finally:
        await middleware.storage.close()
    # Unset: kept forever.
    monkeypatch.delenv("TASKIQ_FLOW_STORAGE_TTL_SECONDS")
    storage = StorageAdapterFactory.create_storage_adapter()
    try:
        await storage.set("forever", 1)
        entry = await storage.get_entry("forever")
        assert entry is not None
        assert entry.expires_at is None
    finally:
        await storage.close()


async def test_env_cache_type_selects_the_backend(
    monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    monkeypatch.setenv("TASKIQ_FLOW_CACHE_REDIS_URL", redis_url)
    monkeypatch.setenv("TASKIQ_FLOW_CACHE_TYPE", "inmemory")
    memory = StorageAdapterFactory.create_cache_adapter()
    monkeypatch.setenv("TASKIQ_FLOW_CACHE_TYPE", "redis")
    remote = StorageAdapterFactory.create_cache_adapter()
    try:
        assert isinstance(memory, InMemoryCacheAdapter)
        assert isinstance(remote, RedisCacheAdapter)
    finally:
        await memory.close()
        await remote.close()
    monkeypatch.delenv("TASKIQ_FLOW_CACHE_REDIS_URL")
    with pytest.raises(ConfigError, match="TASKIQ_FLOW_CACHE_REDIS_URL"):
        StorageAdapterFactory.create_cache_adapter()


async def test_env_cache_redis_url_points_cache_at_that_server(
    monkeypatch: pytest.MonkeyPatch, raw: aioredis.Redis, redis_url: str
) -> None:
    monkeypatch.setenv("TASKIQ_FLOW_CACHE_REDIS_URL", redis_url)
    cache = StorageAdapterFactory.create_cache_adapter()
    try:
        assert isinstance(cache, RedisCacheAdapter)
        await cache.set("answer", 42, 60)
        keys = [k.decode() async for k in raw.scan_iter("taskiq_flow_cache:*")]
        assert keys, "nothing written under the default cache prefix"
        assert await cache.get("answer") == 42
        # The storage side is untouched: each side reads its own URL.
        storage = StorageAdapterFactory.create_storage_adapter()
        assert isinstance(storage, InMemoryStorageAdapter)
        await storage.close()
    finally:
        await cache.close()


# -- the settings beyond the guide's table ----------------------------------------------


async def test_env_cache_default_ttl_and_lock_timeout(
    monkeypatch: pytest.MonkeyPatch, raw: aioredis.Redis, redis_url: str
) -> None:
    monkeypatch.setenv("TASKIQ_FLOW_CACHE_REDIS_URL", redis_url)
    monkeypatch.setenv("TASKIQ_FLOW_CACHE_DEFAULT_TTL", "120")
    monkeypatch.setenv("TASKIQ_FLOW_CACHE_LOCK_TIMEOUT", "3")
    middleware = StorageAdapterFactory.create_default_middlewares()["cache"]
    try:
        assert middleware.default_ttl == 120
        cache = middleware.cache
        assert isinstance(cache, RedisCacheAdapter)
        assert cache.lock_timeout == 3
        await cache.get_or_create("k", _make_value)
        ttls = [await raw.pttl(k) async for k in raw.scan_iter("taskiq_flow_cache:*")]
        assert any(100_000 < t <= 120_000 for t in ttls), ttls
    finally:
        await middleware.cache.close()


async def _make_value() -> str:
    return "made"


async def test_env_key_prefixes(
    monkeypatch: pytest.MonkeyPatch, raw: aioredis.Redis, redis_url: str
) -> None:
    monkeypatch.setenv("TASKIQ_FLOW_STORAGE_REDIS_URL", redis_url)
    monkeypatch.setenv("TASKIQ_FLOW_CACHE_REDIS_URL", redis_url)
    monkeypatch.setenv("TASKIQ_FLOW_STORAGE_KEY_PREFIX", "app1:")
    monkeypatch.setenv("TASKIQ_FLOW_CACHE_KEY_PREFIX", "app1c:")
    storage = StorageAdapterFactory.create_storage_adapter()
    cache = StorageAdapterFactory.create_cache_adapter()
    try:
        await storage.set("k", 1)
        await cache.set("k", 1, 60)
        keys = sorted([k.decode() async for k in raw.scan_iter("*")])
        assert "app1:k" in keys
        assert any(k.startswith("app1c:") for k in keys)
        assert not any(k.startswith("taskiq_flow") for k in keys)
    finally:
        await storage.close()
        await cache.close()


async def test_env_sqlite_path_as_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TASKIQ_FLOW_STORAGE_SQLITE_PATH", "sqlite:///rel.db")
    storage = StorageAdapterFactory.create_storage_adapter()
    try:
        assert isinstance(storage, SQLiteStorageAdapter)
        await storage.set("k", 1)
    finally:
        await storage.close()
    assert (tmp_path / "rel.db").exists()


async def test_env_enabled_flags_reach_the_middlewares(monkeypatch: pytest.MonkeyPatch) -> None:
    middlewares = StorageAdapterFactory.create_default_middlewares()
    assert middlewares["cache"].enabled is True
    assert middlewares["storage"].enabled is True
    monkeypatch.setenv("TASKIQ_FLOW_STORAGE_ENABLED", "false")
    monkeypatch.setenv("TASKIQ_FLOW_CACHE_ENABLED", "0")
    middlewares = StorageAdapterFactory.create_default_middlewares()
    assert isinstance(middlewares["cache"], CacheMiddleware)
    assert isinstance(middlewares["storage"], StorageMiddleware)
    assert middlewares["cache"].enabled is False
    assert middlewares["storage"].enabled is False


async def test_env_max_entries_bound_the_in_memory_adapters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TASKIQ_FLOW_STORAGE_MAX_ENTRIES", "2")
    monkeypatch.setenv("TASKIQ_FLOW_CACHE_MAX_ENTRIES", "2")
    storage = StorageAdapterFactory.create_storage_adapter()
    cache = StorageAdapterFactory.create_cache_adapter()
    for key in ("a", "b", "c"):
        await storage.set(key, key)
        await cache.set(key, key, 60)
    assert sorted(await storage.keys("*")) == ["b", "c"]
    assert await cache.get("a") is None
    assert await cache.get("c") == "c"
    await storage.close()
    await cache.close()


# -- auto rules and errors ----------------------------------------------------------------


def test_auto_without_anything_is_in_memory_and_never_localhost() -> None:
    config = TaskiqFlowConfig()
    storage = StorageAdapterFactory.create_storage_adapter(config)
    cache = StorageAdapterFactory.create_cache_adapter(config)
    assert isinstance(storage, InMemoryStorageAdapter)
    assert isinstance(cache, InMemoryCacheAdapter)


async def test_auto_sqlite_when_only_a_path_is_configured(tmp_path: Path) -> None:
    config = TaskiqFlowConfig(storage_sqlite_path=str(tmp_path / "a.db"), environ={})
    storage = StorageAdapterFactory.create_storage_adapter(config)
    assert isinstance(storage, SQLiteStorageAdapter)
    # SQLite is storage only: the cache stays in memory.
    assert isinstance(StorageAdapterFactory.create_cache_adapter(config), InMemoryCacheAdapter)
    await storage.close()


def test_explicit_config_ignores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKIQ_FLOW_STORAGE_TYPE", "reddis")
    config = TaskiqFlowConfig(storage_type="inmemory")
    assert isinstance(StorageAdapterFactory.create_storage_adapter(config), InMemoryStorageAdapter)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TASKIQ_FLOW_STORAGE_TYPE", "reddis"),
        ("TASKIQ_FLOW_CACHE_TYPE", "memcached"),
        ("TASKIQ_FLOW_STORAGE_TTL_SECONDS", "24h"),
        ("TASKIQ_FLOW_CACHE_DEFAULT_TTL", "3600.0"),
        ("TASKIQ_FLOW_STORAGE_REDIS_URL", "redis//localhost:6379"),
        ("TASKIQ_FLOW_CACHE_REDIS_URL", "redis://localhost:63a9"),
    ],
)
def test_every_factory_method_reports_bad_variables(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    for method in (
        StorageAdapterFactory.create_storage_adapter,
        StorageAdapterFactory.create_cache_adapter,
        StorageAdapterFactory.create_default_middlewares,
    ):
        with pytest.raises(ConfigError, match=variable):
            method()


def test_guide_import_path() -> None:
    from taskiq_flow.storage.factory import StorageAdapterFactory as FromStorage

    assert FromStorage is StorageAdapterFactory


def test_redis_selected_without_the_redis_package() -> None:
    """In a process where `redis` cannot be imported, the error names the extra to install."""
    import subprocess
    import sys

    script = (
        "import sys; sys.modules['redis'] = None\n"  # what an absent package looks like
        "from taskiq_flow.config import BackendNotInstalledError, TaskiqFlowConfig\n"
        "from taskiq_flow.factory import StorageAdapterFactory\n"
        "env = {'TASKIQ_FLOW_CACHE_REDIS_URL': 'redis://cache:6379/0'}\n"
        "try:\n"
        "    StorageAdapterFactory.create_cache_adapter(TaskiqFlowConfig(environ=env))\n"
        "except BackendNotInstalledError as exc:\n"
        "    assert isinstance(exc, ImportError)\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'taskiq-flow-cache[redis]'" in done.stdout
    assert done.stdout.startswith("TASKIQ_FLOW_CACHE_REDIS_URL selects the redis backend")
