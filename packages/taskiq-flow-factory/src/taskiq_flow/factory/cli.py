"""The ``taskiq-flow`` command: run the demo, inspect the store and the cache.

Every subcommand reads the same configuration as ``StorageAdapterFactory``
(``TASKIQ_FLOW_*`` variables, overridden by flags), with one CLI default: when
neither a storage Redis URL nor a SQLite path is configured, storage is the SQLite
file ``./.taskiq-flow/store.sqlite3``, so that ``demo`` writes where ``storage``
reads.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

import msgspec

from taskiq_flow.config import CACHE_TYPES, STORAGE_TYPES, ConfigError, TaskiqFlowConfig, mask_url
from taskiq_flow.factory._progress import Progress
from taskiq_flow.factory.builder import StorageAdapterFactory

if TYPE_CHECKING:
    from taskiq_flow.storage import BaseStorageAdapter

__all__ = [
    "DEFAULT_SQLITE_PATH",
    "EXIT_BACKEND_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "build_parser",
    "main",
]

DEFAULT_SQLITE_PATH: Final = os.path.join(".taskiq-flow", "store.sqlite3")
EXIT_OK: Final = 0
EXIT_NOT_FOUND: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNREACHABLE: Final = 3
EXIT_BACKEND_ERROR: Final = 4
EXIT_INTERRUPTED: Final = 130

_EPILOG = f"""\
examples:
  taskiq-flow demo                        run the demo workload (no server needed)
  taskiq-flow storage keys 'task:*'       list the records the demo stored
  taskiq-flow storage get task:<id>       show one record
  taskiq-flow storage count               how many entries the store holds
  taskiq-flow storage cleanup --older-than 86400
                                          drop expired entries and those older than a day
  taskiq-flow cache stats --json          cache statistics, for scripts
  taskiq-flow config                      the settings in effect and where each came from

configuration:
  The TASKIQ_FLOW_* environment variables (see `taskiq-flow config`), overridden by the
  flags below. Storage defaults to the SQLite file {DEFAULT_SQLITE_PATH} when no
  TASKIQ_FLOW_STORAGE_REDIS_URL / TASKIQ_FLOW_STORAGE_SQLITE_PATH is set.
  Example: TASKIQ_FLOW_STORAGE_REDIS_URL=redis://localhost:6379/0 taskiq-flow storage count

exit codes:
  0  success
  1  not found: no such key, no key matched, or no store at the SQLite path yet
  2  usage or configuration error (bad flag, bad TASKIQ_FLOW_* value)
  3  backend unreachable (Redis down, SQLite file cannot be opened)
  4  other backend error (corrupt entry, unexpected server reply)
  130 interrupted (Ctrl-C)
"""


class _CommandError(Exception):
    def __init__(self, message: str, code: int) -> None:
        self.code = code
        super().__init__(message)


def _common_options() -> argparse.ArgumentParser:
    # SUPPRESS defaults: the options work before or after the subcommand without the
    # subparser's default overwriting a value given at the top level.
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("common options")
    group.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print one JSON document on stdout instead of text",
    )
    group.add_argument(
        "--storage-type",
        choices=STORAGE_TYPES,
        default=argparse.SUPPRESS,
        help="storage backend (env TASKIQ_FLOW_STORAGE_TYPE; default auto)",
    )
    group.add_argument(
        "--sqlite-path",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help=f"SQLite store: file, ':memory:' or sqlite:/// URL "
        f"(env TASKIQ_FLOW_STORAGE_SQLITE_PATH; default {DEFAULT_SQLITE_PATH})",
    )
    group.add_argument(
        "--storage-redis-url",
        metavar="URL",
        default=argparse.SUPPRESS,
        help="Redis URL for storage (env TASKIQ_FLOW_STORAGE_REDIS_URL)",
    )
    group.add_argument(
        "--cache-type",
        choices=CACHE_TYPES,
        default=argparse.SUPPRESS,
        help="cache backend (env TASKIQ_FLOW_CACHE_TYPE; default auto)",
    )
    group.add_argument(
        "--cache-redis-url",
        metavar="URL",
        default=argparse.SUPPRESS,
        help="Redis URL for the cache (env TASKIQ_FLOW_CACHE_REDIS_URL)",
    )
    group.add_argument(
        "--no-progress",
        action="store_true",
        default=argparse.SUPPRESS,
        help="never draw a progress bar (it is drawn only when stderr is a terminal)",
    )
    return common


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        msg = f"expected a whole number > 0, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0:
        msg = f"expected a number of seconds >= 0, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``taskiq-flow`` (exposed for documentation and tests)."""
    common = _common_options()
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="taskiq-flow",
        description="Persistence and caching for taskiq: run the demo workload, "
        "inspect stored task records and cache statistics.",
        epilog=_EPILOG,
        formatter_class=fmt,
        parents=[common],
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = commands.add_parser(
        "demo",
        parents=[common],
        formatter_class=fmt,
        help="run repeated tasks through a broker with CacheMiddleware and StorageMiddleware",
        description="Send TASKS calls of one task over DISTINCT inputs through an "
        "InMemoryBroker with CacheMiddleware and StorageMiddleware (built by "
        "StorageAdapterFactory from the configuration), then print how many executions "
        "the cache saved, the hit rate, the records stored and the time taken. Needs no "
        "server: the cache is in memory and records go to the SQLite store.",
        epilog="example:\n  taskiq-flow demo --tasks 1000 --distinct 50\n"
        "  taskiq-flow storage keys 'task:*'",
    )
    demo.add_argument("--tasks", type=_positive_int, default=200, help="task calls (200)")
    demo.add_argument(
        "--distinct", type=_positive_int, default=20, help="different inputs among them (20)"
    )
    demo.add_argument(
        "--concurrency",
        type=_positive_int,
        default=None,
        help="calls in flight at once (default: DISTINCT)",
    )
    demo.add_argument(
        "--work-ms",
        type=_non_negative_float,
        default=50.0,
        help="duration of one real execution of the task, in ms (50)",
    )

    storage = commands.add_parser(
        "storage",
        parents=[common],
        formatter_class=fmt,
        help="inspect or clean the store (keys, get, count, cleanup)",
        description="Inspect the store that StorageMiddleware writes to.",
        epilog="examples:\n  taskiq-flow storage keys 'task:*'\n"
        "  taskiq-flow storage get task:3f2a...\n  taskiq-flow storage count 'pipeline:*'\n"
        "  taskiq-flow storage cleanup --older-than 3600",
    )
    storage_cmds = storage.add_subparsers(dest="action", metavar="ACTION", required=True)
    keys = storage_cmds.add_parser(
        "keys",
        parents=[common],
        help="list keys matching a glob pattern (sorted)",
        description="List live keys matching PATTERN, a Redis-style glob "
        "(* ? [a-z] [^a] \\ escapes), one per line, sorted. Exit code 1 when none match.",
    )
    keys.add_argument("pattern", nargs="?", default="*", metavar="PATTERN")
    keys.add_argument("--limit", type=_positive_int, default=None, help="print at most N keys")
    get = storage_cmds.add_parser(
        "get",
        parents=[common],
        help="show one entry (value, created, expiry)",
        description="Show the entry stored under KEY. Exit code 1 when it is missing or expired.",
    )
    get.add_argument("key", metavar="KEY")
    count = storage_cmds.add_parser(
        "count",
        parents=[common],
        help="count keys matching a glob pattern",
        description="Count live keys matching PATTERN (default '*').",
    )
    count.add_argument("pattern", nargs="?", default="*", metavar="PATTERN")
    cleanup = storage_cmds.add_parser(
        "cleanup",
        parents=[common],
        help="remove expired entries (and old ones)",
        description="Remove expired entries now; with --older-than, also every entry "
        "created more than SECONDS ago, expired or not.",
    )
    cleanup.add_argument(
        "--older-than",
        type=_positive_int,
        default=None,
        metavar="SECONDS",
        help="also remove entries older than this many seconds",
    )

    cache = commands.add_parser(
        "cache",
        parents=[common],
        formatter_class=fmt,
        help="cache statistics",
        description="Show the statistics of the configured cache.",
        epilog="example:\n"
        "  TASKIQ_FLOW_CACHE_REDIS_URL=redis://cache:6379/1 taskiq-flow cache stats",
    )
    cache_cmds = cache.add_subparsers(dest="action", metavar="ACTION", required=True)
    cache_cmds.add_parser(
        "stats",
        parents=[common],
        help="hits, misses, hit rate and more",
        description="Print the cache's get_stats(): hits, misses, hit_rate and the rest.",
    )

    commands.add_parser(
        "config",
        parents=[common],
        help="show the settings in effect and where each came from",
        description="Print every setting, its value (passwords masked), its environment "
        "variable and whether it came from a flag, the environment or the default. "
        "Exit code 2 if a variable is invalid.",
    )
    return parser


def _cli_config(args: argparse.Namespace, environ: Mapping[str, str]) -> TaskiqFlowConfig:
    flags = {
        name: getattr(args, name)
        for name in ("storage_type", "storage_redis_url", "cache_type", "cache_redis_url")
        if hasattr(args, name)
    }
    if hasattr(args, "sqlite_path"):
        flags["storage_sqlite_path"] = args.sqlite_path
    config = TaskiqFlowConfig(**flags, environ=environ)
    if config.storage_sqlite_path is None and config.storage_type in {"auto", "sqlite"}:
        config = config.with_changes(storage_sqlite_path=DEFAULT_SQLITE_PATH)
    return config


def _sqlite_file(location: str) -> Path | None:
    """The file behind a SQLite location, or ``None`` for an in-memory database."""
    if location == ":memory:" or location.lower() == "sqlite:///:memory:":
        return None
    if location.lower().startswith("sqlite:///"):
        location = location[len("sqlite:///") :]
    return Path(location)


def _describe_storage(config: TaskiqFlowConfig) -> str:
    kind = config.resolved_storage_type
    if kind == "redis":
        return f"redis {mask_url(config.storage_redis_url or '')}"
    if kind == "sqlite":
        return f"sqlite {config.storage_sqlite_path}"
    return "in-memory (records vanish when the process exits)"


def _describe_cache(config: TaskiqFlowConfig) -> str:
    if config.resolved_cache_type == "redis":
        return f"redis {mask_url(config.cache_redis_url or '')}"
    return "in-memory"


def _to_json(data: Any) -> str:
    raw = msgspec.json.encode(data, enc_hook=repr)
    return msgspec.json.format(raw, indent=2).decode()


def _print_json(out: TextIO, data: Any) -> None:
    out.write(_to_json(data) + "\n")


def _progress(args: argparse.Namespace, label: str, total: int | None = None) -> Progress:
    enabled = not getattr(args, "json", False) and not getattr(args, "no_progress", False)
    return Progress(label, total, enabled=enabled)


def _existing_store(config: TaskiqFlowConfig) -> None:
    """Refuse to inspect a store that cannot hold anything, rather than create one."""
    kind = config.resolved_storage_type
    if kind == "inmemory":
        msg = (
            "storage is in-memory: nothing outlives a command. Point the CLI at the "
            "store your workers use with TASKIQ_FLOW_STORAGE_REDIS_URL or "
            "TASKIQ_FLOW_STORAGE_SQLITE_PATH (or --storage-redis-url / --sqlite-path)"
        )
        raise _CommandError(msg, EXIT_USAGE)
    if kind == "sqlite":
        path = _sqlite_file(config.storage_sqlite_path or "")
        if path is not None and not path.exists():
            msg = (
                f"no store at {path} yet: run `taskiq-flow demo` to create one, or point "
                "TASKIQ_FLOW_STORAGE_SQLITE_PATH / --sqlite-path at your store"
            )
            raise _CommandError(msg, EXIT_NOT_FOUND)


def _location_flags(args: argparse.Namespace) -> str:
    """The flags that pointed this command at its store, to repeat in a hint."""
    flags = ""
    for name, flag in (
        ("sqlite_path", "--sqlite-path"),
        ("storage_redis_url", "--storage-redis-url"),
    ):
        value = getattr(args, name, None)
        if value:
            shown = mask_url(value) if name == "storage_redis_url" else value
            flags += f" {flag} {shlex.quote(shown)}"
    return flags


async def _cmd_demo(args: argparse.Namespace, config: TaskiqFlowConfig, out: TextIO) -> int:
    from taskiq_flow.factory.demo import run_demo  # noqa: PLC0415  (pulls in taskiq)

    if args.distinct > args.tasks:
        msg = f"--distinct ({args.distinct}) cannot exceed --tasks ({args.tasks})"
        raise _CommandError(msg, EXIT_USAGE)
    if config.resolved_storage_type == "sqlite":
        path = _sqlite_file(config.storage_sqlite_path or "")
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
    as_json = getattr(args, "json", False)
    if not as_json:
        out.write(
            f"taskiq-flow demo: {args.tasks} tasks over {args.distinct} distinct inputs, "
            f"{args.work_ms:g} ms of work each, through InMemoryBroker\n"
            f"  cache   {_describe_cache(config)}\n"
            f"  storage {_describe_storage(config)}\n"
        )
        out.flush()
    progress = _progress(args, "running", args.tasks)
    report = await run_demo(
        config,
        tasks=args.tasks,
        distinct=args.distinct,
        concurrency=args.concurrency,
        work_seconds=args.work_ms / 1000,
        progress=progress,
    )
    if as_json:
        data = report.to_dict()
        data["storage"] = _describe_storage(config)
        _print_json(out, data)
    else:
        saved_share = report.saved_by_cache / report.tasks
        skipped = report.saved_by_cache * report.work_seconds
        lines = [
            ("executions run", f"{report.executions} of {report.tasks} tasks"),
            (
                "saved by the cache",
                f"{report.saved_by_cache} executions ({saved_share:.1%}), "
                f"{skipped:.1f} s of work skipped",
            ),
            (
                "cache hit rate",
                f"{report.hit_rate:.1%} ({report.lock_waits} of the hits waited for "
                "a running execution instead of starting their own)",
            ),
            (
                "records stored",
                f"{report.records_written} this run; {report.records_in_store} 'task:*' "
                "records in the store",
            ),
            ("results correct", f"{report.results_correct} of {report.tasks}"),
            (
                "pipeline run",
                f"{report.pipeline_id}: {report.pipeline_outputs.get('summary')!s} "
                f"({report.pipeline_steps_stored} step records)",
            ),
            ("time taken", f"{report.seconds:.2f} s"),
        ]
        for label, value in lines:
            out.write(f"{label:<20}{value}\n")
        if report.storage_backend != "inmemory":
            flags = _location_flags(args)
            out.write(f"\nnext: taskiq-flow storage keys 'task:*'{flags}\n")
            out.write(f"      taskiq-flow storage keys 'pipeline:{report.pipeline_id}:*'{flags}\n")
    return EXIT_OK if report.results_correct == report.tasks else EXIT_BACKEND_ERROR


async def _cmd_storage(args: argparse.Namespace, config: TaskiqFlowConfig, out: TextIO) -> int:
    _existing_store(config)
    storage = StorageAdapterFactory.create_storage_adapter(config)
    as_json = getattr(args, "json", False)
    try:
        if args.action == "keys":
            return await _storage_keys(args, storage, out, as_json=as_json)
        if args.action == "get":
            return await _storage_get(args, storage, out, as_json=as_json)
        if args.action == "count":
            progress = _progress(args, "counting")
            found = 0
            async for _key in storage.iter_keys(args.pattern):
                found += 1
                progress.advance()
            progress.close()
            if as_json:
                _print_json(out, {"pattern": args.pattern, "count": found})
            else:
                out.write(f"{found}\n")
            return EXIT_OK
        return await _storage_cleanup(args, storage, out, as_json=as_json)
    finally:
        await storage.close()


async def _storage_keys(
    args: argparse.Namespace, storage: BaseStorageAdapter, out: TextIO, *, as_json: bool
) -> int:
    progress = _progress(args, "listing")
    found: list[str] = []
    async for key in storage.iter_keys(args.pattern):
        found.append(key)
        progress.advance()
    progress.close()
    found.sort()
    shown = found[: args.limit] if args.limit else found
    if as_json:
        _print_json(
            out,
            {
                "pattern": args.pattern,
                "keys": shown,
                "count": len(found),
                "truncated": len(shown) < len(found),
            },
        )
    else:
        out.writelines(f"{key}\n" for key in shown)
        if len(shown) < len(found):
            sys.stderr.write(f"({len(found) - len(shown)} more; raise --limit)\n")
    return EXIT_OK if found else EXIT_NOT_FOUND


async def _storage_get(
    args: argparse.Namespace, storage: BaseStorageAdapter, out: TextIO, *, as_json: bool
) -> int:
    entry = await storage.get_entry(args.key)
    if entry is None:
        raise _CommandError(f"no entry under {args.key!r} (missing or expired)", EXIT_NOT_FOUND)
    remaining = entry.remaining_ttl()
    data = {
        "key": entry.key,
        "value": entry.value,
        "created_at": entry.created_at,
        "expires_at": entry.expires_at,
        "remaining_ttl": remaining,
    }
    if as_json:
        _print_json(out, data)
        return EXIT_OK
    expiry = "never" if remaining is None else f"in {remaining:.0f} s ({entry.expires_at})"
    out.write(f"key         {entry.key}\ncreated at  {entry.created_at}\nexpires     {expiry}\n")
    out.write("value\n" + _to_json(entry.value) + "\n")
    return EXIT_OK


async def _storage_cleanup(
    args: argparse.Namespace, storage: BaseStorageAdapter, out: TextIO, *, as_json: bool
) -> int:
    started = time.perf_counter()
    # One call: the backend removes in bulk (one DELETE in SQLite); the line only shows
    # that it is alive, then how many keys remain are counted with a live tally.
    async with _progress(args, "cleaning up").ticking():
        removed = await storage.cleanup(ttl_seconds=args.older_than)
    progress = _progress(args, "counting what remains")
    remaining = 0
    async for _key in storage.iter_keys("*"):
        remaining += 1
        progress.advance()
    progress.close()
    seconds = time.perf_counter() - started
    if as_json:
        _print_json(
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


async def _cmd_cache(args: argparse.Namespace, config: TaskiqFlowConfig, out: TextIO) -> int:
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
    if getattr(args, "json", False):
        _print_json(
            out,
            {"backend": _describe_cache(config), "reachable": True, "stats": stats, "note": note},
        )
        return EXIT_OK
    out.write(f"cache  {_describe_cache(config)} (reachable)\n")
    for key, value in stats.items():
        shown = f"{value:.1%}" if key == "hit_rate" and isinstance(value, float) else value
        out.write(f"{key:<14}{shown}\n")
    if note:
        sys.stderr.write(f"note: {note}\n")
    return EXIT_OK


async def _cmd_config(args: argparse.Namespace, config: TaskiqFlowConfig, out: TextIO) -> int:
    rows = []
    for item in TaskiqFlowConfig.settings():
        name = item["name"]
        value = config.to_dict()[name]
        source: str = config.source_of(name)
        if (
            name == "storage_sqlite_path"
            and value == DEFAULT_SQLITE_PATH
            and source != "environment"
        ):
            source = "cli default"
        rows.append({"name": name, "env_var": item["env_var"], "value": value, "source": source})
    resolved = {"storage": config.resolved_storage_type, "cache": config.resolved_cache_type}
    if getattr(args, "json", False):
        _print_json(out, {"settings": rows, "resolved": resolved})
        return EXIT_OK
    for row in rows:
        out.write(f"{row['env_var']:<34}{row['value']!s:<34}{row['source']}\n")
    out.write(f"\nstorage backend: {_describe_storage(config)}\n")
    out.write(f"cache backend:   {_describe_cache(config)}\n")
    return EXIT_OK


_COMMANDS: Final[
    dict[str, Callable[[argparse.Namespace, TaskiqFlowConfig, TextIO], Coroutine[Any, Any, int]]]
] = {
    "demo": _cmd_demo,
    "storage": _cmd_storage,
    "cache": _cmd_cache,
    "config": _cmd_config,
}


def _backend_exit_code(exc: BaseException) -> int | None:
    """Map a storage/cache error to an exit code; ``None`` if it is not one of ours."""
    from taskiq_flow.cache import CacheConnectionError, CacheError  # noqa: PLC0415
    from taskiq_flow.storage import StorageConnectionError, StorageError  # noqa: PLC0415

    if isinstance(exc, StorageConnectionError | CacheConnectionError):
        return EXIT_UNREACHABLE
    if isinstance(exc, StorageError | CacheError):
        return EXIT_BACKEND_ERROR
    return None


def main(argv: Sequence[str] | None = None, *, environ: Mapping[str, str] | None = None) -> int:
    """Run ``taskiq-flow`` with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    out = sys.stdout
    try:
        config = _cli_config(args, os.environ if environ is None else environ)
        return asyncio.run(_COMMANDS[args.command](args, config, out))
    except ConfigError as exc:
        sys.stderr.write(f"taskiq-flow: configuration error: {exc}\n")
        return EXIT_USAGE
    except _CommandError as exc:
        sys.stderr.write(f"taskiq-flow: {exc}\n")
        return exc.code
    except KeyboardInterrupt:
        sys.stderr.write("taskiq-flow: interrupted\n")
        return EXIT_INTERRUPTED
    except Exception as exc:
        code = _backend_exit_code(exc)
        if code is None:
            raise
        sys.stderr.write(f"taskiq-flow: {type(exc).__name__}: {exc}\n")
        return code


if __name__ == "__main__":
    raise SystemExit(main())
