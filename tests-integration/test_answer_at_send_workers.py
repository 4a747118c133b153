"""Answer at send (issue 13) with two real ``taskiq worker`` processes over taskiq-redis.

Messages reaching the broker are counted on the server: taskiq-redis's ListQueueBroker
sends each one with one LPUSH, and nothing else here uses LPUSH, so the difference of
``INFO commandstats`` ``cmdstat_lpush`` calls is the number of messages sent.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from taskiq_flow_testing import WorkerProcess

APP_DIR = Path(__file__).parent / "at_send_app"

pytestmark = pytest.mark.redis


def _env(url: str, queue: str, **extra: str) -> dict[str, str]:
    return {"ASA_REDIS_URL": url, "ASA_QUEUE": queue, **extra}


def _start_workers(env: dict[str, str], logs: Path, n: int = 2) -> list[WorkerProcess]:
    return [
        WorkerProcess(
            "at_send_app:broker", app_dir=APP_DIR, env=env, log_path=logs / f"worker{i}.log"
        ).start()
        for i in range(n)
    ]


def _stop(workers: list[WorkerProcess]) -> None:
    for worker in workers:
        worker.kill()  # idle list-queue workers ignore SIGTERM
    for worker in workers:
        worker.stop(grace=0)


def _import_app(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delitem(sys.modules, "at_send_app", raising=False)  # reads env at import
    monkeypatch.syspath_prepend(str(APP_DIR))
    import at_send_app

    return at_send_app


async def _lpushes(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_lpush", {}).get("calls", 0))


@pytest.fixture(scope="module")
def shared(_session_redis: str | None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Two workers for the module's non-fatal tests (the kill test starts its own)."""
    if _session_redis is None:
        pytest.skip("no Redis")
    env = _env(_session_redis, f"asa-{uuid.uuid4().hex[:6]}")
    workers = _start_workers(env, tmp_path_factory.mktemp("asa"))
    try:
        yield env, workers
    finally:
        _stop(workers)


@pytest.fixture
async def app(
    shared: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[ModuleType, aioredis.Redis]]:
    env, workers = shared
    module = _import_app(env, monkeypatch)
    client = aioredis.from_url(redis_url)
    await module.broker.startup()
    try:
        yield module, client
        assert all(w.alive for w in workers)
    finally:
        await module.broker.shutdown()
        await client.aclose()


async def _value(task: Any) -> Any:
    result = await task.wait_result(check_interval=0.02, timeout=30)
    assert not result.is_err, result.error
    return result.return_value


async def test_second_identical_kiq_sends_nothing(app: Any) -> None:
    module, client = app
    square = module.square
    await client.config_resetstat()
    assert await _value(await square.kiq(4)) == 16
    assert await _lpushes(client) == 1

    task = await square.kiq(4)
    assert await task.is_ready()
    result = await task.wait_result(timeout=5)
    assert result.return_value == 16
    assert result.labels["cache_hit"] == "true"
    assert await _lpushes(client) == 1  # nothing sent

    assert await _value(await square.kiq(5)) == 25  # different args
    assert await _value(await square.kicker().with_labels(cache="false").kiq(4)) == 16
    assert await _value(await square.kicker().with_labels(cache_at_send="false").kiq(4)) == 16
    assert await _lpushes(client) == 4
    ttl = square.kicker().with_labels(cache_ttl=1)
    assert await _value(await ttl.kiq(6)) == 36
    assert await _value(await ttl.kiq(6)) == 36
    assert await _lpushes(client) == 5
    await asyncio.sleep(1.1)
    assert await _value(await ttl.kiq(6)) == 36  # expired: sent again
    assert await _lpushes(client) == 6
    assert int(await client.get("asa:runs:square:4")) == 2  # once, and with cache="false"


def _producers(env: dict[str, str], task: str, arg: str, n: int, count: int) -> list[Any]:
    full = {**os.environ, **env, "PYTHONPATH": str(APP_DIR)}
    return [
        subprocess.Popen(
            [sys.executable, str(APP_DIR / "at_send_producer.py"), task, arg, str(n)],
            env=full,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(count)
    ]


def _outcomes(procs: list[Any]) -> list[dict[str, Any]]:
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()[-3000:]
        outs.append(json.loads(out.decode().strip().splitlines()[-1]))
    return outs


async def _go_when_ready(client: aioredis.Redis, count: int) -> None:
    async with asyncio.timeout(30):
        while int(await client.get("asa:producers:ready") or 0) < count:
            await asyncio.sleep(0.02)
    await client.set("asa:go", 1)


async def test_hundred_kiqs_from_four_producers_run_once(app: Any, shared: Any) -> None:
    _, client = app
    env, _ = shared
    await client.config_resetstat()
    procs = _producers(env, "asa.square", "11", 25, 4)
    await _go_when_ready(client, 4)
    outcomes = await asyncio.to_thread(_outcomes, procs)
    values = [v for o in outcomes for v in o["values"]]
    assert values == [121] * 100
    assert int(await client.get("asa:runs:square:11")) == 1
    sent = await _lpushes(client)
    # One producer claims the lease and sends; everyone else joins it at send.
    print(f"\n100 identical kiqs from 4 producers: {sent} message(s) reached the broker")
    assert sent == 1
    joined = sum(o["stats"]["joined_at_send"] for o in outcomes)
    claimed = sum(o["stats"]["claimed_at_send"] for o in outcomes)
    assert (claimed, joined) == (1, 99)


async def test_diamond_fully_cached_sends_no_step(app: Any) -> None:
    module, client = app
    cold = await module.diamond.kiq_dataflow(n=3, timeout=30)
    assert cold["merged"] == 4 + 6
    assert int(await client.get("asa:runs:diamond")) == 4
    await client.config_resetstat()
    run = await module.diamond.kiq(n=3, pipeline_id=f"warm-{uuid.uuid4().hex[:6]}")
    warm = await run.wait_result(timeout=30)
    assert warm.return_value == cold
    assert await _lpushes(client) == 0  # no step message
    assert int(await client.get("asa:runs:diamond")) == 4
    for node, task_id in run.task_ids.items():
        record = await module.storage.get(f"pipeline:{run.pipeline_id}:task:{task_id}")
        assert record is not None, node
        assert record["cached"] is True


async def test_cache_down_at_send_never_fails_kiq(app: Any, redis_url: str) -> None:
    from taskiq_flow.cache import RedisCacheAdapter

    module, client = app
    cache_mw = module.broker.middlewares[0]
    working = cache_mw.cache
    cache_mw.cache = RedisCacheAdapter("redis://127.0.0.1:1", connect_timeout=0.2, retries=0)
    try:
        await client.config_resetstat()
        assert await _value(await module.square.kiq(21)) == 441
        assert await _lpushes(client) == 1
    finally:
        await cache_mw.cache.close()
        cache_mw.cache = working


LEASE = 2.0
HOLD = 1.5  # the run after the kill; the killed one takes 5x as long


async def test_holder_killed_every_attached_producer_gets_a_value(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _env(redis_url, f"kill-{uuid.uuid4().hex[:6]}", ASA_LEASE=str(LEASE),
               ASA_HOLD_SECONDS=str(HOLD))  # fmt: skip
    workers = _start_workers(env, tmp_path)
    module = _import_app(env, monkeypatch)
    client = aioredis.from_url(redis_url)
    await module.broker.startup()
    try:
        # The holder: sent past the gate, so a worker takes the lease itself.
        await module.hold.kicker().with_labels(cache_at_send="false").kiq("t")
        async with asyncio.timeout(30):
            while (pid := await client.get("asa:holder:t")) is None:
                await asyncio.sleep(0.02)
        # taskiq's worker processes are children of the one started: find its group.
        group = os.getpgid(int(pid))
        victim = next(w for w in workers if w.proc is not None and w.proc.pid == group)
        await client.config_resetstat()
        procs = _producers(env, "asa.hold", "t", 5, 4)
        await _go_when_ready(client, 4)
        async with asyncio.timeout(20):
            while int(await client.get("asa:producers:sent") or 0) < 4:
                await asyncio.sleep(0.02)
        victim.kill()
        await client.set("asa:killed", time.time())
        outcomes = await asyncio.to_thread(_outcomes, procs)
        assert [v for o in outcomes for v in o["values"]] == ["held:t"] * 20
        slowest = max(o["since_kill"] for o in outcomes)
        runs = int(await client.get("asa:runs:hold:t"))
        sent = await _lpushes(client)
        print(f"\nholder killed: slowest producer {slowest:.2f}s after the kill "
              f"(lease {LEASE}s, function {HOLD}s); runs {runs}; messages sent {sent}")  # fmt: skip
        assert slowest < LEASE + HOLD + 3.0
        assert runs <= 2
        assert sent == 1  # one re-send per lapse, across the four producers
    finally:
        await module.broker.shutdown()
        await client.aclose()
        _stop(workers)
        with redis.Redis.from_url(redis_url) as sync_client:
            sync_client.flushdb()
