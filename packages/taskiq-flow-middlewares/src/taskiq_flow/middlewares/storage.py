"""StorageMiddleware: one record per task execution, in any storage adapter.

A record is written in ``post_execute``, i.e. before taskiq saves the result: whoever
sees a result can read its record (DESIGN.md §4 says "after each result is saved";
``docs/middlewares.md`` explains why we write just before instead). When the broker's
result backend is a :class:`~taskiq_flow.middlewares.StorageResultBackend` over the same
adapter, the record is handed to it instead and written once, as the result.

A storage failure never reaches the worker: the record goes to the middleware's
:class:`~taskiq_flow.middlewares._writer.RecordWriter`, which appends it to a local spool
file (on disk, before the task finishes) and writes it to the store once it answers;
errors are logged once per interval, not once per task.
"""

from __future__ import annotations

import logging
import numbers
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from taskiq import TaskiqMessage, TaskiqMiddleware, TaskiqResult
from taskiq.exceptions import NoResultError

from taskiq_flow.middlewares import _labels, _metrics
from taskiq_flow.middlewares._records import build_record, record_key, utc_now_iso
from taskiq_flow.middlewares._wrapping import answered_from_cache
from taskiq_flow.middlewares._writer import RecordWriter, default_spool_dir
from taskiq_flow.middlewares.errors import MiddlewareConfigError, MiddlewareConfigTypeError
from taskiq_flow.storage import BaseStorageAdapter, InMemoryStorageAdapter, StorageError
from taskiq_flow.storage.kit.spool import DEFAULT_SPOOL_MAX_BYTES

if TYPE_CHECKING:
    from taskiq_flow.middlewares.result_backend import StorageResultBackend

__all__ = ["StorageMiddleware", "record_key", "utc_now_iso"]

logger = logging.getLogger("taskiq_flow.middlewares")


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


def spool_location(spool: bool, spool_dir: str | os.PathLike[str] | None) -> Path | None:
    """The spool directory a writer uses: ``None`` without a spool, else absolute.

    The given one, or :func:`~taskiq_flow.middlewares._writer.default_spool_dir`.
    """
    if not spool:
        return None
    return Path(spool_dir).absolute() if spool_dir is not None else default_spool_dir()


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


class StorageMiddleware(TaskiqMiddleware):
    """Store every task result as a record in a storage adapter.

    Args:
        storage: the adapter; ``None`` means a new :class:`InMemoryStorageAdapter`.
        enabled: ``False`` turns the middleware into a no-op.
        ttl_seconds: how long records live; ``None`` = the adapter's default TTL.
        store_cache_hits: also store a record when the result came from the cache
            (pipeline steps always are, flagged ``"cached": true``).
        buffer_size: records kept **in memory** for retry when the spool cannot take
            them (full, not writable, an in-memory store); past it the oldest are
            dropped (counted in ``records_dropped`` and logged).
        retry_interval: first delay before retrying buffered records (doubles on each
            failure up to ``max_retry_interval``).
        max_retry_interval: the longest delay between retries.
        error_log_interval: at most one error log per this many seconds.
        shutdown_flush_timeout: how long ``shutdown`` keeps trying to write records held
            in memory (records in the spool need no waiting: they stay on disk).
        spool: keep records the store refuses in a local spool file before the task
            finishes (default ``True``); ``False`` keeps them in memory only.
        spool_dir: the spool directory; default ``$TASKIQ_FLOW_STORAGE_SPOOL_DIR``, else
            ``./.taskiq-flow/spool``. Workers of one store should share it: a worker
            started later adopts what a killed one left there.
        spool_max_bytes: the bound of each worker process's spool file (keys plus
            encoded records, default 256 MiB); past it records are kept in memory
            (counted in ``spool_overflows``).
        metrics: export the storage metrics (``taskiq_flow_storage_*``) and the span
            attribute ``taskiq_flow.storage.written`` when ``prometheus-client`` /
            ``opentelemetry-api`` are installed; ``False`` turns both off. See
            ``docs/middlewares.md``, "Monitoring".

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
        spool: bool = True,
        spool_dir: str | os.PathLike[str] | None = None,
        spool_max_bytes: int = DEFAULT_SPOOL_MAX_BYTES,
        metrics: bool = True,
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
        self.shutdown_flush_timeout = shutdown_flush_timeout
        self.writer = RecordWriter(
            self.storage,
            ttl_seconds=ttl_seconds,
            buffer_size=int(buffer_size),
            retry_interval=retry_interval,
            max_retry_interval=max_retry_interval,
            error_log_interval=error_log_interval,
            spool_dir=spool_location(spool, spool_dir),
            spool_max_bytes=spool_max_bytes,
            # None (metrics off, or neither extra installed) costs each write one check.
            metrics=_metrics.recorder() if metrics else None,
        )
        # The broker's StorageResultBackend over this same adapter, once seen: records
        # then go through it, written once as the result (see _result_backend()).
        self._backend: StorageResultBackend | None = None
        self._backend_of: object = None

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
            backend = (
                self._backend
                if self.broker.result_backend is self._backend_of
                else self._result_backend()
            )
            if backend is not None:
                # One store: the backend writes this record as the result, one write. A
                # cache hit gets one too: it is the hit's result.
                record = build_record(
                    message, message.task_id, result, pipeline_id=pipeline_id, cached=cached
                )
                backend.attach_record(message.task_id, record)
                return
            if cached and pipeline_id is None and not self.store_cache_hits:
                return
            key = record_key(message.task_id, pipeline_id)
            record = build_record(
                message, message.task_id, result, pipeline_id=pipeline_id, cached=cached
            )
            await self.writer.write(key, record)
        except Exception:
            # Whatever went wrong, the task's own result must be saved: log and go on.
            logger.exception("StorageMiddleware could not record task %s", message.task_id)

    async def startup(self) -> None:
        """Adopt spool files that stopped processes left for this store, and write them."""
        if self.enabled:
            await self.writer.start()

    async def shutdown(self) -> None:
        """Write what is kept (in memory: up to ``shutdown_flush_timeout``); close the store.

        Closing releases connections and threads (an open SQLite connection would keep
        the worker process from exiting); every adapter reconnects on its next use, so
        a store shared with code that runs later keeps working.
        """
        await self.writer.close(self.shutdown_flush_timeout)
        if self.writer.metrics is not None:
            self.writer.metrics.flush()  # a multiprocess scrape reads what the worker counted
        try:
            await self.storage.close()
        except StorageError:
            logger.warning("StorageMiddleware: closing the storage failed.", exc_info=True)

    def _result_backend(self) -> StorageResultBackend | None:
        """The broker's StorageResultBackend if it writes to this middleware's adapter."""
        current = self.broker.result_backend
        if current is not self._backend_of:
            # Looked up once per backend object (a broker's backend may be set late).
            from taskiq_flow.middlewares.result_backend import (  # noqa: PLC0415 - a cycle
                StorageResultBackend,
            )

            self._backend_of = current
            self._backend = None
            if isinstance(current, StorageResultBackend) and current.storage is self.storage:
                self._backend = current
                current.share_writer(self.writer)
        return self._backend

    # -- statistics -------------------------------------------------------------------------

    def get_stats(self) -> dict[str, Any]:
        """Counters: records written, failed, retried, spooled, replayed, dropped, waiting.

        ``records_buffered`` wait for the store, ``records_in_spool`` of them on disk.
        """
        return {
            **self.writer.counters,
            "records_buffered": self.writer.buffered,
            "records_in_spool": self.writer.spooled,
        }

    async def flush(self) -> bool:
        """Try to write every buffered record now; ``True`` when the buffer is empty."""
        return await self.writer.flush()
