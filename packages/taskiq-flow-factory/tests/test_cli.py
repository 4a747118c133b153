"""The taskiq-flow CLI against real SQLite files and a real Redis: output, --json, exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from taskiq_flow.config import TaskiqFlowConfig
from taskiq_flow.factory.cli import (
    DEFAULT_SQLITE_PATH,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    main,
)
from taskiq_flow.factory.demo import DEMO_TASK_NAME
from taskiq_flow.storage import SQLiteStorageAdapter
from taskiq_flow_testing import RedisServer

SMALL_DEMO = ["demo", "--tasks", "40", "--distinct", "8", "--work-ms", "5"]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for item in TaskiqFlowConfig.settings():
        monkeypatch.delenv(item["env_var"], raising=False)
    monkeypatch.chdir(tmp_path)


def run(capsys: pytest.CaptureFixture[str], *argv: str, env: dict[str, str] | None = None):
    code = main(list(argv), environ=env or {})
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str, env: dict[str, str] | None = None):
    code, out, err = run(capsys, *argv, "--json", env=env)
    return code, json.loads(out) if out.strip() else None, err


def test_demo_then_inspect_the_default_sqlite_store(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, report, _ = run_json(capsys, *SMALL_DEMO)
    assert code == EXIT_OK
    assert report["executions"] == 8
    assert report["saved_by_cache"] == 32
    assert report["results_correct"] == 40
    assert report["records_written"] == 8
    assert report["records_in_store"] == 8
    assert report["hit_rate"] == pytest.approx(32 / 40)
    assert report["storage_backend"] == "sqlite"
    assert report["cache_backend"] == "inmemory"
    assert (tmp_path / DEFAULT_SQLITE_PATH).is_file()

    code, listing, _ = run_json(capsys, "storage", "keys", "task:*")
    assert code == EXIT_OK
    assert listing["count"] == 8
    assert all(key.startswith("task:") for key in listing["keys"])
    assert listing["keys"] == sorted(listing["keys"])

    code, out, _ = run(capsys, "storage", "keys", "task:*")
    assert out.split() == listing["keys"]

    code, entry, _ = run_json(capsys, "storage", "get", listing["keys"][0])
    assert code == EXIT_OK
    record = entry["value"]
    assert record["task_id"] == listing["keys"][0].removeprefix("task:")
    assert record["task_name"] == DEMO_TASK_NAME
    assert record["is_err"] is False
    assert record["error"] is None
    assert json.loads(record["return_value"])["sha256"]
    assert entry["expires_at"] is None

    code, out, _ = run(capsys, "storage", "get", listing["keys"][0])
    assert code == EXIT_OK
    assert "expires     never" in out
    assert DEMO_TASK_NAME in out

    code, counted, _ = run_json(capsys, "storage", "count", "task:*")
    assert (code, counted["count"]) == (EXIT_OK, 8)
    code, out, _ = run(capsys, "storage", "count", "task:*")
    assert (code, out.strip()) == (EXIT_OK, "8")

    # The demo's pipeline run: one record per step under its pipeline_id, plus run state.
    pipeline_id = report["pipeline_id"]
    assert report["pipeline_outputs"]["summary"] == "10 words, 53 letters"
    code, listing, _ = run_json(capsys, "storage", "keys", f"pipeline:{pipeline_id}:task:*")
    assert (code, listing["count"], report["pipeline_steps_stored"]) == (EXIT_OK, 4, 4)
    code, out, _ = run(capsys, "storage", "count")
    assert code == EXIT_OK
    assert int(out) > 8 + 4  # task records, step records and the pipeline's state keys

    # A second run: a fresh in-memory cache executes again, the store accumulates.
    code, report, _ = run_json(capsys, *SMALL_DEMO)
    assert (code, report["records_written"], report["records_in_store"]) == (EXIT_OK, 8, 16)


def test_demo_human_output(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, *SMALL_DEMO)
    assert code == EXIT_OK
    for label in (
        "executions run      8 of 40 tasks",
        "saved by the cache  32 executions (80.0%)",
        "cache hit rate      80.0%",
        "records stored      8 this run",
        "results correct     40 of 40",
        "time taken",
        "taskiq-flow storage keys 'task:*'",
    ):
        assert label in out
    assert err == ""  # no progress bar when stderr is not a terminal


def test_demo_honours_sqlite_flag_and_env(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    flag_db = tmp_path / "flag" / "x.db"
    code, report, _ = run_json(capsys, *SMALL_DEMO, "--sqlite-path", str(flag_db))
    assert (code, report["records_in_store"]) == (EXIT_OK, 8)
    assert flag_db.is_file()
    env_db = tmp_path / "env.db"
    env = {"TASKIQ_FLOW_STORAGE_SQLITE_PATH": str(env_db)}
    code, report, _ = run_json(capsys, *SMALL_DEMO, env=env)
    assert code == EXIT_OK
    assert env_db.is_file()
    code, counted, _ = run_json(capsys, "storage", "count", "task:*", env=env)
    assert counted["count"] == 8
    assert not (tmp_path / DEFAULT_SQLITE_PATH).exists()


def test_demo_on_redis_from_the_environment(
    capsys: pytest.CaptureFixture[str], redis_url: str, tmp_path: Path
) -> None:
    env = {"TASKIQ_FLOW_STORAGE_REDIS_URL": redis_url, "TASKIQ_FLOW_CACHE_REDIS_URL": redis_url}
    code, report, _ = run_json(capsys, *SMALL_DEMO, env=env)
    assert code == EXIT_OK
    assert (report["storage_backend"], report["cache_backend"]) == ("redis", "redis")
    assert report["executions"] == 8
    assert report["records_in_store"] == 8
    code, listing, _ = run_json(capsys, "storage", "keys", "task:*", env=env)
    assert (code, listing["count"]) == (EXIT_OK, 8)
    assert not (tmp_path / DEFAULT_SQLITE_PATH).exists()
    # The Redis cache outlives the process: a second demo is answered from it entirely.
    code, report, _ = run_json(capsys, *SMALL_DEMO, env=env)
    assert (code, report["executions"], report["records_written"]) == (EXIT_OK, 0, 0)


def test_missing_things_exit_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "storage", "keys")
    assert code == EXIT_NOT_FOUND
    assert "taskiq-flow demo" in err
    assert not (tmp_path / DEFAULT_SQLITE_PATH).exists(), "inspecting must not create a store"
    run(capsys, *SMALL_DEMO)
    code, _, err = run(capsys, "storage", "get", "task:nope")
    assert code == EXIT_NOT_FOUND
    assert "task:nope" in err
    code, out, _ = run(capsys, "storage", "keys", "nothing:*")
    assert (code, out) == (EXIT_NOT_FOUND, "")
    code, counted, _ = run_json(capsys, "storage", "count", "nothing:*")
    assert (code, counted["count"]) == (EXIT_OK, 0)


def test_keys_limit(capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, *SMALL_DEMO)
    code, listing, _ = run_json(capsys, "storage", "keys", "task:*", "--limit", "3")
    assert (code, len(listing["keys"]), listing["count"], listing["truncated"]) == (
        EXIT_OK,
        3,
        8,
        True,
    )


def test_cleanup_removes_expired_and_old_entries(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    db = tmp_path / "c.db"

    async def fill() -> None:
        storage = SQLiteStorageAdapter(str(db))
        try:
            for i in range(5):
                await storage.set(f"short:{i}", i, ttl_seconds=1)
            for i in range(3):
                await storage.set(f"keep:{i}", i)
        finally:
            await storage.close()

    asyncio.run(fill())
    time.sleep(1.1)
    code, result, _ = run_json(capsys, "storage", "cleanup", "--sqlite-path", str(db))
    assert code == EXIT_OK
    assert (result["removed"], result["remaining"]) == (5, 3)
    code, out, _ = run(capsys, "storage", "cleanup", "--sqlite-path", str(db))
    assert code == EXIT_OK
    assert "removed 0 (expired entries); 3 remain" in out
    time.sleep(1.1)
    code, result, _ = run_json(
        capsys, "storage", "cleanup", "--older-than", "1", "--sqlite-path", str(db)
    )
    assert (code, result["removed"], result["remaining"]) == (EXIT_OK, 3, 0)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"TASKIQ_FLOW_STORAGE_TYPE": "reddis"}, "TASKIQ_FLOW_STORAGE_TYPE"),
        ({"TASKIQ_FLOW_STORAGE_TTL_SECONDS": "1.5"}, "TASKIQ_FLOW_STORAGE_TTL_SECONDS"),
        (
            {"TASKIQ_FLOW_CACHE_REDIS_URL": "redis://:hunter2@host:xx"},
            "TASKIQ_FLOW_CACHE_REDIS_URL",
        ),
        ({"TASKIQ_FLOW_CACHE_TYPE": "redis"}, "TASKIQ_FLOW_CACHE_REDIS_URL"),
    ],
)
def test_bad_configuration_exits_2_naming_the_variable(
    capsys: pytest.CaptureFixture[str], env: dict[str, str], named: str
) -> None:
    for argv in (["demo"], ["storage", "count"], ["cache", "stats"], ["config"]):
        code, out, err = run(capsys, *argv, env=env)
        assert code == EXIT_USAGE
        assert named in err
        assert "configuration error" in err
        assert "hunter2" not in err + out


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys)[0] == EXIT_USAGE
    assert run(capsys, "storage")[0] == EXIT_USAGE
    assert run(capsys, "storage", "get")[0] == EXIT_USAGE
    assert run(capsys, "demo", "--tasks", "zero")[0] == EXIT_USAGE
    assert run(capsys, "demo", "--storage-type", "reddis")[0] == EXIT_USAGE
    code, _, err = run(capsys, "demo", "--tasks", "5", "--distinct", "9")
    assert code == EXIT_USAGE
    assert "--distinct" in err


def test_in_memory_storage_cannot_be_inspected(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "storage", "count", env={"TASKIQ_FLOW_STORAGE_TYPE": "inmemory"})
    assert code == EXIT_USAGE
    assert "TASKIQ_FLOW_STORAGE_SQLITE_PATH" in err


def test_unreachable_redis_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    server = RedisServer().start()
    url = server.url
    server.stop()  # a port nobody listens on any more
    for argv in (["storage", "count"], ["storage", "keys"], ["storage", "get", "k"]):
        code, _, err = run(capsys, *argv, "--storage-redis-url", url)
        assert code == EXIT_UNREACHABLE, err
        assert "Connection" in err or "connect" in err
    code, _, err = run(capsys, "cache", "stats", "--cache-redis-url", url)
    assert code == EXIT_UNREACHABLE, err
    assert "CacheConnectionError" in err


def test_cache_stats(capsys: pytest.CaptureFixture[str], redis_url: str) -> None:
    code, data, err = run_json(capsys, "cache", "stats")
    assert code == EXIT_OK
    assert {"hits", "misses", "hit_rate"} <= set(data["stats"])
    assert "in-memory" in data["note"]
    code, data, _ = run_json(capsys, "cache", "stats", "--cache-redis-url", redis_url)
    assert code == EXIT_OK
    assert data["backend"].startswith("redis")
    assert data["reachable"] is True
    assert data["stats"]["scope"] == "cluster"  # every worker's counts, none yet
    assert (data["stats"]["hits"], data["stats"]["by_task"]) == (0, {})
    assert (data["stats"]["entries"], data["stats"]["leases"]) == (0, 0)
    assert "counted on the server" in data["note"]

    async def fill() -> None:
        from taskiq_flow.cache import RedisCacheAdapter

        cache = RedisCacheAdapter(redis_url)
        try:
            for i in range(3):
                await cache.set(f"k{i}", i)
        finally:
            await cache.close()

    asyncio.run(fill())
    code, data, _ = run_json(capsys, "cache", "stats", "--cache-redis-url", redis_url)
    assert (code, data["stats"]["entries"]) == (EXIT_OK, 3)
    code, out, err = run(capsys, "cache", "stats")
    assert code == EXIT_OK
    assert "hit_rate" in out
    assert "in-memory cache" in err


def test_config_shows_values_sources_and_masks_passwords(
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = {
        "TASKIQ_FLOW_STORAGE_REDIS_URL": "redis://app:hunter2@db:6379/0",
        "TASKIQ_FLOW_CACHE_DEFAULT_TTL": "60",
    }
    code, data, _ = run_json(capsys, "config", "--cache-type", "inmemory", env=env)
    assert code == EXIT_OK
    rows = {row["name"]: row for row in data["settings"]}
    assert rows["storage_redis_url"]["value"] == "redis://app:***@db:6379/0"
    assert rows["storage_redis_url"]["source"] == "environment"
    assert rows["cache_default_ttl"]["value"] == 60
    assert rows["cache_type"]["source"] == "argument"
    assert rows["storage_type"]["source"] == "default"
    assert data["resolved"] == {"storage": "redis", "cache": "inmemory"}
    code, out, _ = run(capsys, "config", env=env)
    assert "hunter2" not in out
    assert "TASKIQ_FLOW_CACHE_DEFAULT_TTL" in out


def test_help_is_for_newcomers(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == EXIT_OK
    for text in ("taskiq-flow demo", "storage keys 'task:*'", "exit codes:", "TASKIQ_FLOW_"):
        assert text in out
    for argv in (["demo", "-h"], ["storage", "-h"], ["storage", "cleanup", "-h"], ["cache", "-h"]):
        assert run(capsys, *argv)[0] == EXIT_OK


def test_console_script_from_a_fresh_directory(tmp_path: Path) -> None:
    """What a newcomer types: the installed `taskiq-flow` script, no server, no settings."""
    script = Path(sys.executable).parent / "taskiq-flow"
    assert script.exists(), "the taskiq-flow console script is not installed"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKIQ_FLOW_")}
    started = time.perf_counter()
    demo = subprocess.run(
        [str(script), "demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    elapsed = time.perf_counter() - started
    assert demo.returncode == 0, demo.stderr
    assert "executions run      20 of 200 tasks" in demo.stdout
    assert "saved by the cache  180 executions (90.0%)" in demo.stdout
    assert elapsed < 15, f"demo took {elapsed:.1f} s"
    keys = subprocess.run(
        [str(script), "storage", "keys", "task:*"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert keys.returncode == 0, keys.stderr
    assert len(keys.stdout.split()) == 20
    assert all(line.startswith("task:") for line in keys.stdout.split())
