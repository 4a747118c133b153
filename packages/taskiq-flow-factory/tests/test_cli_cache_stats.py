"""`taskiq-flow cache stats`: the cluster-wide counts every worker wrote to Redis."""

from __future__ import annotations

import asyncio
import json

import pytest

from taskiq_flow.cache import RedisCacheAdapter
from taskiq_flow.factory.cli import EXIT_OK, main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv), environ={})
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def counted(redis_url: str) -> None:
    """Two workers' worth of counts, written as CacheMiddleware writes them."""

    async def write() -> None:
        for hits, misses in ((100, 10), (80, 10)):
            cache = RedisCacheAdapter(redis_url)
            assert cache.shared_stats is not None
            cache.shared_stats.add("app.square", "hits", hits)
            cache.shared_stats.add("app.square", "misses", misses)
            cache.shared_stats.add("app.square", "lock_waits", 2)
            cache.shared_stats.add("app.square", "lock_wait_ms", 250)
            cache.shared_stats.add("app.report", "misses", 5)
            await cache.set("k", 1)
            await cache.close()

    asyncio.run(write())


def test_json_has_the_totals_and_the_rows(capsys: pytest.CaptureFixture[str], redis_url) -> None:
    counted(redis_url)
    code, out, err = run(capsys, "cache", "stats", "--json", "--cache-redis-url", redis_url)
    assert code == EXIT_OK, err
    stats = json.loads(out)["stats"]
    assert stats["scope"] == "cluster"
    assert (stats["hits"], stats["misses"]) == (180, 30)
    assert stats["lock_waits"] == 4
    assert stats["lock_wait_seconds"] == 0.5
    assert stats["entries"] == 1
    square = stats["by_task"]["app.square"]
    assert (square["hits"], square["misses"], square["hit_rate"]) == (180, 20, 0.9)
    assert stats["by_task"]["app.report"]["hit_rate"] == 0.0


def test_text_shows_the_hit_rate_as_a_percentage(
    capsys: pytest.CaptureFixture[str], redis_url
) -> None:
    counted(redis_url)
    code, out, err = run(capsys, "cache", "stats", "--cache-redis-url", redis_url)
    assert code == EXIT_OK, err
    lines = dict(line.split(None, 1) for line in out.splitlines()[1:] if line.strip())
    assert lines["hit_rate"] == "85.7%"  # 180 / 210
    assert lines["scope"] == "cluster"
    assert "app.square" not in out  # the rows need --by-task
    assert "totals of every process" in err
    code, out, _ = run(capsys, "cache", "stats", "--by-task", "--cache-redis-url", redis_url)
    assert code == EXIT_OK
    rows = [line.split() for line in out.splitlines() if line.startswith("app.")]
    assert rows == [
        ["app.report", "0", "10", "0.0%", "0", "0.000", "0", "0"],
        ["app.square", "180", "20", "90.0%", "4", "0.500", "0", "0"],
    ]


def test_no_counts_yet(capsys: pytest.CaptureFixture[str], redis_url) -> None:
    code, out, _ = run(capsys, "cache", "stats", "--by-task", "--cache-redis-url", redis_url)
    assert code == EXIT_OK
    assert "hit_rate           0.0%" in out
    assert "no task counted yet" in out
