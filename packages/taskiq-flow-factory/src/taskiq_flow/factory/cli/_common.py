"""What every ``taskiq-flow`` command shares: exit codes, options, configuration, output."""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, TextIO, TypeAlias

import msgspec

from taskiq_flow.config import CACHE_TYPES, STORAGE_TYPES, TaskiqFlowConfig, mask_url
from taskiq_flow.factory._progress import Progress
from taskiq_flow.factory.builder import DEFAULT_SQLITE_PATH

if TYPE_CHECKING:
    from taskiq_flow.storage import BaseStorageAdapter

EXIT_OK: Final = 0
EXIT_NOT_FOUND: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNREACHABLE: Final = 3
EXIT_BACKEND_ERROR: Final = 4
EXIT_INTERRUPTED: Final = 130

if TYPE_CHECKING:
    Subcommands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    # The class is private and not subscriptable at run time; only mypy needs the detail.
    Subcommands: TypeAlias = argparse._SubParsersAction


class Command(Protocol):
    """What a command module provides (``demo``, ``storage``, ``tasks``, ``config``, ...)."""

    def add_parser(self, commands: Subcommands, common: argparse.ArgumentParser) -> None:
        """Add the command's parser to ``commands``, with the ``common`` options."""

    async def run(self, args: argparse.Namespace, config: TaskiqFlowConfig, out: TextIO) -> int:
        """Carry out the command, writing to ``out``; return the exit code."""


class CommandError(Exception):
    """A failure a command reports as one stderr line and an exit code, no traceback.

    Args:
        message: the line printed after ``taskiq-flow: ``.
        code: the process's exit code.
    """

    def __init__(self, message: str, code: int) -> None:
        self.code = code
        super().__init__(message)


# One table, not one add_argument call each: the options differ only in these keywords.
_COMMON_OPTIONS: Final[tuple[tuple[str, dict[str, Any]], ...]] = (
    (
        "--json",
        {"action": "store_true", "help": "print one JSON document on stdout instead of text"},
    ),
    (
        "--storage-type",
        {
            "choices": (*STORAGE_TYPES, "memory"),
            "help": "storage backend (env TASKIQ_FLOW_STORAGE_TYPE; default auto)",
        },
    ),
    (
        "--sqlite-path",
        {
            "metavar": "PATH",
            "help": f"SQLite store: file, ':memory:' or sqlite:/// URL "
            f"(env TASKIQ_FLOW_STORAGE_SQLITE_PATH; default {DEFAULT_SQLITE_PATH})",
        },
    ),
    (
        "--storage-redis-url",
        {"metavar": "URL", "help": "Redis URL for storage (env TASKIQ_FLOW_STORAGE_REDIS_URL)"},
    ),
    (
        "--cache-type",
        {
            "choices": (*CACHE_TYPES, "memory"),
            "help": "cache backend (env TASKIQ_FLOW_CACHE_TYPE; default auto)",
        },
    ),
    (
        "--cache-redis-url",
        {"metavar": "URL", "help": "Redis URL for the cache (env TASKIQ_FLOW_CACHE_REDIS_URL)"},
    ),
    (
        "--no-progress",
        {
            "action": "store_true",
            "help": "never draw a progress bar (it is drawn only when stderr is a terminal)",
        },
    ),
)


def common_options() -> argparse.ArgumentParser:
    """A parent parser holding the options that every command and subcommand accepts."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("common options")
    for flag, options in _COMMON_OPTIONS:
        # SUPPRESS: the options work before or after the subcommand without the
        # subparser's default overwriting a value given at the top level.
        group.add_argument(flag, default=argparse.SUPPRESS, **options)
    return common


def add_command(
    commands: Subcommands,
    common: argparse.ArgumentParser,
    name: str,
    *,
    summary: str,
    description: str,
    epilog: str | None = None,
) -> argparse.ArgumentParser:
    """Add the command (or action) ``name`` to ``commands``, taking the ``common`` options.

    Args:
        commands: where to add it: the top-level commands or a command's actions.
        common: the parent parser from ``common_options()``.
        name: the word on the command line.
        summary: the line shown in the parent's list of commands.
        description: the text that opens the command's ``--help``.
        epilog: examples closing its ``--help``.

    Returns:
        The command's parser, to add its own arguments to.
    """
    # An epilog is laid out by hand (examples, aligned columns): print it as written.
    formatter = argparse.RawDescriptionHelpFormatter if epilog else argparse.HelpFormatter
    return commands.add_parser(
        name,
        parents=[common],
        formatter_class=formatter,
        help=summary,
        description=description,
        epilog=epilog,
    )


def positive_int(text: str) -> int:
    """Argparse type: a whole number greater than zero.

    Raises:
        argparse.ArgumentTypeError: ``text`` is not one.
    """
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        msg = f"expected a whole number > 0, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def cli_config(args: argparse.Namespace, environ: Mapping[str, str]) -> TaskiqFlowConfig:
    """The configuration from ``environ`` and the flags, with the CLI's SQLite default.

    Raises:
        ConfigError: a variable or flag value is invalid.
    """
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


def sqlite_store_file(config: TaskiqFlowConfig) -> Path | None:
    """The file the SQLite store lives in; ``None`` if storage is not a SQLite file."""
    if config.resolved_storage_type != "sqlite":
        return None
    location = config.storage_sqlite_path or ""
    if location == ":memory:" or location.lower() == "sqlite:///:memory:":
        return None
    if location.lower().startswith("sqlite:///"):
        location = location[len("sqlite:///") :]
    return Path(location)


def require_existing_store(config: TaskiqFlowConfig) -> None:
    """Refuse to inspect a store that cannot hold anything, rather than create one.

    Raises:
        CommandError: storage is in-memory (exit 2), or no SQLite file exists yet (exit 1).
    """
    if config.resolved_storage_type == "inmemory":
        msg = (
            "storage is in-memory: nothing outlives a command. Point the CLI at the "
            "store your workers use with TASKIQ_FLOW_STORAGE_REDIS_URL or "
            "TASKIQ_FLOW_STORAGE_SQLITE_PATH (or --storage-redis-url / --sqlite-path)"
        )
        raise CommandError(msg, EXIT_USAGE)
    path = sqlite_store_file(config)
    if path is not None and not path.exists():
        msg = (
            f"no store at {path} yet: run `taskiq-flow demo` to create one, or point "
            "TASKIQ_FLOW_STORAGE_SQLITE_PATH / --sqlite-path at your store"
        )
        raise CommandError(msg, EXIT_NOT_FOUND)


def describe_storage(config: TaskiqFlowConfig) -> str:
    """The storage backend in one phrase, passwords masked."""
    kind = config.resolved_storage_type
    if kind == "redis":
        return f"redis {mask_url(config.storage_redis_url or '')}"
    if kind == "sqlite":
        return f"sqlite {config.storage_sqlite_path}"
    return "in-memory (records vanish when the process exits)"


def describe_cache(config: TaskiqFlowConfig) -> str:
    """The cache backend in one phrase, passwords masked."""
    if config.resolved_cache_type == "redis":
        return f"redis {mask_url(config.cache_redis_url or '')}"
    return "in-memory"


def wants_json(args: argparse.Namespace) -> bool:
    """Whether ``--json`` was given, before or after the subcommand."""
    return bool(getattr(args, "json", False))


def to_json(data: Any, *, indent: int = 2) -> str:
    """``data`` as JSON (``indent=0``: one line); what JSON cannot hold is shown by its ``repr``."""
    raw = msgspec.json.encode(data, enc_hook=repr)
    return msgspec.json.format(raw, indent=indent).decode()


def print_json(out: TextIO, data: Any) -> None:
    """Write ``data`` to ``out`` as one JSON document and a newline."""
    out.write(to_json(data) + "\n")


def write_table(out: TextIO, rows: Sequence[Sequence[str]]) -> None:
    """Write ``rows`` (the first is the header) as columns two spaces apart.

    Every column but the last is padded to its widest cell; the last is not, so that
    no line ends in blanks.
    """
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        out.write("  ".join([*cells, row[-1]]) + "\n")


def progress_line(args: argparse.Namespace, label: str, total: int | None = None) -> Progress:
    """A progress line on stderr, off under ``--json`` and ``--no-progress``."""
    enabled = not wants_json(args) and not getattr(args, "no_progress", False)
    return Progress(label, total, enabled=enabled)


async def count_keys(storage: BaseStorageAdapter, pattern: str, tally: Progress) -> int:
    """How many live keys match ``pattern``, advancing ``tally`` for each one."""
    found = 0
    async for _key in storage.iter_keys(pattern):
        found += 1
        tally.advance()
    tally.close()
    return found


async def list_keys(
    args: argparse.Namespace, keys: AsyncIterator[str], out: TextIO, *, as_json: bool, what: str
) -> int:
    """Print the keys ``keys`` yields (sorted, at most ``--limit``), for ``... keys``.

    ``what`` names them in the "nothing matched" sentence (``"key"``, ``"cached key"``).
    Exit code ``EXIT_NOT_FOUND`` when nothing matched, for scripts; a person also gets a
    sentence on stderr.
    """
    tally = progress_line(args, "listing")
    found: set[str] = set()
    async for key in keys:
        found.add(key)  # SCAN may yield a key twice
        tally.advance()
    tally.close()
    ordered = sorted(found)
    shown = ordered[: args.limit] if args.limit else ordered
    if as_json:
        print_json(
            out,
            {
                "pattern": args.pattern,
                "keys": shown,
                "count": len(ordered),
                "truncated": len(shown) < len(ordered),
            },
        )
    else:
        out.writelines(f"{key}\n" for key in shown)
        if len(shown) < len(ordered):
            sys.stderr.write(f"({len(ordered) - len(shown)} more; raise --limit)\n")
        elif not ordered:
            sys.stderr.write(f"taskiq-flow: no {what} matches {args.pattern!r}\n")
    return EXIT_OK if ordered else EXIT_NOT_FOUND
