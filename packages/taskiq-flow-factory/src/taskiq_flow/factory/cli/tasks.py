"""``taskiq-flow tasks``: the task records of the store, newest first; ``tasks show ID``.

Where records live (DESIGN.md §4, §8): a task's record is ``task:{id}``; a pipeline
step's is ``pipeline:{pid}:task:{id}``, and with ``StorageResultBackend`` ``task:{id}``
then holds only ``{"ref": "pipeline:{pid}:task:{id}"}``. The listing reads records
where they live — ``task:*`` and ``pipeline:*:task:*`` — and skips references, whose
targets the second pattern reaches anyway: each record is read once, from its own key,
so none is listed twice and no reference costs a second read. Only the newest
``--limit`` records are kept (a heap), so memory is bounded whatever the store's size.
"""

from __future__ import annotations

import argparse
import fnmatch
import heapq
import json
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, TextIO

from taskiq_flow.config import TaskiqFlowConfig
from taskiq_flow.factory.builder import StorageAdapterFactory
from taskiq_flow.factory.cli._common import (
    EXIT_BACKEND_ERROR,
    EXIT_NOT_FOUND,
    EXIT_OK,
    CommandError,
    Subcommands,
    add_command,
    positive_int,
    print_json,
    progress_line,
    require_existing_store,
    to_json,
    wants_json,
    write_table,
)
from taskiq_flow.factory.cli._scan import Corrupt, Warnings, scan_entries
from taskiq_flow.factory.cli._task_records import (
    RECORD_PATTERNS,
    FoundRecord,
    find_record,
    finished_at,
    format_moment,
    format_seconds,
    is_record,
    is_reference,
    parse_duration,
    status_of,
)

if TYPE_CHECKING:
    from taskiq_flow.middlewares import StoredTaskError
    from taskiq_flow.storage import BaseStorageAdapter

__all__ = ["DEFAULT_LIMIT", "add_parser", "run"]

DEFAULT_LIMIT: Final = 20


def add_parser(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    """Add the ``tasks`` command and its ``show`` action to ``commands``, with ``common``."""
    tasks = add_command(
        commands,
        common,
        "tasks",
        summary="list task records, newest first (tasks show ID: one record and its result)",
        description="List the task records StorageMiddleware / StorageResultBackend wrote "
        "(task:* and pipeline:*:task:*), newest first by finished_at. Exit code 1 when "
        "none matches.",
        epilog="examples:\n  taskiq-flow tasks --status error --since 1h\n"
        "  taskiq-flow tasks --task 'myapp.*' --limit 50 --json\n"
        "  taskiq-flow tasks show 3f2a...",
    )
    tasks.add_argument(
        "--task", metavar="NAME", help="only this task name (shell-style wildcards allowed)"
    )
    tasks.add_argument("--status", choices=("ok", "error"), help="only successes or errors")
    tasks.add_argument(
        "--since",
        type=parse_duration,
        metavar="DURATION",
        help="only tasks finished within this long (30s, 10m, 2h, 1d, 1h30m)",
    )
    tasks.add_argument(
        "--limit",
        type=positive_int,
        default=DEFAULT_LIMIT,
        help=f"show at most N records, the newest (default {DEFAULT_LIMIT})",
    )
    actions = tasks.add_subparsers(dest="action", metavar="ACTION")
    show = add_command(
        actions,
        common,
        "show",
        summary="one record (every field) and its result",
        description="Print the record of TASK_ID, every field, and its result: the exact "
        "value or error StorageResultBackend stored, else the record's JSON fields. "
        "Exit code 1 when no record has that id.",
    )
    show.add_argument("task_id", metavar="TASK_ID")


async def run(args: argparse.Namespace, config: TaskiqFlowConfig, out: TextIO) -> int:
    """List the task records (or show one, for ``tasks show``).

    Raises:
        CommandError: the store is in-memory or not created yet, or the id is unknown.
    """
    require_existing_store(config)
    storage = StorageAdapterFactory.create_storage_adapter(config)
    try:
        if getattr(args, "action", None) == "show":
            return await _show_task(storage, args.task_id, out, as_json=wants_json(args))
        return await _list_tasks(args, storage, out)
    finally:
        await storage.close()


class _Newest:
    """The newest ``limit`` records seen so far: a min-heap on (finished_at, task_id)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.heap: list[tuple[datetime, str, str, dict[str, Any]]] = []
        self.ids: set[str] = set()  # those in the heap: a key SCAN yields twice is one record
        self.matched = 0

    def offer(self, moment: datetime, key: str, record: dict[str, Any]) -> None:
        task_id = record["task_id"]
        if task_id in self.ids:
            return
        self.matched += 1
        item = (moment, task_id, key, record)
        if len(self.heap) < self.limit:
            heapq.heappush(self.heap, item)
            self.ids.add(task_id)
        elif item[:2] > self.heap[0][:2]:
            dropped = heapq.heapreplace(self.heap, item)
            self.ids.discard(dropped[1])
            self.ids.add(task_id)

    def newest_first(self) -> list[tuple[datetime, str, str, dict[str, Any]]]:
        return sorted(self.heap, key=lambda item: item[:2], reverse=True)


def _matches(
    args: argparse.Namespace, record: dict[str, Any], moment: datetime, cutoff: datetime | None
) -> bool:
    if cutoff is not None and moment < cutoff:
        return False
    if args.status is not None and bool(record.get("is_err")) != (args.status == "error"):
        return False
    if args.task is not None:
        name = record.get("task_name")
        if not isinstance(name, str) or not fnmatch.fnmatchcase(name, args.task):
            return False
    return True


async def _list_tasks(args: argparse.Namespace, storage: BaseStorageAdapter, out: TextIO) -> int:
    cutoff = None if args.since is None else datetime.now(UTC) - timedelta(seconds=args.since)
    newest = _Newest(args.limit)
    warnings = Warnings()
    tally = progress_line(args, "scanning")
    async for key, value in scan_entries(storage, RECORD_PATTERNS, tally=tally):
        if isinstance(value, Corrupt):
            warnings.warn(f"skipping {key}: corrupt entry ({value.reason})")
            continue
        if is_reference(value) or not is_record(value):
            continue  # a reference's target is scanned itself; other values are not records
        moment = finished_at(value)
        if moment is None:
            warnings.warn(f"skipping {key}: a task record without a valid finished_at")
            continue
        if _matches(args, value, moment, cutoff):
            newest.offer(moment, key, value)
    warnings.close()
    shown = newest.newest_first()
    if wants_json(args):
        print_json(
            out,
            {
                "tasks": [_json_item(key, record) for _, _, key, record in shown],
                "count": len(shown),
                "matched": newest.matched,
                "truncated": newest.matched > len(shown),
                "filters": {"task": args.task, "status": args.status, "since": args.since},
                "limit": args.limit,
            },
        )
    elif shown:
        _write_table(out, [record for _, _, _, record in shown])
        if newest.matched > len(shown):
            sys.stderr.write(f"({newest.matched - len(shown)} older matched; raise --limit)\n")
    else:
        sys.stderr.write("no task record matched\n")
    return EXIT_OK if shown else EXIT_NOT_FOUND


def _json_item(key: str, record: dict[str, Any]) -> dict[str, Any]:
    # The exact result is msgpack bytes: `tasks show` decodes it; a listing leaves it out.
    fields = {name: value for name, value in record.items() if name != "result"}
    return {"key": key, "status": status_of(record), **fields}


def _write_table(out: TextIO, records: list[dict[str, Any]]) -> None:
    rows = [("TASK ID", "TASK NAME", "STATUS", "FINISHED AT (UTC)", "TIME")]
    for record in records:
        moment = finished_at(record)
        rows.append(
            (
                record["task_id"],
                str(record.get("task_name") or "-"),
                status_of(record) + (" (cached)" if record.get("cached") else ""),
                "-" if moment is None else format_moment(moment),
                format_seconds(record.get("execution_time")),
            )
        )
    write_table(out, rows)


# -- tasks show ------------------------------------------------------------------------


async def _show_task(
    storage: BaseStorageAdapter, task_id: str, out: TextIO, *, as_json: bool
) -> int:
    found = await find_record(storage, task_id)
    if found is None:
        msg = f"no task record with id {task_id!r} (missing or expired)"
        raise CommandError(msg, EXIT_NOT_FOUND)
    result, problem = await _result_of(storage, task_id, found)
    fields = {name: value for name, value in found.record.items() if name != "result"}
    if as_json:
        print_json(
            out,
            {
                "key": found.key,
                "status": status_of(found.record),
                "record": fields,
                "result": result,
                "problem": problem,
            },
        )
    else:
        out.write(f"{'key':<16}{found.key}\n")
        out.write(f"{'status':<16}{status_of(found.record)}\n")
        for name, value in fields.items():
            out.write(f"{name:<16}{_shown(value)}\n")
        if result is not None:
            _write_result(out, result)
    if problem is not None:
        sys.stderr.write(f"taskiq-flow: {problem}\n")
        return EXIT_BACKEND_ERROR
    return EXIT_OK


async def _result_of(
    storage: BaseStorageAdapter, task_id: str, found: FoundRecord
) -> tuple[dict[str, Any] | None, str | None]:
    """The result as shown (source, is_err, return_value, error), or why it cannot be."""
    record = found.record
    if found.by_task_key and "result" in record:
        # The exact value or error, decoded by the backend that wrote it.
        from taskiq_flow.middlewares import (  # noqa: PLC0415  (pulls in taskiq)
            ResultCorruptError,
            ResultMissingError,
            StorageResultBackend,
            StoredTaskError,
        )

        try:
            result = await StorageResultBackend(storage).get_result(task_id)
        except ResultCorruptError as exc:
            return None, f"the stored result cannot be decoded: {exc}"
        except ResultMissingError:
            pass  # expired since the record was read: its JSON fields below
        else:
            return {
                "source": "result",
                "is_err": result.is_err,
                "return_value": None if result.is_err else result.return_value,
                "error": _describe_error(result.error, StoredTaskError),
            }, None
    is_err = bool(record.get("is_err"))
    text = record.get("return_value")
    try:
        value = json.loads(text) if isinstance(text, str) and not is_err else None
    except ValueError:
        return None, f"the return_value of {found.key} is not JSON"
    return {
        "source": "record",
        "is_err": is_err,
        "return_value": value,
        "error": record.get("error") if is_err else None,
    }, None


def _describe_error(
    error: BaseException | None, stand_in: type[StoredTaskError]
) -> dict[str, str] | None:
    if error is None:
        return None
    if isinstance(error, stand_in):
        # A class not importable here comes back as this stand-in, naming the original.
        return {"type": error.error_type, "message": error.error_message}
    cls = type(error)
    return {"type": f"{cls.__module__}.{cls.__qualname__}", "message": str(error)}


def _shown(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return to_json(value, indent=0)


def _write_result(out: TextIO, result: dict[str, Any]) -> None:
    source = (
        "StorageResultBackend (the exact value)"
        if result["source"] == "result"
        else "the record's JSON fields"
    )
    out.write(f"{'result from':<16}{source}\n")
    if result["is_err"]:
        error = result["error"] or {}
        out.write(f"{'result':<16}error {error.get('type')}: {error.get('message')}\n")
        return
    text = to_json(result["return_value"])
    out.write(f"{'result':<16}" + ("\n" if "\n" in text else "") + text + "\n")
