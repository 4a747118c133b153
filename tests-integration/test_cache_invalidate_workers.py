"""Invalidation against two real `taskiq worker` processes over a private Redis.

The workers and the producer are those of test_worker_cache.py (``cache_worker_app``):
``slow_square`` counts its runs per argument in Redis, ``quick`` counts all of its runs.
Invalidation goes through ``CacheMiddleware`` in the producer and through the
``taskiq-flow`` CLI as a separate process, against the running system.
"""

from __future__ import annotations

import asyncio
import importlib
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from taskiq_flow.cache import CacheConnectionError, CacheValueError
from taskiq_flow.middlewares import CacheMiddleware, cache_key_for

pytestmark = pytest.mark.redis

SQUARE = "cache_worker_app:slow_square"
QUICK = "cache_worker_app:quick"


@pytest.fixture
def shared(monkeypatch: pytest.MonkeyPatch) -> Any:
    """test_worker_cache's helpers (``_workers``, ``_producer_broker``), not copies."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    return importlib.import_module("test_worker_cache")


async def cli(url: str, *argv: str) -> tuple[int, str, str]:
    """``taskiq-flow ARGV`` as its own process, pointed at the workers' cache."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "taskiq_flow.factory.cli",
        *argv,
        "--cache-redis-url",
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


class Runs:
    def __init__(self, app: Any, client: aioredis.Redis) -> None:
        self.app = app
        self.client = client

    async def square(self, x: int, **labels: str) -> int:
        task = self.app.slow_square.kicker().with_labels(**labels)
        result = await (await task.kiq(x)).wait_result(timeout=60)
        assert not result.is_err, result.error
        assert result.return_value == x * x
        return int(await self.client.get(f"it:runs:slow_square:{x}") or 0)

    async def quick(self, x: int, **labels: str) -> int:
        task = self.app.quick.kicker().with_labels(**labels)
        result = await (await task.kiq(x)).wait_result(timeout=60)
        assert not result.is_err, result.error
        assert result.return_value == x + 1
        return int(await self.client.get("it:runs:quick") or 0)


async def test_invalidate_by_call_task_tag_and_cli_on_running_workers(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared: Any
) -> None:
    env = {"TASKIQ_FLOW_IT_REDIS_URL": redis_url, "TASKIQ_FLOW_IT_QUEUE": f"q-{tmp_path.name}"}
    workers = shared._workers(env, tmp_path)
    app = shared._producer_broker(env, monkeypatch)
    (mw,) = (m for m in app.broker.middlewares if isinstance(m, CacheMiddleware))
    client = aioredis.from_url(redis_url)
    runs = Runs(app, client)
    try:
        await app.broker.startup()
        await shared._up(app, client, workers)
        assert (await runs.square(3), await runs.square(4), await runs.quick(1)) == (1, 1, 1)
        assert (await runs.square(3), await runs.square(4), await runs.quick(1)) == (1, 1, 1)

        # One call: kiq(3) runs again, kiq(4) still hits.
        assert await mw.invalidate(app.slow_square, 3) is True
        assert (await runs.square(3), await runs.square(4)) == (2, 1)

        # One task: every call of it runs again, the other task still hits.
        assert await mw.invalidate_task(app.slow_square) == 2
        assert (await runs.square(3), await runs.square(4), await runs.quick(1)) == (3, 2, 1)

        # One tag, given per call.
        assert await runs.square(5, cache_tags="sq,all") == 1
        assert await runs.quick(2, cache_tags="q,all") == 2
        assert await mw.invalidate_tag("sq") == 1
        assert await runs.square(5, cache_tags="sq,all") == 2
        assert await runs.quick(2, cache_tags="q,all") == 2  # still a hit
        assert await mw.invalidate_tag("all") == 2

        # The CLI, a separate process, on the same running system.
        code, out, _ = await cli(redis_url, "cache", "keys", f"{SQUARE}:*")
        assert code == 0
        assert out.splitlines() == sorted(cache_key_for(app.slow_square, x) for x in (3, 4))
        code, out, _ = await cli(redis_url, "cache", "get", cache_key_for(app.quick, 1), "--json")
        assert code == 0
        assert '"value": 2' in out
        code, out, _ = await cli(redis_url, "cache", "invalidate", cache_key_for(app.quick, 1))
        assert (code, out) == (0, "removed 1 cached result\n")
        assert await runs.quick(1) == 3  # ran again
        code, out, _ = await cli(redis_url, "cache", "invalidate", "--task", SQUARE, "--dry-run")
        assert (code, out.splitlines()[-1]) == (0, "would remove 2 cached results")
        assert await runs.square(3) == 3  # a dry run removed nothing
        code, out, _ = await cli(redis_url, "cache", "invalidate", "--task", SQUARE)
        assert (code, out) == (0, "removed 2 cached results\n")
        assert (await runs.square(3), await runs.square(4), await runs.quick(1)) == (4, 3, 3)
        await runs.square(6, cache_tags="cli")
        code, out, _ = await cli(redis_url, "cache", "invalidate", "--tag", "cli")
        assert (code, out) == (0, "removed 1 cached result\n")
        assert await runs.square(6, cache_tags="cli") == 2
        code, out, _ = await cli(redis_url, "cache", "invalidate", "--pattern", f"{QUICK}:*")
        assert code == 0
        assert await runs.quick(1) == 4
        assert all(w.alive for w in workers)
    finally:
        for w in workers:
            w.stop()
        await app.broker.shutdown()
        await client.aclose()


async def test_bad_input_against_running_workers(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared: Any
) -> None:
    env = {"TASKIQ_FLOW_IT_REDIS_URL": redis_url, "TASKIQ_FLOW_IT_QUEUE": f"q-{tmp_path.name}"}
    workers = shared._workers(env, tmp_path)
    app = shared._producer_broker(env, monkeypatch)
    (mw,) = (m for m in app.broker.middlewares if isinstance(m, CacheMiddleware))
    client = aioredis.from_url(redis_url)
    runs = Runs(app, client)
    try:
        await app.broker.startup()
        await shared._up(app, client, workers)
        # An empty tag and 10,000 tags: the call runs, uncached (one warning per worker).
        many = ",".join(f"t{i}" for i in range(10_000))
        for tags in ("", "a,,b", many):
            before = await runs.quick(7, cache_tags=tags)
            assert await runs.quick(7, cache_tags=tags) == before + 1
        with pytest.raises(CacheValueError, match="must not be empty"):
            await mw.invalidate_tag("")
        # Keys with glob metacharacters: escaped patterns match them literally.
        await runs.quick(8, cache_key="a*b")
        await runs.quick(9, cache_key="a[x]b")
        code, out, _ = await cli(redis_url, "cache", "keys", f"{QUICK}:key:a\\*b")
        assert (code, out) == (0, f"{QUICK}:key:a*b\n")
        code, out, _ = await cli(redis_url, "cache", "invalidate", "--pattern", f"{QUICK}:key:a*b")
        assert (code, out) == (0, "removed 2 cached results\n")  # unescaped: both
        code, _, err = await cli(redis_url, "cache", "invalidate", "--tag", "")
        assert code == 2, err
        assert all(w.alive for w in workers)
    finally:
        for w in workers:
            w.stop()
        await app.broker.shutdown()
        await client.aclose()
    logs = "".join((tmp_path / f"worker{i}.log").read_text() for i in range(2))
    assert "cache_tags label is unusable" in logs


async def test_invalidation_while_redis_is_down() -> None:
    from taskiq_flow.cache import RedisCacheAdapter

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{sock.getsockname()[1]}/0"
    mw = CacheMiddleware(RedisCacheAdapter(dead, connect_timeout=0.5, retries=0), metrics=False)
    try:
        for attempt in (
            lambda: mw.invalidate_task("t"),
            lambda: mw.invalidate_tag("t"),
        ):
            with pytest.raises(CacheConnectionError):
                await attempt()
    finally:
        await mw.cache.close()
    for argv in (["keys"], ["invalidate", "--tag", "t"], ["invalidate", "--task", "t"]):
        code, _, err = await cli(dead, "cache", *argv)
        assert code == 3, err  # docs/cli.md: 3 = backend unreachable
        assert "CacheConnectionError" in err
