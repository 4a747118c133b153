"""`taskiq-flow pipeline list|show|cancel|resume` over a SQLite store real runs wrote.

The runs go through a real InMemoryBroker with StorageMiddleware and PipelineMiddleware
on one SQLite file (the app module below, written to a temporary directory); the CLI
then reads that file, and `resume` imports the same app with `--broker`.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from taskiq_flow.config import TaskiqFlowConfig
from taskiq_flow.factory.cli import EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE, main

APP = '''
import asyncio
import os
from pathlib import Path

from taskiq import InMemoryBroker

from taskiq_flow.middlewares import (
    DataflowPipeline, PipelineMiddleware, StorageMiddleware, pipeline_task,
)
from taskiq_flow.storage import SQLiteStorageAdapter

HERE = Path(os.environ["FLOWAPP_DIR"])
GATE = asyncio.Event()


def count(name):
    with open(HERE / "calls.txt", "a") as calls:
        calls.write(name + "\\n")


class StallingPipeline(PipelineMiddleware):
    """With the file "slow", the process "dies" between claiming parse and sending it."""

    async def before_send(self, pipeline_id, node, attempt):
        if node == "parse" and (HERE / "slow").exists():
            count("parse-claimed")
            await GATE.wait()


def create_broker():
    broker = InMemoryBroker(await_inplace=False)
    storage = SQLiteStorageAdapter(HERE / "store.sqlite3")
    broker.add_middlewares(StorageMiddleware(storage=storage), StallingPipeline())

    @broker.task(task_name="flowapp.load")
    @pipeline_task(output="loaded")
    async def load(path: str) -> int:
        count("load")
        return 3

    @broker.task(task_name="flowapp.parse")
    @pipeline_task(output="parsed")
    async def parse(loaded: int) -> int:
        count("parse")
        if (HERE / "broken").exists():
            raise KeyError("column x is missing")
        return loaded * 10

    @broker.task(task_name="flowapp.report")
    @pipeline_task(output="report")
    async def report(parsed: int) -> str:
        count("report")
        return f"total={parsed}"

    broker.pipeline = DataflowPipeline.from_tasks(broker, [load, parse, report])
    return broker
'''


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for item in TaskiqFlowConfig.settings():
        monkeypatch.delenv(item["env_var"], raising=False)
    (tmp_path / "flowapp.py").write_text(textwrap.dedent(APP))
    monkeypatch.setenv("FLOWAPP_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "flowapp", raising=False)
    return tmp_path


async def _start(app: Path, pipeline_id: str, *, until: str) -> None:
    """Start a run; ``until="done"`` waits for its end, ``"parse"`` until parse is claimed."""
    flowapp = importlib.import_module("flowapp")
    broker = flowapp.create_broker()
    await broker.startup()
    run = await broker.pipeline.kiq(path="in.csv", pipeline_id=pipeline_id)
    if until == "done":
        await run.wait_result(timeout=5)
        await broker.wait_all()
    else:
        while "parse-claimed" not in _calls(app):
            await asyncio.sleep(0.01)
    await broker.shutdown()
    await broker.middlewares[0].storage.close()  # the StorageMiddleware's SQLite store


def _calls(app: Path) -> list[str]:
    path = app / "calls.txt"
    return path.read_text().split() if path.exists() else []


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main([*argv, "--sqlite-path", "store.sqlite3"], environ={})
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code, out, _ = cli(capsys, *argv, "--json")
    return code, json.loads(out)


def test_show_list_and_resume_a_failed_run(app: Path, capsys) -> None:
    (app / "broken").touch()
    asyncio.run(_start(app, "fails_1", until="done"))
    asyncio.run(_start(app, "fine_0", until="done"))  # also fails: still broken
    assert _calls(app) == ["load", "parse"] * 2

    code, out, _ = cli(capsys, "pipeline", "show", "fails_1")
    assert code == EXIT_OK
    assert out.startswith("pipeline fails_1: failed\n")
    lines = out.splitlines()
    assert any("load -> loaded" in line and "done" in line for line in lines)
    assert any("parse -> parsed" in line and "failed" in line for line in lines)
    assert any("report -> report" in line and "pending" in line for line in lines)
    assert "failed at node parse: KeyError" in out

    code, shown = cli_json(capsys, "pipeline", "show", "fails_1")
    assert shown["state"] == "failed"
    assert [n["state"] for n in shown["nodes"]] == ["done", "failed", "pending"]
    code, out, _ = cli(capsys, "pipeline", "show", "fails_1", "--format", "mermaid")
    assert "class parse failed" in out
    code, out, _ = cli(capsys, "pipeline", "show", "fails_1", "--format", "dot")
    assert out.startswith("digraph pipeline {")

    code, listed = cli_json(capsys, "pipeline", "list")
    assert code == EXIT_OK
    assert [r["pipeline_id"] for r in listed["runs"]] == ["fine_0", "fails_1"]  # newest first
    code, out, _ = cli(capsys, "pipeline", "list", "--limit", "1")
    assert "fine_0" in out
    assert "fails_1" not in out

    (app / "broken").unlink()  # the fix is deployed
    code, out, err = cli(
        capsys, "pipeline", "resume", "fails_1", "--broker", "flowapp:create_broker", "--wait", "10"
    )
    assert (code, out) == (EXIT_OK, "pipeline fails_1 done\n"), err
    # load did not run again; parse ran again (fixed) and report ran once.
    assert _calls(app) == ["load", "parse"] * 2 + ["parse", "report"]
    code, shown = cli_json(capsys, "pipeline", "show", "fails_1")
    assert shown["state"] == "done"
    assert [n["attempts"] for n in shown["nodes"]] == [1, 2, 1]

    code, out, err = cli(
        capsys, "pipeline", "resume", "fails_1", "--broker", "flowapp:create_broker"
    )
    assert code == EXIT_USAGE
    assert "cannot resume pipeline 'fails_1': it is done" in err


def test_cancel_a_running_run(app: Path, capsys) -> None:
    (app / "slow").touch()
    asyncio.run(_start(app, "slow_1", until="parse"))  # the process ended holding the claim
    code, out, _ = cli(capsys, "pipeline", "show", "slow_1")
    assert out.startswith("pipeline slow_1: running")
    assert any("parse -> parsed" in line and "claimed" in line for line in out.splitlines())

    code, out, _ = cli(capsys, "pipeline", "cancel", "slow_1")
    assert (code, out) == (EXIT_OK, "pipeline slow_1 cancelled\n")
    code, answer = cli_json(capsys, "pipeline", "cancel", "slow_1")
    assert (code, answer) == (EXIT_OK, {"pipeline_id": "slow_1", "cancelled": False})
    code, shown = cli_json(capsys, "pipeline", "show", "slow_1")
    assert shown["state"] == "cancelled"
    assert shown["nodes"][2]["state"] == "cancelled"
    code, out, _ = cli(capsys, "pipeline", "list")
    assert "cancelled" in out

    # The claim was never sent (its process is gone): resume sends parse and the rest.
    (app / "slow").unlink()
    code, out, err = cli(
        capsys, "pipeline", "resume", "slow_1", "--broker", "flowapp:create_broker", "--wait", "10"
    )
    assert (code, out) == (EXIT_OK, "pipeline slow_1 done\n"), err
    assert _calls(app) == ["load", "parse-claimed", "parse", "report"]


def test_bad_input(app: Path, capsys) -> None:
    asyncio.run(_start(app, "done_1", until="done"))
    code, _, err = cli(capsys, "pipeline", "show", "nope")
    assert code == EXIT_NOT_FOUND
    assert "no pipeline run 'nope'" in err
    code, _, err = cli(capsys, "pipeline", "cancel", "nope")
    assert code == EXIT_NOT_FOUND
    code, _, err = cli(capsys, "pipeline", "cancel", "done_1")
    assert code == EXIT_USAGE
    assert "cannot cancel pipeline 'done_1': it is done" in err
    code, _, err = cli(capsys, "pipeline", "resume", "done_1", "--broker", "flowapp")
    assert code == EXIT_USAGE
    assert "MODULE:ATTR" in err
    code, _, err = cli(capsys, "pipeline", "resume", "done_1", "--broker", "nomodule:broker")
    assert code == EXIT_USAGE
    code, _, err = cli(capsys, "pipeline", "resume", "done_1", "--broker", "flowapp:GATE")
    assert code == EXIT_USAGE
    assert "not a taskiq broker" in err


def test_list_of_an_empty_store(app: Path, capsys) -> None:
    asyncio.run(_store_only(app))
    code, _, err = cli(capsys, "pipeline", "list")
    assert code == EXIT_NOT_FOUND
    assert "no pipeline runs" in err


async def _store_only(app: Path) -> None:
    from taskiq_flow.storage import SQLiteStorageAdapter

    storage = SQLiteStorageAdapter(app / "store.sqlite3")
    await storage.set("task:x", {"a": 1})
    await storage.close()
