"""``StorageResultBackend``: taskiq's result backend over any taskiq-flow storage adapter.

The result of a task is its record: ``task:{task_id}`` holds the guide's record fields
plus ``result``, the exact return value or error as msgpack (the same payload format
as cached results, so no pickle anywhere). With ``StorageMiddleware`` on the same
adapter the middleware hands its record over in ``post_execute`` and this backend
writes it once, in ``set_result``. A pipeline step's record keeps the guide's key
``pipeline:{pipeline_id}:task:{task_id}``; ``task:{task_id}`` then holds only a
reference to it, written in the same round trip (``set_many``), so ``get_result`` finds
every task by its id (one more read for a pipeline step).

Progress is kept under ``progress:{task_id}`` with the result's TTL.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import msgspec
from taskiq import AsyncResultBackend, TaskiqResult
from taskiq.depends.progress_tracker import TaskProgress

from taskiq_flow.middlewares import _codec, _labels, _metrics
from taskiq_flow.middlewares._records import build_record, record_key
from taskiq_flow.middlewares._writer import RecordWriter
from taskiq_flow.middlewares.errors import (
    MiddlewareConfigError,
    ResultCorruptError,
    ResultMissingError,
    ResultNotSerializableError,
    StoredTaskError,
)
from taskiq_flow.middlewares.storage import check_storage_arguments, spool_location
from taskiq_flow.storage import (
    BaseStorageAdapter,
    StorageCorruptError,
    StorageError,
    StorageSerializationError,
)
from taskiq_flow.storage.kit.spool import DEFAULT_SPOOL_MAX_BYTES

__all__ = ["StorageResultBackend", "result_key"]

logger = logging.getLogger("taskiq_flow.middlewares")

_REF = "ref"
_RESULT = "result"


def result_key(task_id: str) -> str:
    """The key ``get_result(task_id)`` reads: ``task:{task_id}``."""
    return f"task:{task_id}"


def _progress_key(task_id: str) -> str:
    return f"progress:{task_id}"


class StorageResultBackend(AsyncResultBackend[Any]):
    """A taskiq result backend storing each result as its task record.

    ``broker.with_result_backend(StorageResultBackend(storage))``; add
    ``StorageMiddleware(storage=storage)`` with the same adapter and each task is one
    key, one write.

    Args:
        storage: any :class:`~taskiq_flow.storage.BaseStorageAdapter` (memory, Redis,
            SQLite). Shared with ``StorageMiddleware``/``StorageScheduleSource``; closed by
            ``shutdown()`` (every adapter reconnects if used again).
        ttl_seconds: how long results live; ``None`` = the adapter's default TTL.
        keep_results: ``False`` deletes a result once ``get_result`` has read it (as
            taskiq-redis does).
        buffer_size: results kept in memory for retry when the spool cannot take them
            (the caller's ``wait_result`` waits until the write lands).
        spool: keep results the store refuses in a local spool file before
            ``set_result`` returns (default ``True``; see ``StorageMiddleware``).
        spool_dir: the spool directory (default ``$TASKIQ_FLOW_STORAGE_SPOOL_DIR``, else
            ``./.taskiq-flow/spool``).
        spool_max_bytes: the bound of each process's spool file (default 256 MiB).
        metrics: export the storage metrics and span attributes (see
            ``StorageMiddleware``); ``False`` turns them off.

    Errors come back as the task's own exception type when that class is importable in
    the reading process (only modules already imported are looked up); otherwise as
    :class:`~taskiq_flow.middlewares.StoredTaskError` carrying the type name and message.
    ``get_result`` of an unknown id raises :class:`ResultMissingError` (a taskiq
    ``ResultGetError``), of undecodable bytes :class:`ResultCorruptError`.
    """

    def __init__(
        self,
        storage: BaseStorageAdapter,
        *,
        ttl_seconds: int | None = None,
        keep_results: bool = True,
        buffer_size: int = 10_000,
        spool: bool = True,
        spool_dir: str | os.PathLike[str] | None = None,
        spool_max_bytes: int = DEFAULT_SPOOL_MAX_BYTES,
        metrics: bool = True,
    ) -> None:
        if storage is None:
            raise MiddlewareConfigError(name="storage", expected="a BaseStorageAdapter", got="None")
        check_storage_arguments(storage, ttl_seconds)
        self.storage = storage
        self.ttl_seconds = ttl_seconds
        self.keep_results = bool(keep_results)
        self.writer = RecordWriter(
            storage,
            ttl_seconds=ttl_seconds,
            buffer_size=buffer_size,
            retry_interval=0.5,
            max_retry_interval=30.0,
            error_log_interval=60.0,
            spool_dir=spool_location(spool, spool_dir),
            spool_max_bytes=spool_max_bytes,
            metrics=_metrics.recorder() if metrics else None,
        )
        self.progress_dropped = 0
        """Progress updates not stored because the storage failed (see set_progress)."""
        # Records StorageMiddleware built in post_execute, waiting for set_result.
        self._attached: dict[str, dict[str, Any]] = {}

    def __repr__(self) -> str:
        return f"StorageResultBackend({self.storage!r}, ttl_seconds={self.ttl_seconds!r})"

    # -- one store with StorageMiddleware -------------------------------------------------

    def attach_record(self, task_id: str, record: dict[str, Any]) -> None:
        """Take ``StorageMiddleware``'s record of ``task_id``; ``set_result`` writes it.

        Called between ``post_execute`` and ``set_result`` of the same task, in the
        same worker.
        """
        self._attached[task_id] = record

    def share_writer(self, writer: RecordWriter) -> None:
        """Write through ``writer`` (the middleware's, over the same adapter): one buffer."""
        if writer.storage is self.storage and writer.ttl_seconds == self.ttl_seconds:
            self.writer = writer

    # -- taskiq's AsyncResultBackend -------------------------------------------------------

    async def startup(self) -> None:
        """Adopt spool files that stopped processes left for this store, and write them."""
        await self.writer.start()

    async def shutdown(self) -> None:
        """Write results still kept (in memory: up to 10 s; the spool stays on disk), close."""
        await self.writer.close(10.0)
        try:
            await self.storage.close()
        except StorageError:
            logger.warning("StorageResultBackend: closing the storage failed.", exc_info=True)

    async def set_result(self, task_id: str, result: TaskiqResult[Any]) -> None:
        """Store ``result`` as the record of ``task_id`` (one write; never raises).

        A storage outage buffers it: ``is_result_ready`` says ``False`` until the retry
        has written it. A value msgspec cannot encode is stored as an error result
        (:class:`ResultNotSerializableError` naming the type), so the caller learns why.
        """
        record = self._attached.pop(task_id, None)
        pipeline_id = result.labels.get(_labels.LABEL_PIPELINE_ID)
        pipeline_id = str(pipeline_id) if pipeline_id else None
        if record is None:
            cached = result.labels.get(_labels.LABEL_CACHE_HIT) == "true"
            record = build_record(None, task_id, result, pipeline_id=pipeline_id, cached=cached)
        record[_RESULT] = _payload(result)
        key = record_key(task_id, pipeline_id)
        extra = None if pipeline_id is None else {result_key(task_id): {_REF: key}}
        try:
            await self.writer.write(key, record, extra)
        except Exception:
            # A record the codec cannot store (a value escaped every check): the worker
            # must not die for it. Logged; the caller's wait_result keeps waiting.
            logger.exception("StorageResultBackend could not store the result of %s", task_id)

    async def is_result_ready(self, task_id: str) -> bool:
        """Whether the result of ``task_id`` is stored."""
        return await self.storage.exists(result_key(task_id))

    async def get_result(self, task_id: str, with_logs: bool = False) -> TaskiqResult[Any]:
        """The stored result of ``task_id`` (deleted after reading unless ``keep_results``).

        Raises:
            ResultMissingError: nothing is stored under that id (or it expired).
            ResultCorruptError: the stored bytes are not a result this package wrote.
        """
        key = result_key(task_id)
        try:
            record = await self.storage.get(key)
            if isinstance(record, dict) and isinstance(record.get(_REF), str):
                key = record[_REF]
                record = await self.storage.get(key)
        except (StorageCorruptError, StorageSerializationError) as exc:
            raise ResultCorruptError(task_id=task_id, reason=str(exc)) from exc
        if record is None:
            raise ResultMissingError(task_id=task_id)
        result = _from_record(task_id, record, with_logs=with_logs)
        if not self.keep_results:
            keys = [result_key(task_id), key] if key != result_key(task_id) else [key]
            await self.storage.delete_many(keys)
        return result

    async def set_progress(self, task_id: str, progress: TaskProgress[Any]) -> None:
        """Store the progress of a running task (``progress:{task_id}``); never raises.

        Progress is best effort: while the storage is unreachable (or the progress
        cannot be encoded) it is dropped with a rate-limited warning, so reporting
        progress never turns the task's own result into an error.
        """
        try:
            await self.storage.set(
                _progress_key(task_id), progress.model_dump(mode="json"), self.ttl_seconds
            )
        except StorageError as exc:
            self.progress_dropped += 1
            self.writer.log_failure(exc)

    async def get_progress(self, task_id: str) -> TaskProgress[Any] | None:
        """The last progress ``set_progress`` stored for ``task_id``, or ``None``."""
        stored = await self.storage.get(_progress_key(task_id))
        if stored is None:
            return None
        return TaskProgress[Any].model_validate(stored)


def _payload(result: TaskiqResult[Any]) -> bytes:
    """The exact value or error of ``result``, as the cache stores task results."""
    if result.is_err and isinstance(result.error, BaseException):
        return _codec.encode_error_payload(result.error)
    try:
        return _codec.encode_value_payload(result.return_value)
    except _codec.Unencodable as exc:
        stand_in = ResultNotSerializableError(
            value_type=type(result.return_value).__qualname__, reason=str(exc)
        )
        return _codec.encode_error_payload(stand_in)


def _from_record(task_id: str, record: Any, *, with_logs: bool) -> TaskiqResult[Any]:
    if not isinstance(record, dict):
        raise ResultCorruptError(task_id=task_id, reason="not a task record")
    try:
        labels = dict(record.get("labels") or {})
        execution_time = float(record.get("execution_time") or 0.0)
        payload = record.get(_RESULT)
        if payload is not None:
            stored = _codec.decode_payload(payload)
            error = (
                None
                if stored.error is None
                else _codec.rebuild_exception(stored.error, StoredTaskError)
            )
            value = stored.value
        else:
            # A record StorageMiddleware wrote without this backend: its JSON fields.
            error = _error_from_record(record)
            text = record.get("return_value")
            value = None if error is not None or text is None else json.loads(text)
    except (ValueError, TypeError, msgspec.MsgspecError) as exc:
        raise ResultCorruptError(task_id=task_id, reason=str(exc)) from exc
    return TaskiqResult(
        is_err=error is not None,
        return_value=value,
        execution_time=execution_time,
        labels=labels,
        error=error,
        log=record.get("log") if with_logs else None,
    )


def _error_from_record(record: dict[str, Any]) -> BaseException | None:
    if not record.get("is_err"):
        return None
    error = record.get("error") or {}
    return StoredTaskError(
        error_type=str(error.get("type", "unknown")),
        error_message=str(error.get("message", "")),
    )
