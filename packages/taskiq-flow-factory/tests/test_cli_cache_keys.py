"""``taskiq-flow cache keys | get | invalidate`` against a private Redis filled by a broker."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from taskiq import InMemoryBroker

from taskiq_flow.cache import RedisCacheAdapter
from taskiq_flow.config import TaskiqFlowConfig
from taskiq_flow.factory.cli import EXIT_NOT_FOUND, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, main
from taskiq_flow.middlewares import CacheMiddleware, cache_key_for
from taskiq_flow.storage.glob import escape_glob
from taskiq_flow_testing import RedisServer


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for item in TaskiqFlowConfig.settings():
        monkeypatch.delenv(item["env_var"], raising=False)
    monkeypatch.chdir(tmp_path)


def run(capsys: pytest.CaptureFixture[str], url: str, *argv: str) -> tuple[int, str, str]:
    code = main([*argv, "--cache-redis-url", url], environ={})
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_json(capsys: pytest.CaptureFixture[str], url: str, *argv: str) -> tuple[int, Any]:
    code, out, _ = run(capsys, url, *argv, "--json")
    return code, json.loads(out)


class System:
    """A broker with CacheMiddleware over the Redis the CLI is pointed at."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.runs: Counter[tuple[str, int]] = Counter()
        self.loop = asyncio.new_event_loop()
        self.broker = InMemoryBroker()
        self.broker.add_middlewares(CacheMiddleware(RedisCacheAdapter(url), metrics=False))
        self.tasks = {
            name: self._declare(name, **labels)
            for name, labels in (
                ("app:add", {"cache_tags": "math"}),
                ("app:mul", {"cache_tags": "math,slow"}),
                ("app:name", {}),
            )
        }
        self.loop.run_until_complete(self.broker.startup())

    def _declare(self, name: str, **labels: Any) -> Any:
        @self.broker.task(task_name=name, **labels)
        async def task(x: int) -> dict[str, Any]:
            self.runs[name, x] += 1
            return {"task": name, "x": x}

        return task

    def call(self, name: str, *xs: int) -> None:
        async def calls() -> None:
            for x in xs:
                result = await (await self.tasks[name].kiq(x)).wait_result(timeout=10)
                assert not result.is_err

        self.loop.run_until_complete(calls())

    def call_all(self) -> None:
        for name in self.tasks:
            self.call(name, 1, 2)

    def close(self) -> None:
        self.loop.run_until_complete(self.broker.shutdown())
        self.loop.close()


@pytest.fixture
def system(redis_url: str) -> Iterator[System]:
    made = System(redis_url)
    made.call_all()
    yield made
    made.close()


def test_keys_lists_what_the_workers_cached(
    capsys: pytest.CaptureFixture[str], system: System
) -> None:
    code, out, _ = run(capsys, system.url, "cache", "keys")
    assert code == EXIT_OK
    assert len(out.splitlines()) == 6
    add_1 = cache_key_for(system.tasks["app:add"], 1)
    assert add_1 in out.splitlines()
    code, data = run_json(capsys, system.url, "cache", "keys", "app:add:*", "--limit", "1")
    assert (code, data["count"], data["truncated"], len(data["keys"])) == (EXIT_OK, 2, True, 1)
    code, out, err = run(capsys, system.url, "cache", "keys", "nothing*")
    assert (code, out) == (EXIT_NOT_FOUND, "")
    assert "no cached key matches 'nothing*'" in err


def test_get_shows_the_decoded_result(capsys: pytest.CaptureFixture[str], system: System) -> None:
    key = cache_key_for(system.tasks["app:mul"], 2)
    code, data = run_json(capsys, system.url, "cache", "get", key)
    assert code == EXIT_OK
    assert data == {"key": key, "kind": "value", "value": {"task": "app:mul", "x": 2}}
    code, out, _ = run(capsys, system.url, "cache", "get", key)
    assert code == EXIT_OK
    assert "kind   value" in out
    assert '"task": "app:mul"' in out
    code, _, err = run(capsys, system.url, "cache", "get", "app:mul:missing")
    assert code == EXIT_NOT_FOUND
    assert "nothing cached under 'app:mul:missing'" in err


def test_invalidate_keys_then_the_next_call_runs(
    capsys: pytest.CaptureFixture[str], system: System
) -> None:
    key = cache_key_for(system.tasks["app:add"], 1)
    code, out, _ = run(capsys, system.url, "cache", "invalidate", key, "app:add:unknown")
    assert (code, out) == (EXIT_OK, "removed 1 cached result\n")
    system.call_all()
    assert system.runs["app:add", 1] == 2
    assert sum(system.runs.values()) == 7  # everything else hit


def test_invalidate_task_tag_and_pattern(
    capsys: pytest.CaptureFixture[str], system: System
) -> None:
    code, data = run_json(capsys, system.url, "cache", "invalidate", "--task", "app:add")
    assert (code, data) == (EXIT_OK, {"task": "app:add", "dry_run": False, "count": 2})
    system.call_all()
    assert system.runs == Counter({("app:add", 1): 2, ("app:add", 2): 2}) + Counter(
        {(n, x): 1 for n in ("app:mul", "app:name") for x in (1, 2)}
    )
    code, out, _ = run(capsys, system.url, "cache", "invalidate", "--tag", "slow")
    assert (code, out) == (EXIT_OK, "removed 2 cached results\n")
    code, out, _ = run(capsys, system.url, "cache", "invalidate", "--pattern", "app:n*")
    assert (code, out) == (EXIT_OK, "removed 2 cached results\n")
    system.call_all()
    assert system.runs["app:mul", 1] == system.runs["app:name", 2] == 2
    assert system.runs["app:add", 1] == 2  # untouched this time: still a hit


def test_dry_run_lists_and_removes_nothing(
    capsys: pytest.CaptureFixture[str], system: System
) -> None:
    math = sorted(cache_key_for(system.tasks[n], x) for n in ("app:add", "app:mul") for x in (1, 2))
    code, out, _ = run(capsys, system.url, "cache", "invalidate", "--tag", "math", "--dry-run")
    assert code == EXIT_OK
    assert out.splitlines() == [*math, "would remove 4 cached results"]
    for argv, count in (
        (["--task", "app:mul"], 2),
        (["--pattern", "app:*"], 6),
        ([math[0], "app:none"], 1),
    ):
        code, data = run_json(capsys, system.url, "cache", "invalidate", *argv, "--dry-run")
        assert (code, data["count"], data["dry_run"]) == (EXIT_OK, count, True)
    code, data = run_json(capsys, system.url, "cache", "keys")
    assert data["count"] == 6


def test_nothing_matched_exits_1(capsys: pytest.CaptureFixture[str], system: System) -> None:
    for argv in (["--tag", "never"], ["--task", "app:none"], ["--pattern", "zz*"], ["zz"]):
        code, out, err = run(capsys, system.url, "cache", "invalidate", *argv)
        assert code == EXIT_NOT_FOUND, argv
        assert out == "removed 0 cached results\n"
        assert "nothing cached matches" in err


def test_metacharacters_in_keys_are_literal(
    capsys: pytest.CaptureFixture[str], redis_url: str
) -> None:
    async def fill() -> None:
        async with RedisCacheAdapter(redis_url) as cache:
            for key in ("a*b", "a[x]b", "axb", "a{b}"):
                await cache.set(key, key)

    asyncio.run(fill())
    code, out, _ = run(capsys, redis_url, "cache", "keys", escape_glob("a*b"))
    assert (code, out) == (EXIT_OK, "a*b\n")
    code, out, _ = run(capsys, redis_url, "cache", "keys", "a*b")
    assert out.splitlines() == ["a*b", "a[x]b", "axb"]
    code, out, _ = run(capsys, redis_url, "cache", "invalidate", "a*b")  # a key, not a pattern
    assert (code, out) == (EXIT_OK, "removed 1 cached result\n")
    code, out, _ = run(capsys, redis_url, "cache", "invalidate", "--pattern", escape_glob("a[x]b"))
    assert (code, out) == (EXIT_OK, "removed 1 cached result\n")
    code, out, _ = run(capsys, redis_url, "cache", "keys")
    assert out.splitlines() == ["axb", "a{b}"]


@pytest.mark.parametrize(
    "argv",
    [
        ["invalidate"],
        ["invalidate", "k", "--tag", "t"],
        ["invalidate", "--task", "a", "--pattern", "b"],
        ["invalidate", "--tag", ""],
        ["invalidate", "--tag", "x" * 300],
        ["invalidate", "--task", ""],
        ["invalidate", ""],
    ],
)
def test_bad_selectors_exit_2(
    capsys: pytest.CaptureFixture[str], redis_url: str, argv: list[str]
) -> None:
    code, _, err = run(capsys, redis_url, "cache", *argv)
    assert code == EXIT_USAGE, err
    assert err.startswith("taskiq-flow: ")


def test_in_memory_cache_cannot_be_inspected(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["keys"], ["get", "k"], ["invalidate", "--tag", "t"]):
        code = main(["cache", *argv], environ={})
        err = capsys.readouterr().err
        assert code == EXIT_USAGE
        assert "TASKIQ_FLOW_CACHE_REDIS_URL" in err


def test_redis_down_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    server = RedisServer().start()
    url = server.url
    server.stop()
    for argv in (
        ["keys"],
        ["get", "k"],
        ["invalidate", "k"],
        ["invalidate", "--task", "t"],
        ["invalidate", "--tag", "t"],
        ["invalidate", "--pattern", "*"],
        ["invalidate", "--tag", "t", "--dry-run"],
    ):
        code, _, err = run(capsys, url, "cache", *argv)
        assert code == EXIT_UNREACHABLE, (argv, err)
        assert "CacheConnectionError" in err
