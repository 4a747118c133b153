"""cache_version and key_version="source": keys that change with the code, and only then."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
from taskiq import InMemoryBroker

from taskiq_flow.cache import CacheKeyError, InMemoryCacheAdapter
from taskiq_flow.middlewares import CacheMiddleware, MiddlewareConfigError, cache_key_for
from taskiq_flow.middlewares._versions import MAX_VERSION_LENGTH

TASK = """
RATE = {rate}

def helper(x):
    return x + 1

def make():
    factor = {factor}
    def task(x, y={default}):
        {body}
        return helper(x) * factor * RATE + y
    return task
"""
BASE = {"rate": 2, "factor": 3, "default": 1, "body": "x = x + 0"}


def _version_in_process(tmp_path: Path, seed: str, blank_lines: int = 0, **changes: object) -> str:
    """source_version of the task built by TASK, computed in a fresh interpreter."""
    fields = {**BASE, **changes}
    module = tmp_path / f"mod_{abs(hash((seed, blank_lines, tuple(sorted(fields.items())))))}.py"
    module.write_text("\n" * blank_lines + TASK.format(**fields))
    script = textwrap.dedent(
        f"""
        import importlib.util
        spec = importlib.util.spec_from_file_location("taskmod", {str(module)!r})
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        from taskiq_flow.middlewares._versions import source_version
        print(source_version(mod.make()))
        """
    )
    env = {**os.environ, "PYTHONHASHSEED": seed}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_source_version_is_stable_across_processes_and_moves(tmp_path: Path) -> None:
    first = _version_in_process(tmp_path, "1")
    assert first.startswith("src-")
    assert _version_in_process(tmp_path, "2") == first  # another process, another hash seed
    assert _version_in_process(tmp_path, "3", blank_lines=5) == first  # moved down the file


@pytest.mark.parametrize(
    "change",
    [{"factor": 4}, {"default": 2}, {"body": "x = x + 1"}],
    ids=["closed_over_constant", "default_argument", "one_changed_line"],
)
def test_source_version_changes_with_the_code(tmp_path: Path, change: dict[str, object]) -> None:
    assert _version_in_process(tmp_path, "1", **change) != _version_in_process(tmp_path, "1")


async def test_cache_version_label_changes_keys_and_keeps_them() -> None:
    broker = InMemoryBroker()
    broker.add_middlewares(CacheMiddleware(InMemoryCacheAdapter()))
    runs: Counter[str] = Counter()

    @broker.task(task_name="report")
    async def report(x: int) -> int:
        runs["report"] += 1
        return x

    await broker.startup()
    try:
        v1 = report.kicker().with_labels(cache_version="1")
        v2 = report.kicker().with_labels(cache_version="2")
        for kicker in (v1, v1, v2, v2):
            await (await kicker.kiq(5)).wait_result(timeout=5)
        assert runs["report"] == 2  # one run per version
        plain, one, two = (
            cache_key_for(report, 5),
            cache_key_for(report, 5, labels={"cache_version": "1"}),
            cache_key_for(report, 5, labels={"cache_version": 2}),
        )
        assert len({plain, one, two}) == 3
        assert all(key.startswith("report:") for key in (plain, one, two))
        fixed = cache_key_for(report, 5, labels={"cache_key": "k", "cache_version": "1"})
        assert fixed.startswith("report:key:k@")
    finally:
        await broker.shutdown()


async def test_a_huge_cache_version_is_a_clear_error(caplog: pytest.LogCaptureFixture) -> None:
    broker = InMemoryBroker()
    broker.add_middlewares(CacheMiddleware(InMemoryCacheAdapter()))
    huge = "v" * 1_000_000

    @broker.task(task_name="big")
    async def big(x: int) -> int:
        return x

    with pytest.raises(CacheKeyError, match=f"at most {MAX_VERSION_LENGTH}"):
        cache_key_for(big, 1, labels={"cache_version": huge})
    await broker.startup()
    try:
        # A call still runs (uncached, with one warning).
        result = await (await big.kicker().with_labels(cache_version=huge).kiq(1)).wait_result(
            timeout=5
        )
        assert result.return_value == 1
        assert "cache_version" in caplog.text
    finally:
        await broker.shutdown()


async def test_key_version_source_through_a_broker() -> None:
    def declare(broker: InMemoryBroker, factor: int) -> object:
        @broker.task(task_name="scaled")
        async def scaled(x: int) -> int:
            return x * factor

        return scaled

    brokers = []
    tasks = []
    for factor in (3, 3, 4):
        broker = InMemoryBroker()
        broker.add_middlewares(CacheMiddleware(InMemoryCacheAdapter(), key_version="source"))
        brokers.append(broker)
        tasks.append(declare(broker, factor))
    same, again, other = (cache_key_for(task, 1) for task in tasks)
    assert same == again  # same code, same closure values: one key
    assert same != other  # a closed-over constant changed
    plain = InMemoryBroker()
    plain.add_middlewares(CacheMiddleware(InMemoryCacheAdapter()))
    assert cache_key_for(declare(plain, 3), 1) != same  # without key_version: the old key
    for broker in brokers:
        await broker.startup()
    try:
        middleware = brokers[0].middlewares[0]
        await (await tasks[0].kiq(2)).wait_result(timeout=5)  # type: ignore[attr-defined]
        assert await middleware.cache.get(same) is None  # only x=2 ran
        assert await middleware.cache.get(cache_key_for(tasks[0], 2)) is not None  # type: ignore[attr-defined]
    finally:
        for broker in brokers:
            await broker.shutdown()


def test_bad_key_version() -> None:
    with pytest.raises(MiddlewareConfigError, match="key_version"):
        CacheMiddleware(key_version="bytecode")  # type: ignore[arg-type]
