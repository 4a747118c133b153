"""The stored record of one task execution: its key, its fields, its timestamps.

One shape for ``StorageMiddleware`` and ``StorageResultBackend``: the guide's six fields
first, unchanged (``task_id``, ``pipeline_id``, ``is_err``, ``return_value`` as JSON text,
``error``, ``execution_time``), then ``task_name``, ``started_at``, ``finished_at``,
``worker``, ``retries``, ``labels``, ``args``/``kwargs`` (JSON text, capped), and, when
the record is also the task's result, ``result`` (the exact value or error, msgpack).
"""

from __future__ import annotations

import os
import socket
import time
from datetime import UTC, datetime
from typing import Any

from taskiq import TaskiqMessage, TaskiqResult

from taskiq_flow.middlewares import _codec, _labels

__all__ = [
    "ARGS_LIMIT",
    "LABEL_STORE_ARGS",
    "build_record",
    "iso_utc",
    "record_key",
    "utc_now_iso",
    "worker_name",
]

ARGS_LIMIT = 4096
"""Bytes of JSON a record keeps for a call's ``args`` and ``kwargs`` together; past it
both are left out and ``args_omitted`` says why (records are for reading, not replay)."""

LABEL_STORE_ARGS = "store_args"
"""Label ``store_args="false"``: leave a call's arguments out of its record."""

_RETRIES_LABEL = "_retries"  # set by taskiq's SimpleRetryMiddleware / SmartRetryMiddleware
_PLAIN = (str, int, float, bool, type(None))


def record_key(task_id: str, pipeline_id: str | None = None) -> str:
    """The storage key of a task's record: ``pipeline:{pid}:task:{tid}`` or ``task:{tid}``."""
    if pipeline_id:
        return f"pipeline:{pipeline_id}:task:{task_id}"
    return f"task:{task_id}"


_second_text: tuple[int, str] = (-1, "")


def iso_utc(moment: float) -> str:
    """``moment`` (epoch seconds) as ISO 8601 UTC with microseconds.

    Formatting a datetime costs more than the rest of a record; the part up to the
    second is formatted once per second and reused.
    """
    global _second_text  # noqa: PLW0603 - a one-entry memo, replaced whole (no torn read)
    second, text = _second_text
    if int(moment) != second:
        second = int(moment)
        text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second_text = (second, text)
    return "%s.%06d+00:00" % (text, (moment - second) * 1_000_000)  # noqa: UP031 - twice as fast


def utc_now_iso() -> str:
    """The current UTC time as ISO 8601 with microseconds (``...T07:00:00.123456+00:00``)."""
    return iso_utc(time.time())


def _host_and_pid() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


_worker = _host_and_pid()


def _forked() -> None:
    global _worker  # noqa: PLW0603 - one string, replaced whole in the new process
    _worker = _host_and_pid()


os.register_at_fork(after_in_child=_forked)


def worker_name() -> str:
    """``host:pid`` of this process (recomputed in a forked child)."""
    return _worker


def _retries(value: Any) -> int:
    return int(value) if str(value).isdigit() else 0


def _arguments(message: TaskiqMessage, record: dict[str, Any]) -> None:
    if LABEL_STORE_ARGS in message.labels and not _labels.parse_bool(
        message, LABEL_STORE_ARGS, default=True
    ):
        record["args"] = record["kwargs"] = None
        record["args_omitted"] = "store_args=false"
        return
    try:
        args, kwargs = _codec.arguments_json(message.args, message.kwargs)
    except _codec.Unencodable as exc:
        record["args"] = record["kwargs"] = None
        record["args_omitted"] = f"not encodable as JSON: {exc}"
        return
    size = len(args) + len(kwargs)
    if size > ARGS_LIMIT:
        record["args"] = record["kwargs"] = None
        record["args_omitted"] = f"{size} bytes of JSON, over the {ARGS_LIMIT}-byte limit"
        return
    record["args"] = args
    record["kwargs"] = kwargs


def _plain(value: Any) -> Any:
    if type(value) is int and not -(2**63) <= value < 2**64:
        return repr(value)  # msgpack holds 64-bit integers only
    return value if type(value) in _PLAIN else repr(value)


def _plain_labels(labels: dict[str, Any]) -> dict[str, Any]:
    # Labels are the sender's: anything not plain JSON is kept as its repr.
    return {str(name): _plain(value) for name, value in labels.items()}


def build_record(
    message: TaskiqMessage | None,
    task_id: str,
    result: TaskiqResult[Any],
    *,
    pipeline_id: str | None,
    cached: bool,
) -> dict[str, Any]:
    """The stored record of one execution (see the module docstring).

    ``message`` is ``None`` when only the result is known (a result backend used
    without ``StorageMiddleware``): name, arguments and retries are then unknown.
    """
    error: dict[str, Any] | None = None
    return_value: str | None = None
    is_err = bool(result.is_err)
    if is_err and isinstance(result.error, BaseException):
        info = _codec.error_info(result.error)
        error = {"type": info.type_name, "message": info.message}
    else:
        try:
            return_value = _codec.to_json_text(result.return_value)
        except _codec.Unencodable as exc:
            # The task succeeded; only its record cannot hold the value. Say so.
            error = {
                "type": "taskiq_flow.ReturnValueNotSerializable",
                "message": f"return value of type {type(result.return_value).__qualname__} "
                f"cannot be stored as JSON: {exc}",
            }
    now = time.time()
    execution_time = float(result.execution_time)
    labels = result.labels if message is None else message.labels
    retries = labels.get(_RETRIES_LABEL, 0)
    if type(retries) is not int:
        retries = _retries(retries)
    record: dict[str, Any] = {
        "task_id": task_id,
        "pipeline_id": pipeline_id,
        "is_err": is_err,
        "return_value": return_value,
        "error": error,
        "execution_time": execution_time,
        "task_name": None if message is None else message.task_name,
        # The function's own run ended now and took execution_time: no per-task state.
        "started_at": iso_utc(now - execution_time),
        "finished_at": iso_utc(now),
        "worker": _worker,
        "retries": retries if retries >= 0 else 0,
        "labels": _plain_labels(labels) if labels else {},
    }
    if message is not None:
        _arguments(message, record)
    if cached:
        record["cached"] = True
    return record
