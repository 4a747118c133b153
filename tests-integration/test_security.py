"""Security properties: no pickle, no password leaks, TLS URLs, prefix isolation.

- No module of the installed ``taskiq_flow`` packages imports pickle or a relative
  (cloudpickle, dill, marshal, shelve, jsonpickle), by any spelling the AST shows.
- A Redis password never appears in a ``repr``, an exception message, a log line or
  CLI output, whether the server accepts it, rejects it or is down.
- ``rediss://`` URLs are accepted by every constructor; failing to connect maps to our
  error tree.
- A key prefix isolates two apps on one server: neither lists, reads, cleans nor
  clears the other's keys.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.metadata
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from taskiq import InMemoryBroker

import taskiq_flow
from taskiq_flow.cache import CacheConnectionError, CacheError, RedisCacheAdapter
from taskiq_flow.config import TaskiqFlowConfig
from taskiq_flow.factory import StorageAdapterFactory
from taskiq_flow.middlewares import CacheMiddleware, StorageMiddleware
from taskiq_flow.storage import RedisStorageAdapter, StorageConnectionError, StorageError
from taskiq_flow_testing import RedisServer, free_port

FORBIDDEN = {
    "pickle",
    "_pickle",
    "cPickle",
    "cloudpickle",
    "dill",
    "marshal",
    "shelve",
    "jsonpickle",
}
PASSWORD = "Zq7-not-in-logs-4242"  # noqa: S105 - a test server's password


# -- no pickle ---------------------------------------------------------------------------


def _forbidden_imports(source: str, filename: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Call) and node.args:
            # __import__("pickle"), importlib.import_module("dill")
            func = node.func
            called = getattr(func, "attr", None) or getattr(func, "id", None)
            first = node.args[0]
            if called in {"__import__", "import_module"} and isinstance(first, ast.Constant):
                names = [str(first.value)]
        found += [f"{filename}:{node.lineno}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    return found


def _installed_sources() -> list[Path]:
    files: list[Path] = []
    for root in taskiq_flow.__path__:
        files += Path(root).rglob("*.py")
    return files


def test_scanner_catches_a_planted_pickle_import() -> None:
    # Shows the scan below can fail: every spelling is caught.
    planted = "import os\nimport pickle\nfrom dill import dumps\nx = __import__('marshal')\n"
    assert len(_forbidden_imports(planted, "planted.py")) == 3


def test_no_pickle_in_installed_packages() -> None:
    files = _installed_sources()
    subpackages = {p.parent.name for p in files}
    # The scan must see every member, or it proves nothing.
    assert {"storage", "cache", "middlewares", "factory", "config"} <= subpackages, subpackages
    hits = [hit for f in files for hit in _forbidden_imports(f.read_text(), str(f))]
    assert not hits, hits


def test_no_pickle_library_among_declared_dependencies() -> None:
    names = ["taskiq-flow", "taskiq-flow-storage", "taskiq-flow-cache"]
    names += ["taskiq-flow-middlewares", "taskiq-flow-factory"]
    for name in names:
        for requirement in importlib.metadata.requires(name) or []:
            assert requirement.split()[0].split("[")[0].lower() not in {
                "dill",
                "cloudpickle",
                "jsonpickle",
            }


# -- passwords --------------------------------------------------------------------------


@pytest.fixture
def secured_server():
    with RedisServer(password=PASSWORD) as server:
        yield server


def _url(port: int, password: str = PASSWORD, scheme: str = "redis") -> str:
    return f"{scheme}://:{password}@127.0.0.1:{port}/0"


async def test_password_never_in_reprs(secured_server: RedisServer) -> None:
    url = secured_server.url
    storage = RedisStorageAdapter(redis_url=url)
    cache = RedisCacheAdapter(redis_url=url)
    config = TaskiqFlowConfig(
        storage_type="redis", storage_redis_url=url, cache_type="redis", cache_redis_url=url
    )
    made = StorageAdapterFactory.create_default_middlewares(config=config)
    try:
        shown = [repr(storage), str(storage), repr(cache), repr(config), str(config)]
        shown += [repr(config.to_dict()), repr(made["cache"].cache), repr(made["storage"].storage)]
        shown += [repr(StorageMiddleware(storage=storage)), repr(CacheMiddleware(cache=cache))]
        for text in shown:
            assert PASSWORD not in text, text
        # and the adapters do work with that password
        await storage.set("k", 1)
        assert await storage.get("k") == 1
        assert await cache.get_or_create("k", lambda: 2) == 2
    finally:
        await storage.close()
        await cache.close()
        await made["cache"].cache.close()
        await made["storage"].storage.close()


@pytest.mark.parametrize("case", ["wrong_password", "server_down"])
async def test_password_never_in_errors_or_logs(
    secured_server: RedisServer, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    caplog.set_level(logging.DEBUG)
    if case == "wrong_password":
        secret = "Wr0ng-secret-9191"  # noqa: S105
        url = _url(secured_server.port, secret)
    else:
        secret = PASSWORD
        url = _url(free_port())
    storage = RedisStorageAdapter(redis_url=url, retries=0, connect_timeout=0.5)
    cache = RedisCacheAdapter(redis_url=url, connect_timeout=0.5)
    messages: list[str] = []
    try:
        with pytest.raises(StorageError) as storage_error:
            await storage.set("k", 1)
        with pytest.raises(CacheError) as cache_error:
            await cache.get("k")
        for exc in (storage_error.value, cache_error.value):
            chain: BaseException | None = exc
            while chain is not None:
                messages += [str(chain), repr(chain)]
                chain = chain.__cause__ or chain.__context__
        # Through the middlewares: failures are logged (with tracebacks), never raised.
        broker = InMemoryBroker(await_inplace=True)
        storage_mw = StorageMiddleware(storage=storage, error_log_interval=0)
        broker.add_middlewares(CacheMiddleware(cache=cache), storage_mw)

        @broker.task
        async def double(x: int) -> int:
            return 2 * x

        await broker.startup()
        task = await double.kiq(21)
        assert (await task.wait_result(timeout=10)).return_value == 42
        assert storage_mw.get_stats()["write_failures"] >= 1
        storage_mw.shutdown_flush_timeout = 0.1
        await broker.shutdown()
    finally:
        await storage.close()
        await cache.close()
    logged = caplog.text + "".join(
        logging.Formatter().format(r) for r in caplog.records if r.exc_info
    )
    assert "storage write failed" in logged
    for text in [*messages, logged]:
        assert secret not in text, text


def test_password_never_in_cli_output(secured_server: RedisServer, tmp_path: Path) -> None:
    for url in (
        secured_server.url,
        _url(secured_server.port, "Wr0ng-secret-9191"),
        _url(free_port()),
    ):
        secret = url.split(":")[2].split("@")[0]
        env = {
            **os.environ,
            "TASKIQ_FLOW_STORAGE_TYPE": "redis",
            "TASKIQ_FLOW_STORAGE_REDIS_URL": url,
        }
        for argv in (
            ["config"],
            ["--json", "config"],
            ["storage", "count"],
            ["--json", "storage", "keys"],
        ):
            done = subprocess.run(
                [sys.executable, "-m", "taskiq_flow.factory.cli", *argv],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                cwd=tmp_path,
                check=False,
            )
            assert secret not in done.stdout + done.stderr, (argv, done.stdout, done.stderr)


# -- rediss:// ---------------------------------------------------------------------------


async def test_rediss_urls_accepted_and_failures_mapped(redis_url: str) -> None:
    plain_port = int(redis_url.rsplit(":", 1)[1].split("/", maxsplit=1)[0])
    for port in (free_port(), plain_port):  # nothing listening / a server without TLS
        url = _url(port, scheme="rediss")
        storage = RedisStorageAdapter(redis_url=url, retries=0, connect_timeout=1, socket_timeout=1)
        cache = RedisCacheAdapter(redis_url=url, connect_timeout=1, socket_timeout=1)
        config = TaskiqFlowConfig(storage_redis_url=url, cache_redis_url=url)
        made = StorageAdapterFactory.create_default_middlewares(config=config)
        try:
            assert isinstance(made["storage"].storage, RedisStorageAdapter)
            assert isinstance(made["cache"].cache, RedisCacheAdapter)
            async with asyncio.timeout(15):
                with pytest.raises(StorageConnectionError) as storage_error:
                    await storage.get("k")
                with pytest.raises(CacheConnectionError):
                    await cache.get("k")
            assert PASSWORD not in str(storage_error.value)
        finally:
            await storage.close()
            await cache.close()
            await made["cache"].cache.close()
            await made["storage"].storage.close()


# -- key prefixes ------------------------------------------------------------------------


async def test_key_prefix_isolates_two_apps(redis_url: str) -> None:
    a = RedisStorageAdapter(redis_url=redis_url, key_prefix="app_a:")
    b = RedisStorageAdapter(redis_url=redis_url, key_prefix="app_b:")
    default = RedisStorageAdapter(redis_url=redis_url)  # "taskiq_flow:"
    cache_a = RedisCacheAdapter(redis_url=redis_url, key_prefix="cache_a:")
    cache_b = RedisCacheAdapter(redis_url=redis_url)  # "taskiq_flow_cache:"
    raw = aioredis.from_url(redis_url)
    try:
        for store, who in ((a, "a"), (b, "b"), (default, "default")):
            await store.set_many({f"task:{i}": {"owner": who, "i": i} for i in range(20)})
            await store.set("old", who, ttl_seconds=1)
        await cache_a.set("shared", "ca")
        await cache_b.set("shared", "cb")
        await cache_b.get_or_create("made", lambda: "cb")

        for store, who in ((a, "a"), (b, "b"), (default, "default")):
            keys = set(await store.keys("*"))
            assert keys == {f"task:{i}" for i in range(20)} | {"old"}
            assert [k async for k in store.iter_keys("task:*")]
            values = await store.get_many(sorted(keys - {"old"}))
            assert {v["owner"] for v in values.values()} == {who}
            assert await store.get("old") == who

        await asyncio.sleep(1.1)
        # A's cleanup of entries older than a second removes A's entries only.
        assert await a.cleanup(ttl_seconds=1) == 20
        assert await a.keys("*") == []
        assert len(await b.keys("*")) == 20
        assert len(await default.keys("*")) == 20
        assert await b.delete_many([f"task:{i}" for i in range(20)]) == 20
        assert len(await default.keys("*")) == 20

        assert await cache_a.clear() == 1
        assert await cache_b.get("shared") == "cb"
        assert await cache_b.get("made") == "cb"
        # Storage (default prefix) never lists the cache's keys, nor the reverse.
        assert all(not k.startswith(("v:", "lock:", "cache")) for k in await default.keys("*"))
        assert await cache_b.clear() == 2
        assert len(await default.keys("*")) == 20
        assert await raw.exists("taskiq_flow:task:0") == 1
    finally:
        for closable in (a, b, default, cache_a, cache_b):
            await closable.close()
        await raw.aclose()
