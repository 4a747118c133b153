"""Task records as the ``tasks`` command reads them: where they live, what they are.

A task's record is ``task:{id}``; a pipeline step's is ``pipeline:{pid}:task:{id}``,
and with ``StorageResultBackend`` ``task:{id}`` then holds only
``{"ref": "pipeline:{pid}:task:{id}"}`` (DESIGN.md §4, §8).
"""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from taskiq_flow.storage.glob import escape_glob

if TYPE_CHECKING:
    from taskiq_flow.storage import BaseStorageAdapter

__all__ = [
    "RECORD_PATTERNS",
    "FoundRecord",
    "find_record",
    "finished_at",
    "format_moment",
    "format_seconds",
    "is_record",
    "is_reference",
    "parse_duration",
    "status_of",
]

RECORD_PATTERNS: Final = ("task:*", "pipeline:*:task:*")
"""Where records live; ``task:*`` also matches the references, which are skipped."""

_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART: Final = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(text: str) -> float:
    """Argparse type: a duration (``30s``, ``10m``, ``2h``, ``1d``, ``1h30m``) in seconds.

    A bare number counts as seconds.

    Raises:
        argparse.ArgumentTypeError: ``text`` is not a duration greater than zero.
    """
    value = text.strip().lower()
    seconds = 0.0
    try:
        seconds = float(value)
    except ValueError:
        parts = _PART.findall(value)
        if parts and "".join(n + u for n, u in parts) == value:
            seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not 0 < seconds < float("inf"):
        msg = f"expected a duration like 30s, 10m, 2h, 1d or 1h30m, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return seconds


def is_reference(value: Any) -> bool:
    """Whether ``value`` is ``StorageResultBackend``'s pointer to a pipeline step record."""
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("ref"), str)


def is_record(value: Any) -> bool:
    """Whether ``value`` looks like a task record (a dict with ``task_id`` and ``is_err``)."""
    return isinstance(value, dict) and isinstance(value.get("task_id"), str) and "is_err" in value


def finished_at(record: dict[str, Any]) -> datetime | None:
    """The record's ``finished_at`` as an aware UTC datetime, ``None`` if it has none."""
    text = record.get("finished_at")
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def status_of(record: dict[str, Any]) -> str:
    """``"error"`` or ``"ok"``."""
    return "error" if record.get("is_err") else "ok"


def format_seconds(seconds: Any) -> str:
    """An execution time for people: ``52.1 ms`` or ``1.25 s``."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return "-"
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def format_moment(moment: datetime) -> str:
    """A UTC timestamp to the millisecond: ``2026-11-27 05:22:04.250``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


class FoundRecord:
    """A record looked up by task id, and how it was reached.

    Attributes:
        key: where the record lives.
        record: the record itself.
        by_task_key: whether ``task:{id}`` leads to it (directly or by reference), so
            that ``StorageResultBackend.get_result(id)`` reads the same record.
    """

    __slots__ = ("by_task_key", "key", "record")

    def __init__(self, key: str, record: dict[str, Any], *, by_task_key: bool) -> None:
        self.key = key
        self.record = record
        self.by_task_key = by_task_key


async def find_record(storage: BaseStorageAdapter, task_id: str) -> FoundRecord | None:
    """The record of ``task_id``: ``task:{id}``, its reference, or a pipeline step's key.

    A pipeline step recorded by ``StorageMiddleware`` alone has no ``task:{id}``; it is
    found by one scan of ``pipeline:*:task:{id}``. Returns ``None`` when no record has
    that id (a value there that is not a record counts as none).

    Raises:
        StorageError: the store cannot be read, or the entry is corrupt.
    """
    key = f"task:{task_id}"
    value = await storage.get(key)
    if is_reference(value):
        key = value["ref"]
        value = await storage.get(key)
    if is_record(value):
        return FoundRecord(key, value, by_task_key=True)
    # Read once the scan is over: at most a few keys match, and the scan ends cleanly.
    steps = [key async for key in storage.iter_keys(f"pipeline:*:task:{escape_glob(task_id)}")]
    for step_key in sorted(steps):
        value = await storage.get(step_key)
        if is_record(value):
            return FoundRecord(step_key, value, by_task_key=False)
    return None
