"""``RecordWriter``: writes records (and results) to storage; keeps on disk what fails.

One writer per storage adapter serves ``StorageMiddleware`` and ``StorageResultBackend``
alike. A write the store refuses goes, **before** ``write()`` returns (so before the task
is acknowledged), to the writer's spool: an append-only SQLite file of this process in
the spool directory (:mod:`taskiq_flow.storage.kit.spool`). A background task writes
the spool to the store once it answers, with exponential backoff meanwhile. A process
killed during an outage leaves its spool file behind; the next writer started on the
same directory for the same store adopts it and writes it.

What the spool cannot take (it is full, the directory is not writable, the store has
no stable identity — an in-memory store — or the platform has no ``flock``) is kept in a
bounded in-memory buffer instead, as before the spool existed: retried while the
process lives, the oldest dropped past ``buffer_size``. Failures are logged through
:class:`~taskiq_flow.storage.kit.ratelog.OutageLog`: the first, then one line per
interval, then one "recovered" line. Nothing here raises into a worker.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from taskiq_flow.storage import (
    BaseStorageAdapter,
    SQLiteStorageAdapter,
    StorageError,
    StorageSerializationError,
)
from taskiq_flow.storage.kit.ratelog import OutageLog
from taskiq_flow.storage.kit.spool import SPOOL_SUPPORTED, Spool

if TYPE_CHECKING:
    from taskiq_flow.middlewares._metrics import Recorder

__all__ = ["SPOOL_DIR_ENV", "RecordWriter", "default_spool_dir", "store_identity"]

logger = logging.getLogger("taskiq_flow.middlewares")

SPOOL_DIR_ENV = "TASKIQ_FLOW_STORAGE_SPOOL_DIR"
_DEFAULT_SPOOL_DIR = os.path.join(".taskiq-flow", "spool")
_FLUSH_BATCH = 500


def default_spool_dir() -> Path:
    """``$TASKIQ_FLOW_STORAGE_SPOOL_DIR``, else ``./.taskiq-flow/spool``, made absolute."""
    return Path(os.environ.get(SPOOL_DIR_ENV, "").strip() or _DEFAULT_SPOOL_DIR).absolute()


def store_identity(storage: BaseStorageAdapter) -> str | None:
    """What names ``storage``'s data across processes; ``None`` when nothing does.

    A SQLite file (its absolute path) or a Redis server and key prefix (the URL without
    its password). An in-memory store, ``:memory:`` or an adapter of another kind has
    none: its writer keeps failed writes in memory only. An adapter may define its own
    ``spool_identity`` string attribute.
    """
    custom = getattr(storage, "spool_identity", None)
    if isinstance(custom, str) and custom:
        return custom
    if isinstance(storage, SQLiteStorageAdapter):
        path = getattr(storage, "path", None)
        if isinstance(path, str) and path != ":memory:":
            return f"sqlite {os.path.abspath(path)}"
        return None
    location = getattr(storage, "location", None)
    prefix = getattr(storage, "key_prefix", None)
    if type(storage).__name__ == "RedisStorageAdapter" and isinstance(location, str):
        return f"redis {location} key_prefix={prefix!r}"
    return None


class RecordWriter:
    """Write key-value items to ``storage``; spool (or buffer) and retry those that fail.

    Args:
        storage: the adapter written to.
        ttl_seconds: TTL of every write (``None``: the adapter's default).
        buffer_size: items kept in memory when the spool cannot take them; past it the
            oldest are dropped (counted).
        retry_interval: first delay before a retry (doubles per failure).
        max_retry_interval: the longest delay between retries.
        error_log_interval: at most one error log per this many seconds.
        spool_dir: the spool directory; ``None`` = no spool (memory only).
        spool_max_bytes: the bound of this process's spool file.
        metrics: the process's metrics :class:`~taskiq_flow.middlewares._metrics.Recorder`
            (``None``: none; one check per write).
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
        spool_dir: Path | None = None,
        spool_max_bytes: int = 256 * 1024 * 1024,
        metrics: Recorder | None = None,
    ) -> None:
        self.storage = storage
        self.metrics = metrics
        self.ttl_seconds = ttl_seconds
        self.buffer_size = buffer_size
        self.retry_interval = retry_interval
        self.max_retry_interval = max_retry_interval
        self.spool_max_bytes = spool_max_bytes
        self.store = store_identity(storage) if SPOOL_SUPPORTED else None
        self.spool_dir = spool_dir if self.store is not None else None
        self._memory: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._spool: Spool | None = None
        self._adopted: list[Spool] = []
        self._spool_lock = asyncio.Lock()
        self._flusher: asyncio.Task[None] | None = None
        self.outage = OutageLog(logger, "storage write", interval=error_log_interval)
        self.spool_trouble = OutageLog(logger, "spool", interval=error_log_interval)
        self.counters = {
            "records_written": 0,
            "write_failures": 0,
            "records_retried": 0,
            "records_dropped": 0,
            "records_spooled": 0,
            "records_replayed": 0,
            "spool_overflows": 0,
        }

    @property
    def buffered(self) -> int:
        """How many items wait for a retry (on disk and in memory)."""
        spooled = sum(s.count for s in self._spools())
        return len(self._memory) + spooled

    @property
    def spooled(self) -> int:
        """How many of them are on disk."""
        return sum(s.count for s in self._spools())

    def _spools(self) -> list[Spool]:
        return [*([self._spool] if self._spool is not None else []), *self._adopted]

    async def start(self) -> None:
        """Adopt the spool files other (dead) processes left for this store; write them."""
        if self.spool_dir is None or self.store is None:
            return
        mine = {s.path for s in self._spools()}
        found = await Spool.adopt(
            self.spool_dir, self.store, max_bytes=self.spool_max_bytes, skip=mine
        )
        for spool in found:
            if spool.count:
                logger.warning(
                    "taskiq-flow: adopted the spool %s left by a stopped process: %d "
                    "record(s) to write to the store",
                    spool.path,
                    spool.count,
                )
            self._adopted.append(spool)
        if found:
            self._report_buffered()
            self._start_flusher()

    async def write(self, key: str, value: Any, extra: dict[str, Any] | None = None) -> bool:
        """Write ``value`` under ``key`` (and ``extra`` items in the same round trip).

        Returns:
            ``True`` if written now, ``False`` if kept for a retry (on disk when the spool
            takes it) or dropped (never raises a storage error).
        """
        items = {key: value, **extra} if extra else {key: value}
        metrics = self.metrics
        if self._memory or self.spooled:
            # Storage is known to be failing: keep order, let the flusher retry.
            await self._keep(items)
            if metrics is not None:
                metrics.storage_record(written=False)
            return False
        started = time.perf_counter() if metrics is not None else 0.0
        try:
            if extra:
                await self.storage.set_many(items, ttl_seconds=self.ttl_seconds)
            else:
                await self.storage.set(key, value, self.ttl_seconds)
        except StorageSerializationError:
            # No retry can store what cannot be encoded: count it, say so, keep going.
            self.counters["records_dropped"] += 1
            if metrics is not None:
                metrics.storage_write_time(time.perf_counter() - started)
                metrics.storage_write("dropped")
                metrics.storage_record(written=False)
            logger.exception("taskiq-flow: the record %s cannot be encoded; dropped", key)
            return False
        except StorageError as exc:
            self.counters["write_failures"] += 1
            if metrics is not None:
                metrics.storage_write_time(time.perf_counter() - started)
            await self._keep(items)
            if metrics is not None:
                metrics.storage_failure(exc, len(items))
                metrics.storage_record(written=False)
            self.log_failure(exc)
            return False
        self.counters["records_written"] += 1
        if metrics is not None:
            # The buffer was empty and stays so: the gauge needs no update here.
            metrics.storage_written(time.perf_counter() - started)
        return True

    async def flush(self) -> bool:
        """Write everything kept (memory and spool) now, batch by batch; ``True`` once empty."""
        while self._memory or self.spooled:
            if not await self._flush_batch():
                return False
        return True

    async def close(self, flush_for: float) -> None:
        """Stop retrying; try once more, then leave the rest in the spool (or wait for it).

        What is on disk needs no waiting: the spool file stays for the next process
        started on the directory. Only records kept in memory (the spool could not
        take them) are waited for, up to ``flush_for`` seconds, saying so first.
        """
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        if (self._memory or self.spooled) and not await self.flush() and self._memory:
            await self._move_memory_to_spool()
        if self._memory:
            await self._wait_for_memory(flush_for)
        left = self.spooled
        for spool in self._spools():
            await spool.release()
        self._spool, self._adopted = None, []
        self._report_buffered()
        if left:
            logger.warning(
                "taskiq-flow: storage unreachable at shutdown: %d record(s) stay in the "
                "spool directory %s; a worker started later with that spool directory "
                "writes them to the store.",
                left,
                self.spool_dir,
            )

    async def _wait_for_memory(self, flush_for: float) -> None:
        logger.warning(
            "taskiq-flow: storage unreachable at shutdown; waiting up to %.0f s to write "
            "%d record(s) held in memory (no spool could take them).",
            flush_for,
            len(self._memory),
        )
        deadline = time.monotonic() + flush_for
        delay = 0.05
        while self._memory and time.monotonic() < deadline:
            if await self.flush():
                break
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 1.0)
        if self._memory:
            logger.error(
                "taskiq-flow shut down with %d record(s) not written: storage unreachable.",
                len(self._memory),
            )

    async def _move_memory_to_spool(self) -> None:
        while self._memory:
            batch = dict(itertools.islice(self._memory.items(), _FLUSH_BATCH))
            if not await self._to_spool(batch):
                return
            for key in batch:
                del self._memory[key]
        self._report_buffered()

    async def _keep(self, items: dict[str, Any]) -> None:
        if await self._to_spool(items):
            if self.metrics is not None:
                self.metrics.storage_write("spooled", len(items))
        else:
            self._enqueue(items)
        self._report_buffered()
        self._start_flusher()

    def _report_buffered(self) -> None:
        """Set the buffer gauge to what this writer keeps now (metrics on)."""
        if self.metrics is not None:
            self.metrics.storage_buffered(self, self.buffered)

    async def _to_spool(self, items: dict[str, Any]) -> bool:
        """Append ``items`` to this process's spool; ``False`` if it cannot take them."""
        if self.spool_dir is None or self.store is None:
            return False
        try:
            async with self._spool_lock:
                if self._spool is None:
                    self._spool = await Spool.create(
                        self.spool_dir, self.store, max_bytes=self.spool_max_bytes
                    )
                spool = self._spool
            if await spool.append(items, self.ttl_seconds):
                self.counters["records_spooled"] += len(items)
                return True
            self.counters["spool_overflows"] += len(items)
            self.spool_trouble.failure(
                "%s is full (%d bytes, spool_max_bytes); keeping records in memory",
                spool.path,
                spool.size,
            )
        except StorageSerializationError:
            raise
        except (StorageError, OSError) as exc:
            self.spool_trouble.failure(
                "cannot write to the spool directory %s (%s); keeping records in memory",
                self.spool_dir,
                exc,
            )
        return False

    def _enqueue(self, items: dict[str, Any]) -> None:
        for name, item in items.items():
            self._memory[name] = item
            self._memory.move_to_end(name)
        if self.metrics is not None:
            self.metrics.storage_write("buffered", len(items))
        while len(self._memory) > self.buffer_size:
            dropped, _ = self._memory.popitem(last=False)
            self.counters["records_dropped"] += 1
            if self.metrics is not None:
                self.metrics.storage_write("dropped")
            logger.error("taskiq-flow record buffer full: dropped the record %s", dropped)

    def _start_flusher(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        delay = self.retry_interval
        first = True
        while self._memory or self.spooled:
            if not first or not self._adopted:
                await asyncio.sleep(delay)
            first = False
            while self._memory or self.spooled:
                if not await self._flush_batch():
                    # Back off only on a failed write; a healthy store drains at once.
                    delay = min(delay * 2, self.max_retry_interval)
                    break
            else:
                return

    async def _flush_batch(self) -> bool:
        try:
            if self._memory:
                return await self._flush_memory()
            for spool in self._spools():
                if spool.count:
                    return await self._flush_spool(spool)
        except StorageError as exc:
            self.counters["write_failures"] += 1
            if self.metrics is not None:
                self.metrics.storage_failure(exc, self.buffered)
            self.log_failure(exc)
            return False
        finally:
            self._report_buffered()
        return True

    async def _set_many(self, batch: dict[str, Any], ttl_seconds: int | None) -> None:
        """One store call of a flush, timed when metrics are on."""
        metrics = self.metrics
        if metrics is None:
            await self.storage.set_many(batch, ttl_seconds=ttl_seconds)
            return
        started = time.perf_counter()
        try:
            await self.storage.set_many(batch, ttl_seconds=ttl_seconds)
        finally:
            metrics.storage_write_time(time.perf_counter() - started)

    async def _flush_memory(self) -> bool:
        batch = dict(itertools.islice(self._memory.items(), _FLUSH_BATCH))
        await self._set_many(batch, self.ttl_seconds)
        for key, record in batch.items():
            # A newer record may have replaced it while we were writing.
            if self._memory.get(key) is record:
                del self._memory[key]
        self._written(len(batch), replayed=False)
        return True

    async def _flush_spool(self, spool: Spool) -> bool:
        items = await spool.head(_FLUSH_BATCH)
        if items:
            by_ttl: dict[int | None, dict[str, Any]] = {}
            for item in items:
                by_ttl.setdefault(item.ttl_seconds, {})[item.key] = item.value
            for ttl, batch in by_ttl.items():
                await self._set_many(batch, ttl)
            await spool.remove_through(items[-1].seq)
        if spool is not self._spool and spool.count == 0:
            await spool.release()  # an adopted file, all written: removed
            self._adopted.remove(spool)
        self._written(len(items), replayed=spool is not self._spool)
        return True

    def _written(self, count: int, *, replayed: bool) -> None:
        self.counters["records_written"] += count
        self.counters["records_retried" if not replayed else "records_replayed"] += count
        if self.metrics is not None:
            self.metrics.storage_write("ok", count)
        if not self._memory and not self.spooled:
            self.outage.success("storage is back; every record kept for retry is written")

    def log_failure(self, exc: BaseException) -> None:
        """Log a storage failure: the first, then one line per interval, with the count."""
        self.outage.failure(
            "%s (%d record(s) kept for retry, %d of them in the spool)",
            exc,
            self.buffered,
            self.spooled,
        )
