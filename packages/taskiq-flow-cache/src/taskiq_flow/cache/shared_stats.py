r"""Cluster-wide cache statistics: every process's per-task counts, added up on the backend.

An adapter's ``get_stats()`` counts what *this process* did. A :class:`SharedStats`
buffer gathers per-task counts (``add(task, field, n)``: a dict update, no I/O) and a
background task started on the first ``add`` writes them to the backend **at most once
per** ``interval`` (default 1 s): for Redis, one script adding every pending count to one
hash, ``{key_prefix}stats`` (one key, so one slot on a Redis Cluster), whose fields are
``"{task}\x1f{field}"``. The hit path therefore never waits for this write, nor shares
its round trip.

When the write fails (the backend is down) the counts stay in the buffer and go with the
next write; the task that counted them never sees the failure, and the outage is logged
at a rate (one line per minute at most, then one "recovered" line). ``close()`` stops the
background task and writes what is left (best effort). A write that fails *after* the
server applied it (the connection dropped before the reply) is written again: such a
batch counts twice. These are statistics, not accounting.

Who feeds it: :class:`~taskiq_flow.middlewares.CacheMiddleware` counts, per task name,
calls answered from the cache (``hits``), calls whose function ran (``misses``), waits for
another caller's run (``lock_waits``, ``lock_wait_ms``), waits that reached ``max_wait``
(``lock_timeouts``) and calls run uncached because the cache failed (``uncached``).
Direct users of an adapter may call ``adapter.shared_stats.add(...)`` themselves.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from taskiq_flow.storage.kit.ratelog import OutageLog

__all__ = ["FIELDS", "SEPARATOR", "SharedStats", "summarize"]

logger = logging.getLogger("taskiq_flow.cache")

SEPARATOR = "\x1f"
"""Between the task name and the counter's name in a field of the shared hash."""

FIELDS = ("hits", "misses", "lock_waits", "lock_wait_ms", "lock_timeouts", "uncached")
"""The counters kept per task (``lock_wait_ms``: the waits' total, in milliseconds)."""

Write = Callable[[list[tuple[str, int]]], Awaitable[None]]
"""Adds each ``(hash field, increment)`` to the shared counters, in one write."""

Read = Callable[[], Awaitable[Mapping[Any, Any]]]
"""Returns every field of the shared counters and its value (bytes or str)."""


class SharedStats:
    """Per-task cache counters of this process, added to the backend's at most once per interval.

    Args:
        write: adds a batch of ``(field, increment)`` pairs on the backend (one round trip);
            raises on failure.
        read: every field and value of the shared counters.
        interval: seconds between two writes of this buffer (one write per interval at
            most, and none while nothing was counted).
        what: how the outage log names the write.
    """

    def __init__(
        self, write: Write, read: Read, *, interval: float = 1.0, what: str = "cache stats write"
    ) -> None:
        self._write = write
        self._read = read
        self.interval = interval
        # (task, field) -> count not yet written.
        self._pending: dict[tuple[str, str], int] = {}
        self._flusher: asyncio.Task[None] | None = None
        self.outage = OutageLog(logger, what, interval=60.0, level=logging.WARNING)
        self.writes = 0
        """Batches written so far."""

    def __repr__(self) -> str:
        return f"SharedStats(interval={self.interval}, pending={len(self._pending)})"

    # -- counting (no I/O) ---------------------------------------------------------------

    def add(self, task: str, field: str, n: int = 1) -> None:
        """Count ``n`` more ``field`` for ``task``; written with the next batch."""
        key = (task, field)
        pending = self._pending
        pending[key] = pending.get(key, 0) + n
        if self._flusher is None:
            self._start()

    @property
    def pending(self) -> dict[str, dict[str, int]]:
        """The counts not written yet, per task (a copy)."""
        by_task: dict[str, dict[str, int]] = {}
        for (task, field), count in self._pending.items():
            by_task.setdefault(task, {})[field] = count
        return by_task

    def _start(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # counted outside a loop: written by the next flush() or close()
        flusher = loop.create_task(self._run(), name="taskiq-flow cache stats")
        flusher.add_done_callback(self._stopped)
        self._flusher = flusher

    def _stopped(self, task: asyncio.Task[None]) -> None:
        # Cancelled with its loop (asyncio.run's end) or by close(): the next add()
        # starts another on whatever loop runs then.
        if self._flusher is task:
            self._flusher = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if self._pending:
                await self.flush()

    # -- writing ---------------------------------------------------------------------------

    async def flush(self) -> bool:
        """Write the pending counts now (one batch); whether they were written.

        On failure the counts are kept for the next write and the outage is logged at a
        rate; nothing is raised.
        """
        if not self._pending:
            return True
        batch, self._pending = self._pending, {}
        try:
            await self._write(
                [(f"{task}{SEPARATOR}{field}", n) for (task, field), n in batch.items()]
            )
        except BaseException as exc:
            self._keep(batch)
            if not isinstance(exc, Exception):
                raise
            self.outage.failure("%s (%d count(s) kept for the next write)", exc, len(batch))
            return False
        self.writes += 1
        self.outage.success()
        return True

    def _keep(self, batch: Mapping[tuple[str, str], int]) -> None:
        pending = self._pending
        for key, count in batch.items():
            pending[key] = pending.get(key, 0) + count

    async def read(self) -> dict[str, Any]:
        """The totals of every process, per task too (see :func:`summarize`).

        This process's pending counts are written first, so they are included.

        Raises:
            Exception: whatever ``read`` raises (the adapter's connection error).
        """
        await self.flush()
        return summarize(_decode(await self._read()))

    async def close(self) -> None:
        """Stop the background writer and write what is left (best effort).

        Counting again afterwards starts a new writer (adapters are reusable after
        ``close()``; their client reconnects).
        """
        flusher = self._flusher
        self._flusher = None
        if flusher is not None and not flusher.done():
            loop = flusher.get_loop()
            if loop is asyncio.get_running_loop():
                flusher.cancel()
                # Bounded: a writer stuck in a write must not hold a shutdown up.
                await asyncio.wait({flusher}, timeout=2.0)
            elif not loop.is_closed():  # started on another loop, still running
                loop.call_soon_threadsafe(flusher.cancel)
        await self.flush()


def _decode(raw: Mapping[Any, Any]) -> dict[str, dict[str, int]]:
    r"""``{b"task\x1ffield": b"3"}`` -> ``{"task": {"field": 3}}``; foreign fields skipped."""
    counts: dict[str, dict[str, int]] = {}
    for name, value in raw.items():
        text = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
        task, separator, field = text.rpartition(SEPARATOR)
        if not separator:
            continue
        try:
            number = int(value)
        except (TypeError, ValueError):
            continue
        counts.setdefault(task, {})[field] = number
    return counts


def _row(counts: Mapping[str, int]) -> dict[str, Any]:
    hits, misses = counts.get("hits", 0), counts.get("misses", 0)
    return {
        "hits": hits,
        "misses": misses,
        "hit_rate": hits / (hits + misses) if hits + misses else 0.0,
        "lock_waits": counts.get("lock_waits", 0),
        "lock_wait_seconds": counts.get("lock_wait_ms", 0) / 1000,
        "lock_timeouts": counts.get("lock_timeouts", 0),
        "uncached": counts.get("uncached", 0),
    }


def summarize(counts: Mapping[str, Mapping[str, int]]) -> dict[str, Any]:
    """Totals and per-task rows of ``counts`` (``{task: {field: n}}``).

    Keys: ``hits``, ``misses``, ``hit_rate`` (hits / (hits + misses), 0.0 before any),
    ``lock_waits``, ``lock_wait_seconds``, ``lock_timeouts``, ``uncached``, ``scope``
    (``"cluster"``) and ``by_task``: ``{task: {the same keys but scope}}``, sorted by task.
    """
    by_task = {task: _row(counts[task]) for task in sorted(counts)}
    totals = {field: sum(counts[task].get(field, 0) for task in counts) for field in FIELDS}
    return {**_row(totals), "scope": "cluster", "by_task": by_task}
