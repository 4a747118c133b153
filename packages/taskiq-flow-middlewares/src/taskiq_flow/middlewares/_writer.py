"""``RecordWriter``: writes records (and results) to storage, buffering what fails.

One writer per storage adapter serves ``StorageMiddleware`` and ``StorageResultBackend``
alike. A write that fails goes into a bounded in-memory buffer (newest record per key)
that a background task retries with exponential backoff and that ``close()`` flushes;
failures are logged once per interval, never once per task. Nothing here raises into a
worker.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from typing import Any

from taskiq_flow.storage import BaseStorageAdapter, StorageError, StorageSerializationError

__all__ = ["RecordWriter"]

logger = logging.getLogger("taskiq_flow.middlewares")

_FLUSH_BATCH = 500


class RecordWriter:
    """Write key-value items to ``storage``; keep and retry those that fail.

    Args:
        storage: the adapter written to.
        ttl_seconds: TTL of every write (``None``: the adapter's default).
        buffer_size: items kept for retry; past it the oldest are dropped (counted).
        retry_interval: first delay before a retry (doubles per failure).
        max_retry_interval: the longest delay between retries.
        error_log_interval: at most one error log per this many seconds.
    """

    def __init__(
        self,
        storage: BaseStorageAdapter,
        *,
        ttl_seconds: int | None,
        buffer_size: int,
        retry_interval: float,
        max_retry_interval: float,
        error_log_interval: float,
    ) -> None:
        self.storage = storage
        self.ttl_seconds = ttl_seconds
        self.buffer_size = buffer_size
        self.retry_interval = retry_interval
        self.max_retry_interval = max_retry_interval
        self.error_log_interval = error_log_interval
        self._buffer: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._flusher: asyncio.Task[None] | None = None
        self._last_error_log = float("-inf")
        self._errors_since_log = 0
        self.counters = {
            "records_written": 0,
            "write_failures": 0,
            "records_retried": 0,
            "records_dropped": 0,
        }

    @property
    def buffered(self) -> int:
        """How many items wait for a retry."""
        return len(self._buffer)

    def has(self, key: str) -> Any:
        """The buffered (not yet written) value under ``key``, or ``None``."""
        return self._buffer.get(key)

    async def write(self, key: str, value: Any, extra: dict[str, Any] | None = None) -> bool:
        """Write ``value`` under ``key`` (and ``extra`` items in the same round trip).

        Returns:
            ``True`` if written now, ``False`` if buffered for a retry (never raises a
            storage error).
        """
        if self._buffer:
            # Storage is known to be failing: keep order, let the flusher retry.
            self._enqueue(key, value, extra)
            return False
        try:
            if extra:
                await self.storage.set_many({key: value, **extra}, ttl_seconds=self.ttl_seconds)
            else:
                await self.storage.set(key, value, self.ttl_seconds)
        except StorageSerializationError:
            # No retry can store what cannot be encoded: count it, say so, keep going.
            self.counters["records_dropped"] += 1
            logger.exception("taskiq-flow: the record %s cannot be encoded; dropped", key)
            return False
        except StorageError as exc:
            self.counters["write_failures"] += 1
            self.log_failure(exc)
            self._enqueue(key, value, extra)
            return False
        self.counters["records_written"] += 1
        return True

    async def flush(self) -> bool:
        """Write the whole buffer now, batch by batch; ``True`` once it is empty."""
        while self._buffer:
            if not await self._flush_batch():
                return False
        return True

    async def close(self, flush_for: float) -> None:
        """Stop the retry task and keep flushing for up to ``flush_for`` seconds."""
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        deadline = time.monotonic() + flush_for
        delay = 0.05
        while self._buffer and time.monotonic() < deadline:
            if await self.flush():
                break
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 1.0)
        if self._buffer:
            logger.error(
                "taskiq-flow shut down with %d record(s) not written: storage unreachable.",
                len(self._buffer),
            )

    def _enqueue(self, key: str, value: Any, extra: dict[str, Any] | None) -> None:
        items = {key: value, **extra} if extra else {key: value}
        for name, item in items.items():
            self._buffer[name] = item
            self._buffer.move_to_end(name)
        while len(self._buffer) > self.buffer_size:
            dropped, _ = self._buffer.popitem(last=False)
            self.counters["records_dropped"] += 1
            logger.error("taskiq-flow record buffer full: dropped the record %s", dropped)
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

    async def _flush_batch(self) -> bool:
        batch = dict(itertools.islice(self._buffer.items(), _FLUSH_BATCH))
        try:
            await self.storage.set_many(batch, ttl_seconds=self.ttl_seconds)
        except StorageError as exc:
            self.counters["write_failures"] += 1
            self.log_failure(exc)
            return False
        for key, record in batch.items():
            # A newer record may have replaced it while we were writing.
            if self._buffer.get(key) is record:
                del self._buffer[key]
        self.counters["records_written"] += len(batch)
        self.counters["records_retried"] += len(batch)
        if not self._buffer:
            logger.warning("taskiq-flow: storage is back; buffered records written.")
        return True

    def log_failure(self, exc: BaseException) -> None:
        """Log a storage failure: the first, then one line per ``error_log_interval``."""
        self._errors_since_log += 1
        now = time.monotonic()
        if now - self._last_error_log < self.error_log_interval:
            return
        logger.error(
            "taskiq-flow: storage write failed (%d failure(s) since the last report; "
            "%d record(s) buffered for retry): %s",
            self._errors_since_log,
            len(self._buffer) + 1,
            exc,
        )
        self._last_error_log = now
        self._errors_since_log = 0
