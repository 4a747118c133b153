"""Reading many entries of a store in bounded memory, and reporting the bad ones.

``scan_entries`` walks ``iter_keys`` and reads the values ``BATCH_SIZE`` keys at a
time with one ``get_many`` each: memory stays bounded by the batch, whatever the size
of the store. A batch holding undecodable bytes is read again key by key, so that one
corrupt entry costs a warning, not the listing.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any, Final, TextIO

from taskiq_flow.storage import StorageCorruptError, StorageSerializationError

if TYPE_CHECKING:
    from taskiq_flow.factory._progress import Progress
    from taskiq_flow.storage import BaseStorageAdapter

__all__ = ["BATCH_SIZE", "Corrupt", "Warnings", "scan_entries"]

BATCH_SIZE: Final = 500
_UNREADABLE = (StorageCorruptError, StorageSerializationError)
_MISSING: Final = object()


class Corrupt:
    """Stands for the value of a key whose bytes could not be decoded."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


async def _read_batch(
    storage: BaseStorageAdapter, keys: list[str]
) -> AsyncIterator[tuple[str, Any]]:
    try:
        values = await storage.get_many(keys)
    except _UNREADABLE:
        # One bad entry fails the whole batch on every backend: find it key by key.
        for key in keys:
            try:
                value = await storage.get(key, _MISSING)
            except _UNREADABLE as exc:
                yield key, Corrupt(str(exc))
                continue
            if value is not _MISSING:
                yield key, value
        return
    for key, value in values.items():
        yield key, value


async def scan_entries(
    storage: BaseStorageAdapter,
    patterns: Iterable[str],
    *,
    tally: Progress | None = None,
    batch_size: int = BATCH_SIZE,
) -> AsyncIterator[tuple[str, Any]]:
    """Yield ``(key, value)`` for every live key matching one of ``patterns``.

    The value is a :class:`Corrupt` for an entry that cannot be decoded. A key that
    expires between listing and reading is left out. Keys come in no set order, and
    on Redis a key may come twice (``SCAN``): callers must not count on uniqueness.
    """
    for pattern in patterns:
        batch: list[str] = []
        async for key in storage.iter_keys(pattern):
            batch.append(key)
            if tally is not None:
                tally.advance()
            if len(batch) >= batch_size:
                async for item in _read_batch(storage, batch):
                    yield item
                batch = []
        if batch:
            async for item in _read_batch(storage, batch):
                yield item
    if tally is not None:
        tally.close()


class Warnings:
    """Warning lines on stderr, the first ``limit`` in full, then only a count.

    A store with thousands of bad entries must not bury the listing under them.
    """

    def __init__(self, limit: int = 10, stream: TextIO | None = None) -> None:
        self.limit = limit
        self.count = 0
        self.stream = stream

    def warn(self, message: str) -> None:
        """Report one problem (printed if fewer than ``limit`` were printed so far)."""
        self.count += 1
        if self.count <= self.limit:
            (self.stream or sys.stderr).write(f"taskiq-flow: warning: {message}\n")

    def close(self) -> None:
        """Print how many warnings were left out, if any."""
        hidden = self.count - self.limit
        if hidden > 0:
            (self.stream or sys.stderr).write(
                f"taskiq-flow: warning: ... and {hidden} more entries skipped\n"
            )
