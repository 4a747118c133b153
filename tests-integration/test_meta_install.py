"""`pip install taskiq-flow` into a fresh virtualenv gives every import path of the guide.

The wheels come from `uv build --all-packages` of this checkout; third-party
dependencies come from PyPI. Our five wheels are installed first with ``--no-deps`` so
that pip can never pick a same-named distribution from PyPI instead of ours. Then, in
that virtualenv (not the workspace), the guide's imports, the `taskiq-flow demo`
console script and the guide-snippet suite all run against the installed packages.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
MEMBERS = (
    "taskiq_flow_storage",
    "taskiq_flow_cache",
    "taskiq_flow_middlewares",
    "taskiq_flow_factory",
    "taskiq_flow",
)

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


def _run(argv: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600):
    result = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{argv} failed:\n{result.stdout}\n{result.stderr}"
    return result


def test_pip_install_meta_package_in_a_fresh_venv(tmp_path: Path) -> None:
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not on PATH (needed to build the wheels)")
    dist = tmp_path / "dist"
    _run([uv, "build", "--all-packages", "--wheel", "--out-dir", str(dist), "-q"], cwd=ROOT)
    wheels = sorted(dist.glob("*.whl"))
    names = {wheel.name.split("-")[0] for wheel in wheels}
    assert set(MEMBERS) <= names, names

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
    ours = [str(w) for w in wheels if w.name.split("-")[0] in MEMBERS[:-1]]
    _run([*pip, "install", "--no-deps", *ours], cwd=tmp_path, env=env)
    # The meta package as the issue puts it: `pip install ./packages/taskiq-flow`, built from
    # source; its four dependencies are already satisfied by our wheels.
    _run(
        [*pip, "install", "--find-links", str(dist), str(ROOT / "packages" / "taskiq-flow")],
        cwd=tmp_path,
        env=env,
    )
    assert "taskiq_flow-" in "".join(w.name for w in wheels)  # the meta wheel builds too
    _run([*pip, "check"], cwd=tmp_path, env=env)

    assert _run([str(python), "-c", GUIDE_IMPORTS], cwd=tmp_path, env=env).stdout.strip() == "ok"

    demo = _run([str(venv / "bin" / "taskiq-flow"), "demo"], cwd=tmp_path, env=env, timeout=120)
    assert "executions run      20 of 200 tasks" in demo.stdout
    keys = _run(
        [str(venv / "bin" / "taskiq-flow"), "storage", "keys", "task:*"], cwd=tmp_path, env=env
    )
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
