"""``taskiq-flow cache keys | get | invalidate``: look into the shared cache and steer it.

The actions of ``taskiq-flow cache`` that read or remove entries (``cache stats`` lives in
:mod:`taskiq_flow.factory.cli.cache`, which registers these). Keys are those
``CacheMiddleware`` stores results under (``{task_name}:{digest}``, or
``{task_name}:key:{cache_key}``); ``--task`` and ``--tag`` mean what
``CacheMiddleware.invalidate_task`` / ``invalidate_tag`` mean, through the same code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator
from typing import Any, TextIO

from taskiq_flow.cache import BaseCacheAdapter, CacheValueError
from taskiq_flow.config import TaskiqFlowConfig
from taskiq_flow.factory.builder import StorageAdapterFactory
from taskiq_flow.factory.cli._common import (
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    Subcommands,
    add_command,
    list_keys,
    positive_int,
    print_json,
    to_json,
    wants_json,
)
from taskiq_flow.middlewares import _codec, _invalidate

__all__ = ["ACTIONS", "add_actions", "run"]

ACTIONS = frozenset({"keys", "get", "invalidate"})
"""The ``cache`` actions this module runs."""

_MISSING = object()


def add_actions(actions: Subcommands, common: argparse.ArgumentParser) -> None:
    """Add ``keys``, ``get`` and ``invalidate`` to the ``cache`` command's ``actions``."""
    keys = add_command(
        actions,
        common,
        "keys",
        summary="list cached keys matching a glob pattern (sorted)",
        description="List the keys of cached results matching PATTERN, a Redis-style glob "
        "(* ? [a-z] [^a] \\ escapes; default *), one per line, sorted. When none match: a "
        "line on stderr saying so, and exit code 1.",
    )
    keys.add_argument("pattern", nargs="?", default="*", metavar="PATTERN")
    keys.add_argument("--limit", type=positive_int, default=None, help="print at most N keys")
    get = add_command(
        actions,
        common,
        "get",
        summary="show one cached result, decoded",
        description="Show what is cached under KEY: the task's return value (or its "
        "cached error), decoded. Exit code 1 when nothing is cached there.",
    )
    get.add_argument("key", metavar="KEY")
    invalidate = add_command(
        actions,
        common,
        "invalidate",
        summary="drop cached results: by key, task, tag or pattern",
        description="Drop cached results so that the next call of each runs the task "
        "again; prints how many. Give KEYs, or one of --task, --tag, --pattern. A run in "
        "flight for a dropped key stores nothing. Exit code 1 when nothing matched.",
        epilog="examples:\n"
        "  taskiq-flow cache invalidate 'myapp.tasks:add:44ba6cecdf21534c64a7ac261e2595b7'\n"
        "  taskiq-flow cache invalidate --task myapp.tasks:add\n"
        "  taskiq-flow cache invalidate --tag users --dry-run\n"
        "  taskiq-flow cache invalidate --pattern 'myapp.tasks:*'",
    )
    invalidate.add_argument("keys", nargs="*", metavar="KEY", help="exact keys")
    invalidate.add_argument(
        "--task", metavar="NAME", help="every result of this task (its name, not a pattern)"
    )
    invalidate.add_argument("--tag", metavar="TAG", help="every result whose call had this tag")
    invalidate.add_argument("--pattern", metavar="PATTERN", help="every key matching the glob")
    invalidate.add_argument(
        "--dry-run", action="store_true", help="list and count what would go; remove nothing"
    )


async def run(args: argparse.Namespace, config: TaskiqFlowConfig, out: TextIO) -> int:
    """Run the cache action ``args.action`` (one of :data:`ACTIONS`).

    Raises:
        CommandError: the cache is in-memory, a bad selector, or nothing found.
    """
    if config.resolved_cache_type == "inmemory":
        msg = (
            "the cache is in-memory: each worker holds its own, out of this command's "
            "reach. Point the CLI at your workers' Redis cache with "
            "TASKIQ_FLOW_CACHE_REDIS_URL (or --cache-redis-url)"
        )
        raise CommandError(msg, EXIT_USAGE)
    selector = _selector(args) if args.action == "invalidate" else None
    cache = StorageAdapterFactory.create_cache_adapter(config)
    try:
        if args.action == "keys":
            return await _keys(args, cache, out)
        if args.action == "get":
            return await _get(args, cache, out)
        assert selector is not None  # noqa: S101 - set above for this action
        return await _invalidate_entries(args, selector, cache, out)
    except CacheValueError as exc:  # a bad pattern, key or tag: the user's input
        raise CommandError(str(exc), EXIT_USAGE) from exc
    finally:
        await cache.close()


async def _keys(args: argparse.Namespace, cache: BaseCacheAdapter, out: TextIO) -> int:
    return await list_keys(
        args, cache.iter_keys(args.pattern), out, as_json=wants_json(args), what="cached key"
    )


async def _get(args: argparse.Namespace, cache: BaseCacheAdapter, out: TextIO) -> int:
    stored = await cache.get(args.key, _MISSING)
    if stored is _MISSING:
        raise CommandError(f"nothing cached under {args.key!r}", EXIT_NOT_FOUND)
    data = {"key": args.key, **_decoded(stored)}
    if wants_json(args):
        print_json(out, data)
        return EXIT_OK
    out.write(f"key    {args.key}\nkind   {data['kind']}\n")
    shown = data["error"] if data["kind"] == "error" else data["value"]
    out.write(("error\n" if data["kind"] == "error" else "value\n") + to_json(shown) + "\n")
    return EXIT_OK


def _decoded(stored: Any) -> dict[str, Any]:
    """A task's cached result as CacheMiddleware wrote it; anything else as it is."""
    try:
        cached = _codec.decode_payload(stored)
    except ValueError:
        return {"kind": "other", "value": stored}  # written by other code than the middleware
    if cached.error is not None:
        error = cached.error
        return {
            "kind": "error",
            "error": {"type": error.type_name, "message": error.message, "args": error.args},
        }
    return {"kind": "value", "value": cached.value}


def _selector(args: argparse.Namespace) -> tuple[str, Any]:
    """Which entries ``invalidate`` is about: exactly one of KEYs, --task, --tag, --pattern."""
    given = [
        (name, value)
        for name, value in (
            ("keys", args.keys),
            ("task", args.task),
            ("tag", args.tag),
            ("pattern", args.pattern),
        )
        if value not in (None, [])
    ]
    if len(given) != 1:
        msg = "cache invalidate takes KEYs, or one of --task, --tag, --pattern (exactly one)"
        raise CommandError(msg, EXIT_USAGE)
    return given[0]


async def _invalidate_entries(
    args: argparse.Namespace, selector: tuple[str, Any], cache: BaseCacheAdapter, out: TextIO
) -> int:
    kind, value = selector
    dry_run = bool(args.dry_run)
    doomed: list[str] = []
    if dry_run:
        doomed = sorted({key async for key in _matching(cache, kind, value)})
        count = len(doomed)
    elif kind == "keys":
        count = sum([await cache.invalidate(key) for key in value])
    elif kind == "task":
        count = await _invalidate.invalidate_task(cache, value)
    elif kind == "tag":
        count = await cache.invalidate_tag(value)
    else:
        count = await cache.delete_pattern(value)
    if wants_json(args):
        data: dict[str, Any] = {kind: value, "dry_run": dry_run, "count": count}
        if dry_run:
            data["keys"] = doomed
        print_json(out, data)
    else:
        out.writelines(f"{key}\n" for key in doomed)
        verb = "would remove" if dry_run else "removed"
        out.write(f"{verb} {count} cached result{'s' if count != 1 else ''}\n")
        if not count:
            sys.stderr.write(f"taskiq-flow: nothing cached matches {_described(kind, value)}\n")
    return EXIT_OK if count else EXIT_NOT_FOUND


async def _matching(cache: BaseCacheAdapter, kind: str, value: Any) -> AsyncIterator[str]:
    """The keys ``invalidate`` would remove now (a key may repeat)."""
    if kind == "keys":
        for key in value:
            if await cache.get(key, _MISSING) is not _MISSING:
                yield key
    elif kind == "task":
        async for key in _invalidate.task_keys(cache, value):
            yield key
    elif kind == "tag":
        async for key in cache.iter_tagged(value):
            yield key
    else:
        async for key in cache.iter_keys(value):
            yield key


def _described(kind: str, value: Any) -> str:
    if kind == "keys":
        return ", ".join(repr(key) for key in value)
    return f"--{kind} {value!r}"
