"""Zero-config from the environment, end to end: real `taskiq worker` processes whose only
setup is ``StorageAdapterFactory.create_default_middlewares()``; the TASKIQ_FLOW_*
variables decide where the cache and the records go, and the `taskiq-flow` CLI, given
the same variables, reads what the workers stored.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from taskiq_flow.config import TaskiqFlowConfig
from taskiq_flow_testing import WorkerProcess

pytestmark = pytest.mark.redis

APP = textwrap.dedent(
    '''
    """A worker app configured by nothing but TASKIQ_FLOW_* variables."""
    import asyncio
    import os

    import redis.asyncio as aioredis
    from taskiq_redis import RedisAsyncResultBackend

    from taskiq_flow.factory import StorageAdapterFactory
    from taskiq_flow_testing import list_queue_broker

    BROKER_URL = os.environ["IT_BROKER_URL"]
    broker = list_queue_broker(BROKER_URL, os.environ["IT_QUEUE"]).with_result_backend(
        RedisAsyncResultBackend(BROKER_URL, result_ex_time=600),
    )
    middlewares = StorageAdapterFactory.create_default_middlewares()
    broker.add_middlewares(middlewares["cache"], middlewares["storage"])
    _counter = aioredis.from_url(BROKER_URL)


    @broker.task(task_name="it.slow_square")
    async def slow_square(x: int) -> int:
        await _counter.incr(f"it:runs:{x}")
        await asyncio.sleep(0.3)
        return x * x
    '''
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for item in TaskiqFlowConfig.settings():
        monkeypatch.delenv(item["env_var"], raising=False)


def _app(tmp_path: Path) -> Path:
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "env_worker_app.py").write_text(APP)
    return app_dir


def _import_app(app_dir: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The test is the producer: it imports the same app, with the same environment."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.syspath_prepend(str(app_dir))
    monkeypatch.delitem(sys.modules, "env_worker_app", raising=False)
    import env_worker_app  # type: ignore[import-not-found]

    return env_worker_app


def _cli(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "taskiq-flow"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TASKIQ_FLOW_")}
    full_env.update(env)
    return subprocess.run(
        [str(script), *argv], env=full_env, capture_output=True, text=True, timeout=60, check=False
    )


async def _run(app: Any, values: list[int]) -> list[Any]:
    sent = await asyncio.gather(*(app.slow_square.kiq(v) for v in values))
    return list(await asyncio.gather(*(t.wait_result(timeout=60) for t in sent)))


async def test_redis_cache_and_shared_sqlite_file_from_env(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "records.sqlite3"
    env = {
        "IT_BROKER_URL": redis_url,
        "IT_QUEUE": f"q-{tmp_path.name}",
        "TASKIQ_FLOW_CACHE_REDIS_URL": redis_url,
        "TASKIQ_FLOW_STORAGE_SQLITE_PATH": str(db),
        "TASKIQ_FLOW_STORAGE_TTL_SECONDS": "3600",
    }
    app_dir = _app(tmp_path)
    workers = [
        WorkerProcess(
            "env_worker_app:broker", app_dir=app_dir, env=env, log_path=tmp_path / f"w{i}.log"
        ).start()
        for i in range(2)
    ]
    app = _import_app(app_dir, env, monkeypatch)
    client = aioredis.from_url(redis_url)
    try:
        await app.broker.startup()
        # 30 identical calls over two worker processes: the Redis cache runs it once.
        results = await _run(app, [6] * 30)
        assert {r.return_value for r in results} == {36}
        assert int(await client.get("it:runs:6")) == 1
        await _run(app, [1, 2, 3])
        assert all(w.alive for w in workers)
    finally:
        for worker in workers:
            worker.stop()
        await app.broker.shutdown()
        await client.aclose()
    # Both workers wrote to the one SQLite file; the CLI reads it with the same variables.
    listing = _cli(env, "storage", "keys", "task:*", "--json")
    assert listing.returncode == 0, listing.stderr
    keys = json.loads(listing.stdout)["keys"]
    assert len(keys) == 4  # one record per execution: 6, 1, 2, 3
    shown = _cli(env, "storage", "get", keys[0], "--json")
    assert shown.returncode == 0, shown.stderr
    entry = json.loads(shown.stdout)
    assert entry["value"]["task_name"] == "it.slow_square"
    assert 3500 < entry["remaining_ttl"] <= 3600  # TASKIQ_FLOW_STORAGE_TTL_SECONDS


async def test_redis_storage_and_disabled_cache_from_env(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {
        "IT_BROKER_URL": redis_url,
        "IT_QUEUE": f"q-{tmp_path.name}",
        "TASKIQ_FLOW_STORAGE_TYPE": "redis",
        "TASKIQ_FLOW_STORAGE_REDIS_URL": redis_url,
        "TASKIQ_FLOW_STORAGE_KEY_PREFIX": "myapp:",
        "TASKIQ_FLOW_CACHE_ENABLED": "false",
    }
    app_dir = _app(tmp_path)
    worker = WorkerProcess(
        "env_worker_app:broker", app_dir=app_dir, env=env, log_path=tmp_path / "w.log"
    ).start()
    app = _import_app(app_dir, env, monkeypatch)
    client = aioredis.from_url(redis_url)
    try:
        await app.broker.startup()
        for _ in range(3):
            await _run(app, [5])
        assert int(await client.get("it:runs:5")) == 3  # cache disabled: every call runs
        records = [k async for k in client.scan_iter("myapp:task:*")]
        assert len(records) == 3
        assert await client.pttl(records[0]) == -1  # no TTL configured: kept
    finally:
        worker.stop()
        await app.broker.shutdown()
        await client.aclose()
    counted = _cli(env, "storage", "count", "task:*")
    assert (counted.returncode, counted.stdout.strip()) == (0, "3")
