"""The ``taskiq-flow`` parser and entry point: parse, dispatch, map failures to exit codes."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Final

from taskiq_flow.config import ConfigError
from taskiq_flow.factory.builder import DEFAULT_SQLITE_PATH
from taskiq_flow.factory.cli import cache, config, demo, pipeline, schedules, storage, tasks
from taskiq_flow.factory.cli._common import (
    EXIT_BACKEND_ERROR,
    EXIT_INTERRUPTED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    Command,
    CommandError,
    cli_config,
    common_options,
)

__all__ = ["build_parser", "main"]

_EPILOG = f"""\
examples:
  taskiq-flow demo                        run the demo workload (no server needed)
  taskiq-flow storage keys 'task:*'       list the records the demo stored
  taskiq-flow storage get task:<id>       show one record
  taskiq-flow storage count               how many entries the store holds
  taskiq-flow tasks --status error --since 1h
                                          the last hour's failed tasks, newest first
  taskiq-flow tasks show <id>             one task's record and its result
  taskiq-flow schedules                   the schedules StorageScheduleSource stored
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
  1  not found: no such key or task id, nothing matched, or no store at the SQLite path yet
  2  usage or configuration error (bad flag, bad TASKIQ_FLOW_* value)
  3  backend unreachable (Redis down, SQLite file cannot be opened)
  4  other backend error (corrupt entry, unexpected server reply)
  130 interrupted (Ctrl-C)
"""

# Insertion order is the order `taskiq-flow --help` lists the commands in.
_COMMANDS: Final[dict[str, Command]] = {
    "demo": demo,
    "storage": storage,
    "tasks": tasks,
    "schedules": schedules,
    "pipeline": pipeline,
    "cache": cache,
    "config": config,
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``taskiq-flow`` (exposed for documentation and tests)."""
    common = common_options()
    parser = argparse.ArgumentParser(
        prog="taskiq-flow",
        description="Persistence and caching for taskiq: run the demo workload, "
        "inspect stored task records and cache statistics.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in _COMMANDS.values():
        command.add_parser(commands, common)
    return parser


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
        settings = cli_config(args, os.environ if environ is None else environ)
        return asyncio.run(_COMMANDS[args.command].run(args, settings, out))
    except ConfigError as exc:
        sys.stderr.write(f"taskiq-flow: configuration error: {exc}\n")
        return EXIT_USAGE
    except CommandError as exc:
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
