"""`result_backend`: the setting, and the StorageResultBackend the factory builds from it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from taskiq import InMemoryBroker

from taskiq_flow.config import ConfigError, TaskiqFlowConfig
from taskiq_flow.factory import StorageAdapterFactory
from taskiq_flow.factory.cli import EXIT_OK, EXIT_USAGE, main
from taskiq_flow.middlewares import StorageResultBackend
from taskiq_flow.storage import SQLiteStorageAdapter

VAR = "TASKIQ_FLOW_RESULT_BACKEND"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for item in TaskiqFlowConfig.settings():
        monkeypatch.delenv(item["env_var"], raising=False)
    monkeypatch.chdir(tmp_path)


def test_off_by_default() -> None:
    config = TaskiqFlowConfig()
    assert config.result_backend is False
    assert config.source_of("result_backend") == "default"
    assert config.to_dict()["result_backend"] is False
    setting = next(s for s in TaskiqFlowConfig.settings() if s["name"] == "result_backend")
    assert (setting["env_var"], setting["default"]) == (VAR, False)
    assert "StorageResultBackend" in setting["description"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("true", True), ("1", True), (" YES ", True), ("on", True), ("false", False), ("0", False)],
)
def test_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: bool
) -> None:
    monkeypatch.setenv(VAR, raw)
    config = TaskiqFlowConfig()
    assert config.result_backend is expected
    assert config.source_of("result_backend") == "environment"
    # An explicit argument wins over the variable.
    assert TaskiqFlowConfig(result_backend=not expected).result_backend is (not expected)


@pytest.mark.parametrize("raw", ["maybe", "2", "ture"])
def test_a_bad_value_names_the_variable_and_the_allowed_values(raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        TaskiqFlowConfig(environ={VAR: raw})
    assert str(info.value).startswith(f"{VAR}={raw!r} is not a boolean")
    assert "true/false, 1/0, yes/no, on/off" in str(info.value)
    assert info.value.source == VAR
    with pytest.raises(ConfigError, match="result_backend='maybe'"):
        TaskiqFlowConfig(result_backend="maybe", environ={})  # type: ignore[arg-type]


def test_with_changes_and_equality() -> None:
    config = TaskiqFlowConfig(environ={})
    on = config.with_changes(result_backend=True)
    assert on.result_backend is True
    assert on != config
    assert on == TaskiqFlowConfig(result_backend=True, environ={})


def test_factory_adds_a_result_backend_over_the_same_adapter(tmp_path: Path) -> None:
    config = TaskiqFlowConfig(
        storage_sqlite_path=str(tmp_path / "s.db"),
        storage_ttl_seconds=600,
        result_backend=True,
        environ={},
    )
    middlewares = StorageAdapterFactory.create_default_middlewares(config)
    backend = middlewares["result_backend"]
    assert isinstance(backend, StorageResultBackend)
    assert backend.storage is middlewares["storage"].storage
    assert isinstance(backend.storage, SQLiteStorageAdapter)
    assert backend.ttl_seconds == middlewares["storage"].ttl_seconds == 600
    off = StorageAdapterFactory.create_default_middlewares(
        config.with_changes(result_backend=False)
    )
    assert set(off) == {"cache", "storage"}


def test_factory_reads_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(VAR, "true")
    assert "result_backend" in StorageAdapterFactory.create_default_middlewares()
    monkeypatch.setenv(VAR, "nope")
    with pytest.raises(ConfigError, match=VAR):
        StorageAdapterFactory.create_default_middlewares()


def test_each_task_is_one_key_record_and_result(tmp_path: Path) -> None:
    """The guide's setup plus `with_result_backend`: one key per task, read back by taskiq."""
    db = tmp_path / "s.db"
    config = TaskiqFlowConfig(storage_sqlite_path=str(db), result_backend=True, environ={})

    async def scenario() -> None:
        middlewares = StorageAdapterFactory.create_default_middlewares(config)
        broker = InMemoryBroker(await_inplace=True).with_result_backend(
            middlewares["result_backend"]
        )
        broker.add_middlewares(middlewares["cache"], middlewares["storage"])

        @broker.task(task_name="app.double")
        async def double(x: int) -> dict[str, int]:
            return {"x": x, "double": 2 * x}

        await broker.startup()
        try:
            task = await double.kiq(21)
            result = await task.wait_result(timeout=5)
            assert result.return_value == {"x": 21, "double": 42}
            storage = middlewares["storage"].storage
            assert await storage.keys() == [f"task:{task.task_id}"]
            record = await storage.get(f"task:{task.task_id}")
            assert record["task_name"] == "app.double"
            assert json.loads(record["return_value"]) == {"x": 21, "double": 42}
            assert isinstance(record["result"], bytes)
        finally:
            await broker.shutdown()

    asyncio.run(scenario())


def test_config_command_shows_the_setting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--json"], environ={VAR: "yes"}) == EXIT_OK
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)["settings"]}
    assert rows["result_backend"] == {
        "name": "result_backend",
        "env_var": VAR,
        "value": True,
        "source": "environment",
    }
    assert main(["config"], environ={}) == EXIT_OK
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(VAR))
    assert line.split() == [VAR, "False", "default"]
    assert main(["config"], environ={VAR: "maybe"}) == EXIT_USAGE
    assert VAR in capsys.readouterr().err
