"""``InMemoryStorageAdapter``: a dict in this process, optionally bounded with LRU eviction."""

from __future__ import annotations

import heapq
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

from taskiq_flow.storage.base import (
    BaseStorageAdapter,
    RawEntry,
    check_key,
    check_keys,
    check_pattern,
    check_ttl,
)
from taskiq_flow.storage.codec import decode, encode
from taskiq_flow.storage.errors import StorageConfigError
from taskiq_flow.storage.glob import compile_glob

__all__ = ["InMemoryStorageAdapter"]

# (encoded value, created_at, expires_at) as epoch seconds.
_Item = tuple[bytes, float, float | None]


class InMemoryStorageAdapter(BaseStorageAdapter):
    """Entries in a dict of this process: for tests, one worker, or a cache of a cache.

    Values are held encoded, exactly as the other backends hold them. No method awaits
    between reading and writing the dict, so concurrent tasks never see a half-done
    operation. Nothing is shared between processes.

    Args:
        max_entries: Keep at most this many entries, evicting the least recently used
            (read or written) first; ``None`` for no bound.
        ttl_seconds: Default TTL for writes that pass none; ``None`` keeps forever.
    """

    def __init__(self, max_entries: int | None = None, ttl_seconds: int | None = None) -> None:
        super().__init__(ttl_seconds)
        if max_entries is not None and (
            isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries <= 0
        ):
            msg = f"max_entries must be a positive int or None, got {max_entries!r}"
            raise StorageConfigError(msg)
        self.max_entries = max_entries
        self._data: OrderedDict[str, _Item] = OrderedDict()
        # (expires_at, key) of every write with a TTL: each write drops what has expired,
        # so entries nobody reads again (a worker's records) do not pile up.
        self._expiries: list[tuple[float, str]] = []

    def __repr__(self) -> str:
        return (
            f"InMemoryStorageAdapter(max_entries={self.max_entries!r}, "
            f"ttl_seconds={self.ttl_seconds!r}, entries={len(self._data)})"
        )

    def _put(self, key: str, item: _Item) -> None:
        data = self._data
        if key in data:
            del data[key]  # re-inserted below: last in recency order
        data[key] = item
        heap = self._expiries
        if item[2] is not None:
            heapq.heappush(heap, (item[2], key))
        # The common write (nothing expired, nothing to evict) stops at these checks.
        if heap and (heap[0][0] <= item[1] or len(heap) > 2 * len(data) + 64):
            self._sweep(item[1])
        max_entries = self.max_entries
        if max_entries is not None and len(data) > max_entries:
            while len(data) > max_entries:
                data.popitem(last=False)

    def _sweep(self, now: float) -> None:
        heap, data = self._expiries, self._data
        while heap and heap[0][0] <= now:
            expires, key = heapq.heappop(heap)
            item = data.get(key)
            if item is not None and item[2] == expires:
                del data[key]
        # Overwritten or deleted keys leave outdated pairs; rebuild before they dominate.
        if len(heap) > 2 * len(data) + 64:
            self._expiries = [(i[2], k) for k, i in data.items() if i[2] is not None]
            heapq.heapify(self._expiries)

    def _live(self, key: str, now: float) -> _Item | None:
        item = self._data.get(key)
        if item is None:
            return None
        expires = item[2]
        if expires is not None and now >= expires:
            del self._data[key]
            return None
        if self.max_entries is not None:
            self._data.move_to_end(key)
        return item

    async def set(self, key: str, value: Any, ttl_seconds: int | None = None) -> None:
        """Store ``value`` under ``key`` (see :meth:`BaseStorageAdapter.set`)."""
        check_key(key)
        ttl = self._ttl(ttl_seconds)
        blob = encode(key, value)
        now = time.time()
        self._put(key, (blob, now, None if ttl is None else now + ttl))

    async def add(self, key: str, value: Any, ttl_seconds: int | None = None) -> bool:
        """Store only if absent or expired (see :meth:`BaseStorageAdapter.add`)."""
        check_key(key)
        ttl = self._ttl(ttl_seconds)
        blob = encode(key, value)
        now = time.time()
        if self._live(key, now) is not None:
            return False
        self._put(key, (blob, now, None if ttl is None else now + ttl))
        return True

    async def _read(self, key: str) -> RawEntry | None:
        return self._live(key, time.time())

    async def exists(self, key: str) -> bool:
        """Whether a live entry exists."""
        check_key(key)
        return self._live(key, time.time()) is not None

    async def delete(self, key: str) -> bool:
        """Remove ``key``; whether a live entry was there."""
        check_key(key)
        live = self._live(key, time.time()) is not None
        if live:
            del self._data[key]
        return live

    async def keys(self, pattern: str = "*") -> list[str]:
        """Live keys matching the Redis glob ``pattern``, sorted."""
        match = compile_glob(check_pattern(pattern))
        now = time.time()
        return sorted(
            key
            for key, (_, _, expires) in self._data.items()
            if (expires is None or now < expires) and match(key)
        )

    async def iter_keys(self, pattern: str = "*") -> AsyncIterator[str]:
        """Iterate live keys matching ``pattern`` (a snapshot of the key set)."""
        match = compile_glob(check_pattern(pattern))
        for key in list(self._data):
            item = self._data.get(key)
            if item is None:
                continue
            expires = item[2]
            if (expires is None or time.time() < expires) and match(key):
                yield key

    async def get_many(self, keys: Iterable[str], *, type: Any = None) -> dict[str, Any]:
        """Values of the live keys among ``keys``."""
        keys = check_keys(keys)
        now = time.time()
        data = self._data
        bounded = self.max_entries is not None
        found: dict[str, Any] = {}
        for key in keys:  # _live() inlined: this loop is the point of the batch form
            item = data.get(key)
            if item is None:
                continue
            expires = item[2]
            if expires is not None and now >= expires:
                del data[key]
                continue
            if bounded:
                data.move_to_end(key)
            found[key] = decode(key, item[0], type)
        return found

    async def set_many(self, items: Mapping[str, Any], ttl_seconds: int | None = None) -> None:
        """Store every item; nothing is written if one value cannot be encoded."""
        ttl = self._ttl(ttl_seconds)
        blobs = [(check_key(key), encode(key, value)) for key, value in items.items()]
        now = time.time()
        expires = None if ttl is None else now + ttl
        for key, blob in blobs:
            self._put(key, (blob, now, expires))

    async def delete_many(self, keys: Iterable[str]) -> int:
        """Remove ``keys``; how many live entries were removed."""
        keys = check_keys(keys)
        now = time.time()
        removed = 0
        for key in keys:
            if self._live(key, now) is not None:
                del self._data[key]
                removed += 1
        return removed

    async def cleanup(self, ttl_seconds: int | None = None) -> int:
        """Remove expired entries, and with ``ttl_seconds`` entries at least that old."""
        age = check_ttl(ttl_seconds)
        now = time.time()
        born_before = -float("inf") if age is None else now - age
        doomed = [
            key
            for key, (_, created, expires) in self._data.items()
            if (expires is not None and now >= expires) or created <= born_before
        ]
        for key in doomed:
            del self._data[key]
        return len(doomed)

    async def close(self) -> None:
        """Nothing to release; the entries stay (a dict has no connection)."""
