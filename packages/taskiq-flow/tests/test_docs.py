"""The documentation's examples run, and its reference tables match the code.

Every ```python block of a page runs, in order, in one namespace per page (top-level
``await`` allowed, as in ``python -m asyncio``). Every ```bash block runs its
``taskiq-flow`` lines with the installed console script (``export`` lines set the
environment; ``pip``/``uv`` install lines are skipped). ```text blocks are output
samples and are not run. ``redis://localhost:6379`` is replaced by the private test
server's URL: the machine's shared server is never touched. Each page runs in a fresh
temporary directory with no ``TASKIQ_FLOW_*`` variable set.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from taskiq.abc.broker import AsyncBroker

from taskiq_flow.cache import BaseCacheAdapter
from taskiq_flow.config import TaskiqFlowConfig
from taskiq_flow.factory import cli
from taskiq_flow.storage import BaseStorageAdapter

ROOT = Path(__file__).resolve().parents[3]
DOCS = ROOT / "docs"
PAGES = [
    "index.md",
    "guide.md",
    "configuration.md",
    "factory.md",
    "cli.md",
    "architecture.md",
    "comparison.md",
    "cache-control.md",
]
READMES = [
    ROOT / "packages" / "taskiq-flow" / "README.md",
    ROOT / "packages" / "taskiq-flow-factory" / "README.md",
]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
GUIDE_URL = "redis://localhost:6379"
SCRIPT = Path(sys.executable).parent / "taskiq-flow"


def blocks(path: Path) -> list[tuple[str, str, int]]:
    text = path.read_text()
    return [
        (m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1) for m in FENCE.finditer(text)
    ]


@pytest.fixture
def tracked(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every adapter and broker the examples create, to close them afterwards."""
    made: list[Any] = []
    for cls in (BaseStorageAdapter, BaseCacheAdapter, AsyncBroker):
        original = cls.__init__

        def init(self: Any, *args: Any, __original: Any = original, **kwargs: Any) -> None:
            __original(self, *args, **kwargs)
            made.append(self)

        monkeypatch.setattr(cls, "__init__", init)
    return made


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    for item in TaskiqFlowConfig.settings():
        monkeypatch.delenv(item["env_var"], raising=False)
    monkeypatch.chdir(tmp_path)
    return {k: v for k, v in os.environ.items() if not k.startswith("TASKIQ_FLOW_")}


def _private(source: str, redis_url: str) -> str:
    return source.replace(GUIDE_URL, redis_url.rstrip("/").removesuffix("/0"))


async def _run_python(path: Path, redis_url: str, tracked: list[Any]) -> int:
    namespace: dict[str, Any] = {"__name__": "__main__"}  # as in `python -m asyncio`
    ran = 0
    saved_env = {k: v for k, v in os.environ.items() if k.startswith("TASKIQ_FLOW_")}
    try:
        for lang, source, line in blocks(path):
            if lang != "python":
                continue
            code = compile(
                "\n" * (line) + _private(source, redis_url),
                str(path),
                "exec",
                flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
            )
            outcome = eval(code, namespace)  # noqa: S307 - our own documentation
            if inspect.iscoroutine(outcome):
                await outcome
            ran += 1
    finally:
        for thing in reversed(tracked):
            if isinstance(thing, AsyncBroker):
                await thing.shutdown()
        for thing in tracked:
            if not isinstance(thing, AsyncBroker):
                await thing.close()
        for key in [k for k in os.environ if k.startswith("TASKIQ_FLOW_")]:
            del os.environ[key]
        os.environ.update(saved_env)
    return ran


def _run_bash(path: Path, redis_url: str, env: dict[str, str], cwd: Path) -> int:
    ran = 0
    env = dict(env)
    for lang, source, line in blocks(path):
        if lang != "bash":
            continue
        for offset, raw in enumerate(source.splitlines()):
            where = f"{path.name}:{line + 1 + offset}"
            command = _private(raw, redis_url).split(" #", 1)[0].strip()
            if not command or command.startswith("#"):
                continue
            words = shlex.split(command)
            if words[0] == "export":
                name, _, value = words[1].partition("=")
                env[name] = value
                continue
            if words[0] == "pip" or words[:2] == ["uv", "sync"]:
                continue
            if words[:2] == ["uv", "run"]:
                words = words[2:]
            assert words[0] == "taskiq-flow", f"{where}: not a runnable command: {raw!r}"
            done = subprocess.run(
                [str(SCRIPT), *words[1:]],
                cwd=cwd,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert done.returncode == 0, f"{where}: {raw!r} exited {done.returncode}\n{done.stderr}"
            ran += 1
    return ran


@pytest.mark.parametrize("page", PAGES)
async def test_page_examples_run(
    page: str, redis_url: str, tracked: list[Any], clean_env: dict[str, str], tmp_path: Path
) -> None:
    path = DOCS / page
    ran = await _run_python(path, redis_url, tracked)
    ran += _run_bash(path, redis_url, clean_env, tmp_path)
    if page not in {"architecture.md", "comparison.md"}:
        assert ran, f"{page} has no runnable example"


@pytest.mark.parametrize("readme", READMES, ids=lambda p: p.parent.name)
async def test_readme_examples_run(
    readme: Path, redis_url: str, tracked: list[Any], clean_env: dict[str, str], tmp_path: Path
) -> None:
    first = readme.read_text().split("\n\n", 2)
    assert first[0].startswith("# ")
    assert "pip install" in first[1], "a README starts with its install line"
    await _run_python(readme, redis_url, tracked)
    _run_bash(readme, redis_url, clean_env, tmp_path)


def test_configuration_table_matches_the_code() -> None:
    text = (DOCS / "configuration.md").read_text()
    rows = {
        m.group(1): (m.group(2), m.group(3))
        for m in re.finditer(r"^\| `(TASKIQ_FLOW_\w+)` \| `(\w+)` \| ([^|]+) \|", text, re.M)
    }
    expected = {}
    for item in TaskiqFlowConfig.settings():
        default = item["default"]
        if default is None:
            shown = "(unset)"
        elif isinstance(default, bool):
            shown = f"`{str(default).lower()}`"
        elif isinstance(default, str):
            shown = f'`"{default}"`'
        else:
            shown = f"`{default}`"
        expected[item["env_var"]] = (item["name"], shown)
    assert {k: (v[0], v[1].strip()) for k, v in rows.items()} == expected


def test_cli_exit_code_table_matches_the_code() -> None:
    text = (DOCS / "cli.md").read_text()
    documented = {int(m.group(1)) for m in re.finditer(r"^\| (\d+) \| ", text, re.M)}
    constants = {
        cli.EXIT_OK,
        cli.EXIT_NOT_FOUND,
        cli.EXIT_USAGE,
        cli.EXIT_UNREACHABLE,
        cli.EXIT_BACKEND_ERROR,
        cli.EXIT_INTERRUPTED,
    }
    assert documented == constants
    help_text = cli.build_parser().format_help()
    for code in constants:
        assert f"\n  {code} " in help_text


@pytest.mark.parametrize("page", PAGES)
def test_relative_links_resolve(page: str) -> None:
    text = (DOCS / page).read_text()
    for target in re.findall(r"\]\(([^)#:]+\.md)(?:#[^)]*)?\)", text):
        assert (DOCS / target).is_file(), f"{page} links to missing {target}"


def _package_imports() -> dict[str, set[str]]:
    """Import-root edges between the packages, read from every source module."""

    def root(module: str) -> str:
        parts = module.split(".")
        return parts[1] if len(parts) > 1 else "meta"

    edges: dict[str, set[str]] = {}
    for path in (ROOT / "packages").glob("*/src/taskiq_flow/**/*.py"):
        parts = path.relative_to(path.parents[len(path.parts) - path.parts.index("src") - 2])
        module = ".".join(parts.with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                if name.startswith("taskiq_flow") and root(name) != root(module):
                    edges.setdefault(root(module), set()).add(root(name))
    return edges


def test_architecture_graph_matches_the_imports() -> None:
    text = (DOCS / "architecture.md").read_text()
    block = text.split("<!-- package-imports -->\n```text\n", 1)[1].split("```", 1)[0]
    documented: dict[str, set[str]] = {}
    for line in block.strip().splitlines():
        source, targets = line.split(" -> ")
        documented[source] = set(targets.split(" (", 1)[0].split(", "))
    assert documented == _package_imports()
