"""What a new user trips over: typo'd variables, the guide's defaults, the CLI's small edges."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from taskiq_flow.config import ConfigError, TaskiqFlowConfig
from taskiq_flow.factory import StorageAdapterFactory
from taskiq_flow.factory.cli import EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE, main
from taskiq_flow.storage import InMemoryStorageAdapter, SQLiteStorageAdapter


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "taskiq_flow.config"]


def test_a_mistyped_variable_is_named_with_the_closest_one_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = {"TASKIQ_FLOW_STORAGE_URL": "redis://127.0.0.1:6379/0"}
    with caplog.at_level(logging.WARNING, logger="taskiq_flow.config"):
        config = TaskiqFlowConfig(environ=env)
        TaskiqFlowConfig(environ=env)  # a second load: no second line
    assert _warnings(caplog) == [
        "taskiq-flow: TASKIQ_FLOW_STORAGE_URL is not a taskiq-flow setting and is ignored "
        "(did you mean TASKIQ_FLOW_STORAGE_REDIS_URL?)"
    ]
    assert config.unknown_variables == (
        ("TASKIQ_FLOW_STORAGE_URL", "TASKIQ_FLOW_STORAGE_REDIS_URL"),
    )
    assert config.resolved_storage_type == "inmemory"  # what the typo silently meant


def test_strict_config_refuses_unknown_variables() -> None:
    env = {"TASKIQ_FLOW_CACHE_URL": "redis://h", "TASKIQ_FLOW_STRICT_CONFIG": "true"}
    with pytest.raises(ConfigError) as caught:
        TaskiqFlowConfig(environ=env)
    assert "TASKIQ_FLOW_CACHE_URL" in str(caught.value)
    assert "did you mean TASKIQ_FLOW_CACHE_REDIS_URL?" in str(caught.value)
    assert caught.value.source == "TASKIQ_FLOW_CACHE_URL"
    # Known variables, and the test suite's own, are never "unknown".
    quiet = {"TASKIQ_FLOW_STRICT_CONFIG": "1", "TASKIQ_FLOW_REQUIRE_REDIS": "1"}
    assert TaskiqFlowConfig(environ=quiet).unknown_variables == ()


def test_config_command_lists_unknown_variables(capsys: pytest.CaptureFixture[str]) -> None:
    env = {"TASKIQ_FLOW_CACHE_TTL": "60", "TASKIQ_FLOW_NOTHING_LIKE_IT": "x"}
    assert main(["config"], environ=env) == EXIT_OK
    out = capsys.readouterr().out
    assert "unknown variables" in out
    assert "TASKIQ_FLOW_CACHE_TTL" in out
    assert "did you mean TASKIQ_FLOW_CACHE_DEFAULT_TTL?" in out
    assert main(["config", "--json"], environ=env) == EXIT_OK
    data = json.loads(capsys.readouterr().out)
    assert {"name": "TASKIQ_FLOW_NOTHING_LIKE_IT", "did_you_mean": None} in data[
        "unknown_variables"
    ]
    strict = {**env, "TASKIQ_FLOW_STRICT_CONFIG": "yes"}
    assert main(["config"], environ=strict) == EXIT_USAGE
    assert "TASKIQ_FLOW_CACHE_TTL" in capsys.readouterr().err


async def test_sqlite_without_a_path_is_the_demo_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    config = TaskiqFlowConfig(storage_type="sqlite", environ={})
    assert config.storage_sqlite_path is None
    with caplog.at_level(logging.INFO, logger="taskiq_flow.factory"):
        adapter = StorageAdapterFactory.create_storage_adapter(config)
        other = StorageAdapterFactory.create_storage_adapter(config)
    assert isinstance(adapter, SQLiteStorageAdapter)
    assert Path(adapter.path) == Path(".taskiq-flow/store.sqlite3")
    said = [r.getMessage() for r in caplog.records if r.name == "taskiq_flow.factory"]
    assert len(said) == 1  # logged once
    assert str(tmp_path / ".taskiq-flow" / "store.sqlite3") in said[0]
    await adapter.set("k", 1)
    assert await other.get("k") == 1
    await adapter.close()
    await other.close()
    assert (tmp_path / ".taskiq-flow" / "store.sqlite3").exists()


@pytest.mark.parametrize("spelling", ["memory", "Memory", " MEMORY "])
def test_memory_is_inmemory(spelling: str) -> None:
    config = TaskiqFlowConfig(storage_type=spelling, cache_type=spelling, environ={})
    assert config.storage_type == "inmemory"
    assert config.cache_type == "inmemory"
    env = TaskiqFlowConfig(environ={"TASKIQ_FLOW_STORAGE_TYPE": spelling})
    assert isinstance(StorageAdapterFactory.create_storage_adapter(env), InMemoryStorageAdapter)


def test_spool_dir_reaches_both_writers(tmp_path: Path) -> None:
    config = TaskiqFlowConfig(
        storage_sqlite_path=str(tmp_path / "s.db"),
        storage_spool_dir=tmp_path / "spool",
        result_backend=True,
        environ={},
    )
    built = StorageAdapterFactory.create_default_middlewares(config)
    assert built["storage"].writer.spool_dir == tmp_path / "spool"
    assert built["result_backend"].writer.spool_dir == tmp_path / "spool"


def test_storage_keys_without_a_match_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = str(tmp_path / "s.db")
    assert (
        main(
            ["demo", "--tasks", "4", "--distinct", "2", "--work-ms", "0", "--sqlite-path", store],
            environ={},
        )
        == EXIT_OK
    )
    capsys.readouterr()
    assert (
        main(["storage", "keys", "nothing:*", "--sqlite-path", store], environ={}) == EXIT_NOT_FOUND
    )
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "taskiq-flow: no key matches 'nothing:*'\n"


def test_work_ms_error_says_milliseconds(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--work-ms", "-5"], environ={}) == EXIT_USAGE
    assert "expected a number of milliseconds >= 0, got '-5'" in capsys.readouterr().err


def test_demo_with_a_wrong_storage_url_fails_fast(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from taskiq_flow_testing import free_port

    monkeypatch.chdir(tmp_path)
    url = f"redis://127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    assert main(["demo", "--storage-redis-url", url], environ={}) == 3
    assert time.monotonic() - started < 5
    err = capsys.readouterr().err
    assert f"storage redis {url} is unreachable" in err
    assert "TASKIQ_FLOW_STORAGE_REDIS_URL" in err
    assert not (tmp_path / ".taskiq-flow" / "spool").exists()  # nothing ran, nothing kept


def test_cache_stats_columns_never_touch(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cache", "stats"], environ={}) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()[1:]
    assert lines
    for line in lines:
        name, _, value = line.partition("  ")
        assert name, line
        assert value.strip(), line  # two blanks at least after every name
