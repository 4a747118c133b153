"""StorageMiddleware: one record per task execution, in any storage adapter.

A record is written in ``post_execute``, i.e. before taskiq saves the result: whoever
sees a result can read its record (DESIGN.md §4 says "after each result is saved";
``docs/middlewares.md`` explains why we write just before instead).

A storage failure never reaches the worker: the record goes into a bounded in-memory
buffer that a background task retries with exponential backoff and flushes on
shutdown; errors are logged once per interval, not once per task.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import numbers
import time
from datetime import UTC, datetime
from typing import Any

from taskiq import TaskiqMessage, TaskiqMiddleware, TaskiqResult
from taskiq.exceptions import NoResultError

from taskiq_flow.middlewares import _codec, _labels
from taskiq_flow.middlewares._wrapping import answered_from_cache
from taskiq_flow.middlewares.errors import MiddlewareConfigError, MiddlewareConfigTypeError
from taskiq_flow.storage import BaseStorageAdapter, InMemoryStorageAdapter, StorageError

__all__ = ["StorageMiddleware", "record_key"]

logger = logging.getLogger("taskiq_flow.middlewares")

_FLUSH_BATCH = 500


def check_storage_arguments(storage: object, ttl_seconds: object) -> None:
    """The constructor checks shared by StorageMiddleware and PipelineMiddleware.

    Raises:
        MiddlewareConfigTypeError: ``storage`` is neither ``None`` nor a
            ``BaseStorageAdapter`` (a ``TypeError``).
        MiddlewareConfigError: ``ttl_seconds`` is neither ``None`` nor a whole number > 0
            (a ``ValueError``).
    """
    if storage is not None and not isinstance(storage, BaseStorageAdapter):
        raise MiddlewareConfigTypeError(
            name="storage", expected="a BaseStorageAdapter", got=type(storage).__qualname__
        )
    if ttl_seconds is not None and (
        isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int) or ttl_seconds <= 0
    ):
        raise MiddlewareConfigError(
            name="ttl_seconds",
            expected="a whole number of seconds > 0 or None",
            got=repr(ttl_seconds),
        )


def check_number(name: str, value: object) -> None:
    """Raise :class:`MiddlewareConfigTypeError` unless ``value`` is a real number.

    For size options that were only ever compared or clamped, so any real number
    (``1e4`` too) keeps working; a string or ``None`` is refused up front instead of
    failing as a bare ``TypeError`` mid-comparison.
    """
    if not isinstance(value, numbers.Real):
        raise MiddlewareConfigTypeError(
            name=name, expected="a number", got=type(value).__qualname__
        )


def record_key(task_id: str, pipeline_id: str | None = None) -> str:
    """The storage key of a task's record: ``pipeline:{pid}:task:{tid}`` or ``task:{tid}``."""
    if pipeline_id:
        return f"pipeline:{pipeline_id}:task:{task_id}"
    return f"task:{task_id}"


class StorageMiddleware(TaskiqMiddleware):
    """Store every task result as a record in a storage adapter.

    Args:
        storage: the adapter; ``None`` means a new :class:`InMemoryStorageAdapter`.
        enabled: ``False`` turns the middleware into a no-op.
        ttl_seconds: how long records live; ``None`` = the adapter's default TTL.
        store_cache_hits: also store a record when the result came from the cache
            (pipeline steps always are, flagged ``"cached": true``).
        buffer_size: records kept for retry while the storage is unreachable; past it
            the oldest are dropped (counted in ``records_dropped`` and logged).
        retry_interval: first delay before retrying buffered records (doubles on each
            failure up to ``max_retry_interval``).
        max_retry_interval: the longest delay between retries.
        error_log_interval: at most one error log per this many seconds.
        shutdown_flush_timeout: how long ``shutdown`` keeps trying to flush the buffer.

    Raises:
        MiddlewareConfigError: a bad ``ttl_seconds`` or ``buffer_size`` (a ``ValueError``).
        MiddlewareConfigTypeError: ``storage`` is not a ``BaseStorageAdapter``, or
            ``buffer_size`` not a number (a ``TypeError``).
    """

    def __init__(
        self,
        storage: BaseStorageAdapter | None = None,
        enabled: bool = True,
        ttl_seconds: int | None = None,
        *,
        store_cache_hits: bool = False,
        buffer_size: int = 10_000,
        retry_interval: float = 0.5,
        max_retry_interval: float = 30.0,
        error_log_interval: float = 60.0,
        shutdown_flush_timeout: float = 10.0,
    ) -> None:
        super().__init__()
        check_storage_arguments(storage, ttl_seconds)
        check_number("buffer_size", buffer_size)
        if buffer_size < 1:
            raise MiddlewareConfigError(name="buffer_size", expected=">= 1", got=repr(buffer_size))
        self.storage: BaseStorageAdapter = (
            storage if storage is not None else InMemoryStorageAdapter()
        )
        self.enabled = enabled
        self.ttl_seconds = ttl_seconds
        self.store_cache_hits = store_cache_hits
        self.retry_interval = retry_interval
        self.max_retry_interval = max_retry_interval
        self.error_log_interval = error_log_interval
        self.shutdown_flush_timeout = shutdown_flush_timeout
        self._buffer: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self._buffer_size = buffer_size
        self._flusher: asyncio.Task[None] | None = None
        self._last_error_log = float("-inf")
        self._errors_since_log = 0
        self._counters = {
            "records_written": 0,
            "write_failures": 0,
            "records_retried": 0,
            "records_dropped": 0,
        }

    # -- taskiq hooks --------------------------------------------------------------------

    async def post_execute(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> None:
        """Write the record of this execution (never raises)."""
        if not self.enabled:
            return
        try:
            if result.is_err and isinstance(result.error, NoResultError):
                return  # a retry will run it again; the final attempt gets the record
            pipeline_id = message.labels.get(_labels.LABEL_PIPELINE_ID)
            if pipeline_id is not None:
                pipeline_id = str(pipeline_id) or None
            cached = answered_from_cache(message)
            if cached:
                # Also when a middleware between the two copied the message: the
                # cache marked the labels of the message it saw.
                result.labels[_labels.LABEL_CACHE_HIT] = "true"
            elif _labels.LABEL_CACHE_HIT in result.labels:
                # Set by the sender, not by a cache: the result must not claim a hit.
                del result.labels[_labels.LABEL_CACHE_HIT]
            if cached and pipeline_id is None and not self.store_cache_hits:
                return
            key = record_key(message.task_id, pipeline_id)
            record = build_record(message, result, pipeline_id=pipeline_id, cached=cached)
            if self._buffer:
                # Storage is known to be failing: keep order, let the flusher retry.
                self._enqueue(key, record)
                return
            try:
                await self.storage.set(key, record, self.ttl_seconds)
            except StorageError as exc:
                self._counters["write_failures"] += 1
                self._log_failure(exc)
                self._enqueue(key, record)
            else:
                self._counters["records_written"] += 1
        except Exception:
            # Whatever went wrong, the task's own result must be saved: log and go on.
            logger.exception("StorageMiddleware could not record task %s", message.task_id)

    async def shutdown(self) -> None:
        """Flush buffered records (bounded by ``shutdown_flush_timeout``), then close the store.

        Closing releases connections and threads (an open SQLite connection would keep
        the worker process from exiting); every adapter reconnects on its next use, so
        a store shared with code that runs later keeps working.
        """
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        deadline = time.monotonic() + self.shutdown_flush_timeout
        delay = 0.05
        while self._buffer and time.monotonic() < deadline:
            if await self._flush_once():
                break
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 1.0)
        if self._buffer:
            logger.error(
                "StorageMiddleware shut down with %d record(s) not written: storage unreachable.",
                len(self._buffer),
            )
        try:
            await self.storage.close()
        except StorageError:
            logger.warning("StorageMiddleware: closing the storage failed.", exc_info=True)

    # -- statistics -------------------------------------------------------------------------

    def get_stats(self) -> dict[str, Any]:
        """Counters: records written, write failures, retried, dropped, still buffered."""
        return {**self._counters, "records_buffered": len(self._buffer)}

    async def flush(self) -> bool:
        """Try to write every buffered record now; ``True`` when the buffer is empty."""
        return await self._flush_once()

    # -- internals ------------------------------------------------------------------------------

    def _enqueue(self, key: str, record: dict[str, Any]) -> None:
        self._buffer[key] = record
        self._buffer.move_to_end(key)
        while len(self._buffer) > self._buffer_size:
            dropped, _ = self._buffer.popitem(last=False)
            self._counters["records_dropped"] += 1
            logger.error("StorageMiddleware buffer full: dropped the record %s", dropped)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        delay = self.retry_interval
        while self._buffer:
            await asyncio.sleep(delay)
            while self._buffer:
                if not await self._flush_batch():
                    # Back off only on a failed write; a healthy store drains at once.
                    delay = min(delay * 2, self.max_retry_interval)
                    break
            else:
                return

    async def _flush_once(self) -> bool:
        """Write the whole buffer, batch by batch; ``False`` at the first failed batch."""
        while self._buffer:
            if not await self._flush_batch():
                return False
        return True

    async def _flush_batch(self) -> bool:
        batch = dict(itertools.islice(self._buffer.items(), _FLUSH_BATCH))
        try:
            await self.storage.set_many(batch, ttl_seconds=self.ttl_seconds)
        except StorageError as exc:
            self._counters["write_failures"] += 1
            self._log_failure(exc)
            return False
        for key, record in batch.items():
            # A newer record may have replaced it while we were writing.
            if self._buffer.get(key) is record:
                del self._buffer[key]
        self._counters["records_written"] += len(batch)
        self._counters["records_retried"] += len(batch)
        if not self._buffer:
            logger.warning("StorageMiddleware: storage is back; buffered records written.")
        return True

    def _log_failure(self, exc: BaseException) -> None:
        self._errors_since_log += 1
        now = time.monotonic()
        if now - self._last_error_log < self.error_log_interval:
            return
        logger.error(
            "StorageMiddleware: storage write failed (%d failure(s) since the last report; "
            "%d record(s) buffered for retry): %s",
            self._errors_since_log,
            len(self._buffer) + 1,
            exc,
        )
        self._last_error_log = now
        self._errors_since_log = 0


_second_text: tuple[int, str] = (-1, "")


def utc_now_iso() -> str:
    """The current UTC time as ISO 8601 with microseconds (``...T07:00:00.123456+00:00``).

    Formatting a datetime costs more than the rest of a record; the part up to the
    second is formatted once per second and reused.
    """
    global _second_text  # noqa: PLW0603 - a one-entry memo, replaced whole (no torn read)
    now = time.time()
    second, text = _second_text
    if int(now) != second:
        second = int(now)
        text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second_text = (second, text)
    return "%s.%06d+00:00" % (text, (now - second) * 1_000_000)  # noqa: UP031 - twice as fast


def build_record(
    message: TaskiqMessage,
    result: TaskiqResult[Any],
    *,
    pipeline_id: str | None,
    cached: bool,
) -> dict[str, Any]:
    """The stored record of one execution (the guide's shape plus name, time, flags)."""
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
    record: dict[str, Any] = {
        "task_id": message.task_id,
        "pipeline_id": pipeline_id,
        "task_name": message.task_name,
        "is_err": is_err,
        "return_value": return_value,
        "error": error,
        "execution_time": float(result.execution_time),
        "finished_at": utc_now_iso(),
    }
    if cached:
        record["cached"] = True
    return record
