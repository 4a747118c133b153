"""``taskiq-flow cache``: the statistics of the configured cache."""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from taskiq_flow.config import TaskiqFlowConfig
from taskiq_flow.factory.builder import StorageAdapterFactory
from taskiq_flow.factory.cli import cache_keys
from taskiq_flow.factory.cli._common import (
    EXIT_OK,
    Subcommands,
    add_command,
    describe_cache,
    print_json,
    wants_json,
    write_table,
)

__all__ = ["add_parser", "run"]


def add_parser(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    """Add the ``cache`` command and its ``stats`` action to ``commands``, with ``common``."""
    cache = add_command(
        commands,
        common,
        "cache",
        summary="cache statistics, keys and invalidation",
        description="Show the statistics of the configured cache.",
        epilog="example:\n"
        "  TASKIQ_FLOW_CACHE_REDIS_URL=redis://cache:6379/1 taskiq-flow cache stats",
    )
    cache_cmds = cache.add_subparsers(dest="action", metavar="ACTION", required=True)
    stats = add_command(
        cache_cmds,
        common,
        "stats",
        summary="hits, misses, hit rate and more, of every worker",
        description=(
            "Print the cache's get_stats(scope='cluster'): hits, misses and hit rate of "
            "every process using a Redis cache through CacheMiddleware (each writes its "
            "counts at most once per second), entries and leases on the server; with "
            "--by-task, one row per task (--json always has them, under by_task)."
        ),
        epilog="examples:\n"
        "  TASKIQ_FLOW_CACHE_REDIS_URL=redis://cache:6379/1 taskiq-flow cache stats\n"
        "  taskiq-flow cache stats --by-task\n"
        "  taskiq-flow cache stats --json",
    )
    stats.add_argument(
        "--by-task", action="store_true", help="also one row per task (hits, misses, hit rate)"
    )
    cache_keys.add_actions(cache_cmds, common)  # keys, get, invalidate


async def run(args: argparse.Namespace, config: TaskiqFlowConfig, out: TextIO) -> int:
    """Print the cache's cluster-wide statistics (reading them proves the backend answers).

    The other actions (keys, get, invalidate) are :mod:`taskiq_flow.factory.cli.cache_keys`.
    """
    if args.action in cache_keys.ACTIONS:
        return await cache_keys.run(args, config, out)
    cache = StorageAdapterFactory.create_cache_adapter(config)
    try:
        # Redis: one HGETALL of the shared counters (a CacheConnectionError exits 3).
        stats = await cache.get_stats(scope="cluster")
        inventory = getattr(cache, "inventory", None)
        if inventory is not None:
            stats.update(await inventory())
    finally:
        await cache.close()
    if config.resolved_cache_type == "inmemory":
        note = (
            "the in-memory cache lives inside each worker process, so this command sees "
            "only its own, empty one; set TASKIQ_FLOW_CACHE_REDIS_URL to read a shared "
            "Redis cache"
        )
    else:
        note = (
            "entries and leases are counted on the server; hits, misses and lock waits are "
            "the totals of every process using this cache through CacheMiddleware, each "
            "writing its counts at most once per second"
        )
    if wants_json(args):
        print_json(
            out,
            {"backend": describe_cache(config), "reachable": True, "stats": stats, "note": note},
        )
        return EXIT_OK
    by_task: dict[str, dict[str, Any]] = stats.pop("by_task", {})
    out.write(f"cache  {describe_cache(config)} (reachable)\n")
    # Two blanks after the longest name: a long one (creator_errors) never touches its value.
    width = max((len(key) for key in stats), default=0) + 2
    for key, value in stats.items():
        out.write(f"{key:<{width}}{_shown(key, value)}\n")
    if getattr(args, "by_task", False):
        out.write("\n")
        if by_task:
            write_table(out, _task_rows(by_task))
        else:
            out.write("no task counted yet\n")
    sys.stderr.write(f"note: {note}\n")
    return EXIT_OK


_TASK_COLUMNS = (
    ("task", ""),
    ("hits", "hits"),
    ("misses", "misses"),
    ("hit rate", "hit_rate"),
    ("lock waits", "lock_waits"),
    ("waited s", "lock_wait_seconds"),
    ("lock timeouts", "lock_timeouts"),
    ("uncached", "uncached"),
)


def _shown(key: str, value: object) -> str:
    """A statistic as printed: rates as ``90.0%`` (as the guide prints them), seconds to ms."""
    if key == "hit_rate" and isinstance(value, float):
        return f"{value:.1%}"
    if key.endswith("_seconds") and isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _task_rows(by_task: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows = [[title for title, _ in _TASK_COLUMNS]]
    for task, row in by_task.items():
        rows.append([task, *(_shown(key, row.get(key, 0)) for _, key in _TASK_COLUMNS[1:])])
    return rows
