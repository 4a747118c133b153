"""A real `taskiq scheduler` process reading StorageScheduleSource over Redis, and a real
`taskiq worker` process executing what it sends (ListQueueBroker on the private Redis)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

import pytest
import redis.asyncio as aioredis

from taskiq_flow_testing import WorkerProcess

APP_DIR = Path(__file__).parent / "apps"

pytestmark = pytest.mark.redis


class SchedulerProcess(WorkerProcess):
    """One `taskiq scheduler MODULE:SCHEDULER` process group (stopped as a worker is)."""

    def start(self) -> SchedulerProcess:
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self._log = log
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "taskiq",
                "scheduler",
                self.target,
                "--log-level",
                "INFO",
                *self.extra_args,
            ],
            cwd=self.app_dir,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self


def _import_app(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The app in this process too: the test adds and deletes the schedules."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delitem(sys.modules, "schedule_app", raising=False)  # reads env at import
    monkeypatch.syspath_prepend(str(APP_DIR))
    import schedule_app

    return schedule_app


async def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_schedules_fire_through_real_scheduler_and_worker(
    redis_url, tmp_path, monkeypatch
) -> None:
    env = {"TASKIQ_FLOW_IT_REDIS_URL": redis_url, "TASKIQ_FLOW_IT_QUEUE": f"q-{tmp_path.name}"}
    app = _import_app(env, monkeypatch)
    client = aioredis.from_url(redis_url)

    async def fired(tag: str) -> int:
        return int(await client.llen(f"it:fired:{tag}"))

    # Present before the scheduler starts: one recurring schedule and one corrupt entry
    # that must not stop it.
    await (
        app.fire.kicker()
        .with_schedule_id("every-second")
        .schedule_by_interval(app.source, 1, "interval")
    )
    await app.storage.set("schedule:corrupt", {"not": "a schedule"})

    worker = WorkerProcess(
        "schedule_app:broker", app_dir=APP_DIR, env=env, log_path=tmp_path / "worker.log"
    ).start()
    scheduler = SchedulerProcess(
        "schedule_app:scheduler",
        app_dir=APP_DIR,
        env=env,
        log_path=tmp_path / "scheduler.log",
        extra_args=["--update-interval", "1"],
    ).start()
    try:
        await _wait_for(lambda: _positive(fired("interval")), 15, "the first interval firing")
        started = time.monotonic()

        # Added while the scheduler runs: picked up at its next update.
        at = datetime.now(UTC) + timedelta(seconds=1)
        once = await app.fire.kicker().schedule_by_time(app.source, at, "once")
        doomed = await app.fire.kicker().schedule_by_interval(app.source, 1, "doomed")

        await _wait_for(lambda: _positive(fired("doomed")), 10, "the doomed schedule to fire")
        await doomed.unschedule()
        await _wait_for(lambda: _positive(fired("once")), 10, "the one-off schedule to fire")
        await _wait_for(
            lambda: _negated(app.storage.exists(app.source.schedule_key(once.schedule_id))),
            5,
            "the one-off schedule's key to be removed",
        )

        # Grace for a message already queued when the schedule was deleted.
        await asyncio.sleep(1.5)
        after_delete = await fired("doomed")
        await asyncio.sleep(max(2.0, 5.5 - (time.monotonic() - started)))

        assert await fired("interval") >= 4  # the first firing plus >= 3 in ~5 s
        assert await fired("doomed") == after_delete
        assert await fired("once") == 1
        assert scheduler.alive
        assert worker.alive
        remaining = sorted(
            [k.decode() async for k in client.scan_iter(match="taskiq_flow:schedule:*")]
        )
        assert remaining == ["taskiq_flow:schedule:corrupt", "taskiq_flow:schedule:every-second"]
    finally:
        scheduler.stop()
        worker.stop()
        await app.storage.close()
        await client.aclose()
    log = (tmp_path / "scheduler.log").read_text()
    assert "skipping the invalid schedule at schedule:corrupt" in log


async def _positive(count) -> bool:
    return await count > 0


async def _negated(flag) -> bool:
    return not await flag
