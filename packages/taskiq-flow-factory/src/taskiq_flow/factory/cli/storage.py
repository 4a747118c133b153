"""``taskiq-flow storage``: list, show, count and clean up the entries of the store."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, TextIO

from taskiq_flow.config import TaskiqFlowConfig
from taskiq_flow.factory.builder import StorageAdapterFactory
from taskiq_flow.factory.cli._common import (
    EXIT_NOT_FOUND,
    EXIT_OK,
    CommandError,
    Subcommands,
    add_command,
    count_keys,
    list_keys,
    positive_int,
    print_json,
    progress_line,
    require_existing_store,
    to_json,
    wants_json,
)

if TYPE_CHECKING:
    from taskiq_flow.storage import BaseStorageAdapter

__all__ = ["add_parser", "run"]


def add_parser(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    """Add the ``storage`` command and its actions to ``commands``, with ``common``."""
    storage = add_command(
        commands,
        common,
        "storage",
        summary="inspect or clean the store (keys, get, count, cleanup)",
        description="Inspect the store that StorageMiddleware writes to.",
        epilog="examples:\n  taskiq-flow storage keys 'task:*'\n"
        "  taskiq-flow storage get task:3f2a...\n  taskiq-flow storage count 'pipeline:*'\n"
        "  taskiq-flow storage cleanup --older-than 3600",
    )
    storage_cmds = storage.add_subparsers(dest="action", metavar="ACTION", required=True)
    keys = add_command(
        storage_cmds,
        common,
        "keys",
        summary="list keys matching a glob pattern (sorted)",
        description="List live keys matching PATTERN, a Redis-style glob "
        "(* ? [a-z] [^a] \\ escapes), one per line, sorted. When none match: a line on "
        "stderr saying so, and exit code 1.",
    )
    keys.add_argument("pattern", nargs="?", default="*", metavar="PATTERN")
    keys.add_argument("--limit", type=positive_int, default=None, help="print at most N keys")
    get = add_command(
        storage_cmds,
        common,
        "get",
        summary="show one entry (value, created, expiry)",
        description="Show the entry stored under KEY. Exit code 1 when it is missing or expired.",
    )
    get.add_argument("key", metavar="KEY")
    count = add_command(
        storage_cmds,
        common,
        "count",
        summary="count keys matching a glob pattern",
        description="Count live keys matching PATTERN (default '*').",
    )
    count.add_argument("pattern", nargs="?", default="*", metavar="PATTERN")
    cleanup = add_command(
        storage_cmds,
        common,
        "cleanup",
        summary="remove expired entries (and old ones)",
        description="Remove expired entries now; with --older-than, also every entry "
        "created more than SECONDS ago, expired or not.",
    )
    cleanup.add_argument(
        "--older-than",
        type=positive_int,
        default=None,
        metavar="SECONDS",
        help="also remove entries older than this many seconds",
    )


async def run(args: argparse.Namespace, config: TaskiqFlowConfig, out: TextIO) -> int:
    """Run the storage action ``args.action`` against the configured store.

    Raises:
        CommandError: the store is in-memory or not created yet, or the key is missing.
    """
    require_existing_store(config)
    storage = StorageAdapterFactory.create_storage_adapter(config)
    as_json = wants_json(args)
    try:
        if args.action == "keys":
            return await _storage_keys(args, storage, out, as_json=as_json)
        if args.action == "get":
            return await _storage_get(args, storage, out, as_json=as_json)
        if args.action == "count":
            found = await count_keys(storage, args.pattern, progress_line(args, "counting"))
            if as_json:
                print_json(out, {"pattern": args.pattern, "count": found})
            else:
                out.write(f"{found}\n")
            return EXIT_OK
        return await _storage_cleanup(args, storage, out, as_json=as_json)
    finally:
        await storage.close()


async def _storage_keys(
    args: argparse.Namespace, storage: BaseStorageAdapter, out: TextIO, *, as_json: bool
) -> int:
    return await list_keys(args, storage.iter_keys(args.pattern), out, as_json=as_json, what="key")


async def _storage_get(
    args: argparse.Namespace, storage: BaseStorageAdapter, out: TextIO, *, as_json: bool
) -> int:
    entry = await storage.get_entry(args.key)
    if entry is None:
        raise CommandError(f"no entry under {args.key!r} (missing or expired)", EXIT_NOT_FOUND)
    remaining = entry.remaining_ttl()
    data = {
        "key": entry.key,
        "value": entry.value,
        "created_at": entry.created_at,
        "expires_at": entry.expires_at,
        "remaining_ttl": remaining,
    }
    if as_json:
        print_json(out, data)
        return EXIT_OK
    expiry = "never" if remaining is None else f"in {remaining:.0f} s ({entry.expires_at})"
    out.write(f"key         {entry.key}\ncreated at  {entry.created_at}\nexpires     {expiry}\n")
    out.write("value\n" + to_json(entry.value) + "\n")
    return EXIT_OK


async def _storage_cleanup(
    args: argparse.Namespace, storage: BaseStorageAdapter, out: TextIO, *, as_json: bool
) -> int:
    started = time.perf_counter()
    # One call: the backend removes in bulk (one DELETE in SQLite); the line only shows
    # that it is alive, then how many keys remain are counted with a live tally.
    async with progress_line(args, "cleaning up").ticking():
        removed = await storage.cleanup(ttl_seconds=args.older_than)
    remaining = await count_keys(storage, "*", progress_line(args, "counting what remains"))
    seconds = time.perf_counter() - started
    if as_json:
        print_json(
            out,
            {
                "removed": removed,
                "remaining": remaining,
                "older_than": args.older_than,
                "seconds": seconds,
            },
        )
    else:
        what = "expired entries"
        if args.older_than:
            what += f" and entries older than {args.older_than} s"
        out.write(f"removed {removed} ({what}); {remaining} remain; {seconds:.2f} s\n")
    return EXIT_OK
