"""Two real `taskiq worker` processes over a Redis broker, with both middlewares on Redis."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from taskiq_flow_testing import RedisServer, WorkerProcess, wait_workers_up

APP_DIR = Path(__file__).parent / "apps"

pytestmark = pytest.mark.redis


def _workers(env: dict[str, str], tmp_path: Path, n: int = 2) -> list[WorkerProcess]:
    return [
        WorkerProcess(
            "cache_worker_app:broker",
            app_dir=APP_DIR,
            env=env,
            log_path=tmp_path / f"worker{i}.log",
        ).start()
        for i in range(n)
    ]


async def _up(app, client: aioredis.Redis, workers: list[WorkerProcess]) -> None:
    """Wait for every worker's startup signal (a slow start is not a lost task)."""

    async def count() -> int:
        return int(await client.get(app.WORKERS_UP) or 0)

    await wait_workers_up(count, workers)


def _producer_broker(env: dict[str, str], monkeypatch: pytest.MonkeyPatch):
    """Import the worker app in this process too: the test is the producer."""
    import sys

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delitem(sys.modules, "cache_worker_app", raising=False)  # reads env at import
    monkeypatch.syspath_prepend(str(APP_DIR))
    import cache_worker_app

    return cache_worker_app


async def test_hundred_identical_tasks_two_workers_run_once(
    redis_url, tmp_path, monkeypatch
) -> None:
    env = {"TASKIQ_FLOW_IT_REDIS_URL": redis_url, "TASKIQ_FLOW_IT_QUEUE": f"q-{tmp_path.name}"}
    workers = _workers(env, tmp_path)
    app = _producer_broker(env, monkeypatch)
    client = aioredis.from_url(redis_url)
    try:
        await app.broker.startup()
        await _up(app, client, workers)
        sent = await asyncio.gather(*(app.slow_square.kiq(12) for _ in range(100)))
        results = await asyncio.gather(*(t.wait_result(timeout=60) for t in sent))
        assert all(not r.is_err for r in results), [r.error for r in results if r.is_err][:3]
        assert {r.return_value for r in results} == {144}
        assert int(await client.get("it:runs:slow_square:12")) == 1
        # one storage record per execution (hits are not stored again)
        keys = [k async for k in client.scan_iter(match="taskiq_flow:task:*")]
        assert len(keys) == 1
        assert all(w.alive for w in workers)
    finally:
        for w in workers:
            w.stop()
        await app.broker.shutdown()
        await client.aclose()


async def test_storage_server_killed_mid_run(redis_url, tmp_path, monkeypatch) -> None:
    with RedisServer() as storage_server:
        env = {
            "TASKIQ_FLOW_IT_REDIS_URL": redis_url,
            "TASKIQ_FLOW_IT_STORAGE_URL": storage_server.url,
            "TASKIQ_FLOW_IT_QUEUE": f"q-{tmp_path.name}",
        }
        workers = _workers(env, tmp_path)
        app = _producer_broker(env, monkeypatch)
        storage_client = aioredis.from_url(storage_server.url)
        client = aioredis.from_url(redis_url)
        try:
            await app.broker.startup()
            await _up(app, client, workers)
            first = [await app.quick.kiq(i) for i in range(20)]
            for t in first:
                assert not (await t.wait_result(timeout=30)).is_err
            storage_server.kill()
            during = [await app.quick.kiq(i) for i in range(100, 140)]
            for i, t in enumerate(during, start=100):
                res = await t.wait_result(timeout=30)
                assert not res.is_err
                assert res.return_value == i + 1
            assert all(w.alive for w in workers)
            storage_server.start()
            after = [await app.quick.kiq(i) for i in range(200, 210)]
            for t in after:
                assert not (await t.wait_result(timeout=30)).is_err
            expected = {f"taskiq_flow:task:{t.task_id}" for t in [*during, *after]}
            deadline = asyncio.get_running_loop().time() + 15
            while True:
                keys = {
                    k.decode() async for k in storage_client.scan_iter(match="taskiq_flow:task:*")
                }
                if expected <= keys or asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.1)
            missing = expected - keys
            assert not missing, f"{len(missing)} records lost"
            record = await storage_client.get(next(iter(expected)))
            assert record is not None
        finally:
            for w in workers:
                w.stop()
            await app.broker.shutdown()
            await storage_client.aclose()
            await client.aclose()
        logs = "".join((tmp_path / f"worker{i}.log").read_text() for i in range(2))
        assert "storage write failed" in logs
