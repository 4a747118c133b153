"""The README's install commands work in a fresh virtualenv, outside the workspace.

`pip install taskiq-flow` from the public index is another project (see the README), so
the README documents installing what this repository builds: all five package
directories in one ``pip install`` (command 1), or the wheels of ``uv build
--all-packages`` (command 2). Each test runs one of them, as written in the README, in a
new virtualenv (third-party dependencies come from PyPI), then the guide's Basic Usage
there; the wheel test also runs the guide's imports, the `taskiq-flow demo` console
script and the guide-snippet suite against the installed packages.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MEMBERS = (
    "taskiq_flow_storage",
    "taskiq_flow_cache",
    "taskiq_flow_middlewares",
    "taskiq_flow_factory",
    "taskiq_flow",
)
FROM_CHECKOUT = (
    "pip install ./packages/taskiq-flow-storage ./packages/taskiq-flow-cache "
    "./packages/taskiq-flow-middlewares ./packages/taskiq-flow-factory ./packages/taskiq-flow"
)
BUILD_WHEELS = "uv build --all-packages --wheel --out-dir dist"
FROM_WHEELS = "pip install dist/*.whl"

GUIDE_IMPORTS = textwrap.dedent(
    """
    import pathlib, sys
    from taskiq import InMemoryBroker
    from taskiq_flow import PipelineMiddleware, DataflowPipeline, pipeline_task
    from taskiq_flow.middlewares import StorageMiddleware, CacheMiddleware
    from taskiq_flow.storage import InMemoryStorageAdapter, RedisStorageAdapter, StorageEntry
    from taskiq_flow.cache import InMemoryCacheAdapter, RedisCacheAdapter
    from taskiq_flow.storage.factory import StorageAdapterFactory
    from taskiq_flow.config import TaskiqFlowConfig
    import taskiq_flow, taskiq_flow.factory, redis, aiosqlite  # "pip install redis"; SQLite bundled

    assert StorageAdapterFactory is taskiq_flow.factory.StorageAdapterFactory
    assert taskiq_flow.TaskiqFlowConfig is TaskiqFlowConfig
    for module in (taskiq_flow.storage, taskiq_flow.cache, taskiq_flow.middlewares,
                   taskiq_flow.factory, taskiq_flow.config):
        where = pathlib.Path(module.__file__).resolve()
        assert pathlib.Path(sys.prefix).resolve() in where.parents, (module, where)
    print("ok")
    """
)


def _guide_basic_usage() -> str:
    """The guide's first Basic Usage block as a script (its awaits inside a coroutine)."""
    guide = (ROOT / "docs" / "guide.md").read_text()
    block = re.search(r"### Basic usage\n\n```python\n(.*?)```", guide, re.DOTALL)
    assert block is not None, "docs/guide.md has no Basic usage block"
    body = textwrap.indent(block.group(1), "    ")
    return (
        f"import asyncio\n\nasync def main():\n{body}\n    print('basic usage ok')\n\n"
        "asyncio.run(main())\n"
    )


def _run(argv: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600):
    result = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{argv} failed:\n{result.stdout}\n{result.stderr}"
    return result


def _fresh_venv(tmp_path: Path) -> tuple[Path, dict[str, str], list[str]]:
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    # A clean environment: no workspace paths, no TASKIQ_FLOW_* settings.
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHONPATH", "VIRTUAL_ENV"} and not k.startswith("TASKIQ_FLOW_")
    }
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "-q"]
    return python, env, pip


def _as_argv(command: str, pip: list[str], cwd: Path) -> list[str]:
    """A documented ``pip install ...`` line as argv for the venv's pip (globs expanded)."""
    words = shlex.split(command)
    assert words[:2] == ["pip", "install"], command
    args: list[str] = []
    for word in words[2:]:
        args.extend(sorted(glob.glob(str(cwd / word))) if "*" in word else [word])
    return [*pip, "install", *args]


def _basic_usage_runs(python: Path, env: dict[str, str], cwd: Path) -> None:
    assert _run([str(python), "-c", GUIDE_IMPORTS], cwd=cwd, env=env).stdout.strip() == "ok"
    out = _run([str(python), "-c", _guide_basic_usage()], cwd=cwd, env=env).stdout
    assert out.strip() == "basic usage ok"


def test_the_readme_documents_these_commands() -> None:
    readme = (ROOT / "README.md").read_text().replace("\\\n", " ")
    for command in (FROM_CHECKOUT, BUILD_WHEELS, FROM_WHEELS):
        assert command in readme, command
    assert "not on the public package index" in readme
    assert "different* project" in readme  # why `pip install taskiq-flow` is not this one


@pytest.mark.slow
def test_install_from_a_checkout_then_basic_usage(tmp_path: Path) -> None:
    python, env, pip = _fresh_venv(tmp_path)
    _run(_as_argv(FROM_CHECKOUT, pip, ROOT), cwd=ROOT, env=env)
    _run([*pip, "check"], cwd=tmp_path, env=env)
    _basic_usage_runs(python, env, tmp_path)


@pytest.mark.slow
def test_install_from_wheels_then_basic_usage_demo_and_guide(tmp_path: Path) -> None:
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not on PATH (needed to build the wheels)")
    build = tmp_path / "build"
    build.mkdir()
    # The README's command, run in the checkout, writing into a dist/ of this test's own.
    argv = shlex.split(BUILD_WHEELS)
    argv[argv.index("dist")] = str(build / "dist")
    _run([uv, *argv[1:], "-q"], cwd=ROOT)
    wheels = sorted((build / "dist").glob("*.whl"))
    assert {wheel.name.split("-")[0] for wheel in wheels} == set(MEMBERS)

    python, env, pip = _fresh_venv(tmp_path)
    _run(_as_argv(FROM_WHEELS, pip, build), cwd=build, env=env)
    _run([*pip, "check"], cwd=tmp_path, env=env)
    _basic_usage_runs(python, env, tmp_path)

    script = python.parent / "taskiq-flow"
    demo = _run([str(script), "demo"], cwd=tmp_path, env=env, timeout=120)
    assert "executions run      20 of 200 tasks" in demo.stdout
    keys = _run([str(script), "storage", "keys", "task:*"], cwd=tmp_path, env=env)
    assert len(keys.stdout.split()) == 20

    # The guide's blocks, run against this install: test tools added, workspace not.
    if shutil.which("redis-server") is None:
        pytest.skip("no redis-server for the guide-snippet suite")
    testing = ROOT / "tools" / "taskiq-flow-testing"
    _run(
        [*pip, "install", "pytest>=8.3", "pytest-asyncio>=1.0", str(testing)], cwd=tmp_path, env=env
    )
    suite = _run(
        [
            str(python),
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(ROOT / "tests-integration" / "test_guide_snippets.py"),
        ],
        cwd=ROOT,
        env=env,
    )
    assert " passed" in suite.stdout
    assert "failed" not in suite.stdout
