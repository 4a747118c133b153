"""``taskiq-flow cache``: the statistics of the configured cache."""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from taskiq_flow.config import TaskiqFlowConfig
from taskiq_flow.factory.builder import StorageAdapterFactory
from taskiq_flow.factory.cli._common import (
    EXIT_OK,
    Subcommands,
    add_command,
    describe_cache,
    print_json,
    wants_json,
)

__all__ = ["add_parser", "run"]


def add_parser(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    """Add the ``cache`` command and its ``stats`` action to ``commands``, with ``common``."""
    cache = add_command(
        commands,
        common,
        "cache",
        summary="cache statistics",
        description="Show the statistics of the configured cache.",
        epilog="example:\n"
        "  TASKIQ_FLOW_CACHE_REDIS_URL=redis://cache:6379/1 taskiq-flow cache stats",
    )
    cache_cmds = cache.add_subparsers(dest="action", metavar="ACTION", required=True)
    add_command(
        cache_cmds,
        common,
        "stats",
        summary="hits, misses, hit rate and more",
        description="Print the cache's get_stats(): hits, misses, hit_rate and the rest.",
    )


async def run(args: argparse.Namespace, config: TaskiqFlowConfig, out: TextIO) -> int:
    """Print the cache's statistics, after checking that its backend answers."""
    cache = StorageAdapterFactory.create_cache_adapter(config)
    try:
        stats = dict(cache.get_stats())
        # One read proves the backend answers (a CacheConnectionError exits 3); taken
        # after the snapshot so that the probe's own miss is not in the figures.
        await cache.get("taskiq-flow-cli:reachability-probe")
        inventory = getattr(cache, "inventory", None)
        if inventory is not None:
            stats.update(await inventory())
    finally:
        await cache.close()
    note = ""
    if config.resolved_cache_type == "inmemory":
        note = (
            "the in-memory cache lives inside each worker process, so this command sees "
            "only its own, empty one; set TASKIQ_FLOW_CACHE_REDIS_URL to read a shared "
            "Redis cache"
        )
    else:
        note = (
            "entries and leases are counted on the server; hits and misses are counted "
            "inside each worker process (CacheMiddleware.get_stats()), so they read 0 here"
        )
    if wants_json(args):
        print_json(
            out,
            {"backend": describe_cache(config), "reachable": True, "stats": stats, "note": note},
        )
        return EXIT_OK
    out.write(f"cache  {describe_cache(config)} (reachable)\n")
    # Two blanks after the longest name: a long one (creator_errors) never touches its value.
    width = max((len(key) for key in stats), default=0) + 2
    for key, value in stats.items():
        shown = f"{value:.1%}" if key == "hit_rate" and isinstance(value, float) else value
        out.write(f"{key:<{width}}{shown}\n")
    if note:
        sys.stderr.write(f"note: {note}\n")
    return EXIT_OK
