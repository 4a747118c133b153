"""``InMemoryStorageAdapter``: a dict in this process, optionally bounded with LRU eviction."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

from taskiq_flow.storage.base import BaseStorageAdapter, RawEntry
from taskiq_flow.storage.codec import decode, encode
from taskiq_flow.storage.glob import compile_glob
from taskiq_flow.storage.kit.checks import (
    check_count,
    check_key,
    check_keys,
    check_pattern,
    check_ttl,
)
from taskiq_flow.storage.kit.memory import TTLStore

__all__ = ["InMemoryStorageAdapter"]


class InMemoryStorageAdapter(BaseStorageAdapter):
    """Entries in a dict of this process: for tests, one worker, or a cache of a cache.

    Values are held encoded, exactly as the other backends hold them, in a
    :class:`~taskiq_flow.storage.kit.TTLStore`. No method awaits between reading and
    writing it, so concurrent tasks never see a half-done operation. Nothing is shared
    between processes.

    Args:
        max_entries: Keep at most this many entries, evicting the least recently used
            (read or written) first; ``None`` for no bound.
        ttl_seconds: Default TTL for writes that pass none; ``None`` keeps forever.

    Raises:
        StorageConfigError: ``max_entries`` is not a positive int or ``None``.
    """

    def __init__(self, max_entries: int | None = None, ttl_seconds: int | None = None) -> None:
        super().__init__(ttl_seconds)
        if max_entries is not None:
            check_count(max_entries, "max_entries")
        self.max_entries = max_entries
        self._store = TTLStore(max_entries)

    def __repr__(self) -> str:
        return (
            f"InMemoryStorageAdapter(max_entries={self.max_entries!r}, "
            f"ttl_seconds={self.ttl_seconds!r}, entries={len(self._store)})"
        )

    async def set(self, key: str, value: Any, ttl_seconds: int | None = None) -> None:
        """Store ``value`` under ``key`` (see :meth:`BaseStorageAdapter.set`)."""
        # The one write of every task record: the usual key and TTL skip the full checks.
        if type(key) is not str or not key.isascii() or not key:
            check_key(key)
        ttl = self.ttl_seconds if ttl_seconds is None else self._ttl(ttl_seconds)
        blob = encode(key, value)
        now = time.time()
        self._store.put(key, (blob, now, None if ttl is None else now + ttl))

    async def add(self, key: str, value: Any, ttl_seconds: int | None = None) -> bool:
        """Store only if absent or expired (see :meth:`BaseStorageAdapter.add`)."""
        check_key(key)
        ttl = self._ttl(ttl_seconds)
        blob = encode(key, value)
        now = time.time()
        if self._store.get(key, now) is not None:
            return False
        self._store.put(key, (blob, now, None if ttl is None else now + ttl))
        return True

    async def _read(self, key: str) -> RawEntry | None:
        return self._store.get(key, time.time())

    async def exists(self, key: str) -> bool:
        """Whether a live entry exists."""
        check_key(key)
        return self._store.get(key, time.time()) is not None

    async def delete(self, key: str) -> bool:
        """Remove ``key``; whether a live entry was there."""
        check_key(key)
        return self._store.pop(key, time.time())

    async def keys(self, pattern: str = "*") -> list[str]:
        """Live keys matching the Redis glob ``pattern``, sorted."""
        match = compile_glob(check_pattern(pattern))
        return sorted(filter(match, self._store.live_keys(time.time())))

    async def iter_keys(self, pattern: str = "*") -> AsyncIterator[str]:
        """Iterate live keys matching ``pattern`` (a snapshot of the key set)."""
        match = compile_glob(check_pattern(pattern))
        for key in self._store.live_keys(time.time()):
            if match(key):
                yield key

    async def get_many(self, keys: Iterable[str], *, type: Any = None) -> dict[str, Any]:
        """Values of the live keys among ``keys``."""
        keys = check_keys(keys)
        now = time.time()
        get = self._store.get
        found: dict[str, Any] = {}
        for key in keys:
            item = get(key, now)
            if item is not None:
                found[key] = decode(key, item[0], type)
        return found

    async def set_many(self, items: Mapping[str, Any], ttl_seconds: int | None = None) -> None:
        """Store every item; nothing is written if one value cannot be encoded."""
        ttl = self._ttl(ttl_seconds)
        blobs = [(check_key(key), encode(key, value)) for key, value in items.items()]
        now = time.time()
        expires = None if ttl is None else now + ttl
        for key, blob in blobs:
            self._store.put(key, (blob, now, expires))

    async def delete_many(self, keys: Iterable[str]) -> int:
        """Remove ``keys``; how many live entries were removed."""
        keys = check_keys(keys)
        now = time.time()
        return sum(self._store.pop(key, now) for key in keys)

    async def cleanup(self, ttl_seconds: int | None = None) -> int:
        """Remove expired entries, and with ``ttl_seconds`` entries at least that old."""
        age = check_ttl(ttl_seconds)
        now = time.time()
        born_before = -float("inf") if age is None else now - age
        return self._store.remove_where(
            lambda item: (item[2] is not None and now >= item[2]) or item[1] <= born_before
        )

    async def close(self) -> None:
        """Nothing to release; the entries stay (a dict has no connection)."""
