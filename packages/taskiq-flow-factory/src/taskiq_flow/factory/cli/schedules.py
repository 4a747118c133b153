"""``taskiq-flow schedules``: the schedules ``StorageScheduleSource`` keeps in the store.

Their stored form is fixed (DESIGN.md §8): key ``schedule:{schedule_id}``, value
taskiq's ``ScheduledTask.model_dump(mode="json")``. Each is read back with
``ScheduledTask.model_validate``, so what is listed is what the scheduler would load;
an entry that does not validate is reported on stderr and skipped.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any, Final, TextIO

import msgspec

from taskiq_flow.config import TaskiqFlowConfig
from taskiq_flow.factory.builder import StorageAdapterFactory
from taskiq_flow.factory.cli._common import (
    EXIT_NOT_FOUND,
    EXIT_OK,
    Subcommands,
    add_command,
    print_json,
    progress_line,
    require_existing_store,
    wants_json,
    write_table,
)
from taskiq_flow.factory.cli._scan import Corrupt, Warnings, scan_entries
from taskiq_flow.storage.glob import escape_glob

if TYPE_CHECKING:
    from taskiq import ScheduledTask

__all__ = ["DEFAULT_PREFIX", "add_parser", "describe_arguments", "describe_when", "run"]

DEFAULT_PREFIX: Final = "schedule:"
_ARGS_WIDTH: Final = 60


def add_parser(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    """Add the ``schedules`` command to ``commands``, with the ``common`` options."""
    schedules = add_command(
        commands,
        common,
        "schedules",
        summary="list the schedules StorageScheduleSource stored",
        description="List the schedules stored under PREFIX (taskiq ScheduledTask, as "
        "StorageScheduleSource writes them), sorted by schedule id. Exit code 1 when "
        "there is none.",
        epilog="examples:\n  taskiq-flow schedules\n  taskiq-flow schedules --json\n"
        "  taskiq-flow schedules --prefix myapp:schedule:",
    )
    schedules.add_argument(
        "--prefix",
        default=DEFAULT_PREFIX,
        help=f"key prefix of the schedules (default {DEFAULT_PREFIX!r})",
    )


async def run(args: argparse.Namespace, config: TaskiqFlowConfig, out: TextIO) -> int:
    """List the stored schedules.

    Raises:
        CommandError: the store is in-memory or not created yet.
    """
    from taskiq import ScheduledTask  # noqa: PLC0415  (pulls in taskiq)

    require_existing_store(config)
    storage = StorageAdapterFactory.create_storage_adapter(config)
    found: dict[str, ScheduledTask] = {}  # by key: a key SCAN yields twice is one schedule
    warnings = Warnings()
    try:
        pattern = escape_glob(args.prefix) + "*"
        tally = progress_line(args, "scanning")
        async for key, value in scan_entries(storage, [pattern], tally=tally):
            if isinstance(value, Corrupt):
                warnings.warn(f"skipping {key}: corrupt entry ({value.reason})")
                continue
            try:
                found[key] = ScheduledTask.model_validate(value)
            except (ValueError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
                reason = str(exc).splitlines()
                warnings.warn(f"skipping {key}: not a ScheduledTask ({' '.join(reason[:3])})")
    finally:
        await storage.close()
    warnings.close()
    schedules = sorted(found.items(), key=lambda item: (item[1].schedule_id, item[0]))
    if wants_json(args):
        items = [
            {"key": key, "when": describe_when(task), **task.model_dump(mode="json")}
            for key, task in schedules
        ]
        print_json(out, {"prefix": args.prefix, "schedules": items, "count": len(items)})
    elif schedules:
        _write_table(out, schedules)
    else:
        sys.stderr.write(f"no schedule under {args.prefix!r}\n")
    return EXIT_OK if schedules else EXIT_NOT_FOUND


def describe_when(task: ScheduledTask) -> str:
    """When a schedule fires, in one phrase: ``cron */5 * * * *``, ``every 300 s``, ``at ...``."""
    if task.cron is not None:
        offset = f" (offset {task.cron_offset})" if task.cron_offset is not None else ""
        return f"cron {task.cron}{offset}"
    # Older taskiq versions have no ``interval`` field.
    interval = getattr(task, "interval", None)
    if interval is not None:
        seconds = interval if isinstance(interval, int) else interval.total_seconds()
        return f"every {seconds:g} s"
    if task.time is not None:
        return f"at {task.time.isoformat()}"
    return "-"


def _compact(value: Any) -> str:
    return msgspec.json.encode(value, enc_hook=repr).decode()


def describe_arguments(task: ScheduledTask, width: int = _ARGS_WIDTH) -> str:
    """The call's arguments as written in Python, cut to ``width``: ``1, 2, mode="fast"``."""
    parts = [_compact(arg) for arg in task.args]
    parts += [f"{name}={_compact(value)}" for name, value in task.kwargs.items()]
    text = ", ".join(parts) or "-"
    return text if len(text) <= width else text[: width - 3] + "..."


def _write_table(out: TextIO, schedules: list[tuple[str, ScheduledTask]]) -> None:
    rows = [("SCHEDULE ID", "TASK NAME", "WHEN", "ARGUMENTS")]
    rows += [
        (task.schedule_id, task.task_name, describe_when(task), describe_arguments(task))
        for _, task in schedules
    ]
    write_table(out, rows)
