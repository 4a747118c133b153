"""``InMemoryCacheAdapter``: a per-process cache, LRU-bounded, stampede-protected.

Entries live encoded (msgpack) in the storage package's
:class:`~taskiq_flow.storage.kit.TTLStore`, the store under the in-memory storage
adapter too. The dogpile lock's single flight is all the locking one process needs, so
this backend has no lease (``_lease_seconds`` is ``None``): on a miss the flight's
leader creates at once, and its commit is a plain store.
"""

from __future__ import annotations

import time
from typing import Any

from taskiq_flow.cache.base import BaseCacheAdapter, check_cache_key, check_cache_ttl
from taskiq_flow.cache.codec import encode_entry
from taskiq_flow.cache.errors import CacheValueError
from taskiq_flow.storage.kit.checks import check_count
from taskiq_flow.storage.kit.memory import TTLStore

__all__ = ["InMemoryCacheAdapter"]

_now = time.time


class InMemoryCacheAdapter(BaseCacheAdapter):
    """A cache living in this process's memory.

    Safe under any number of concurrent tasks on one event loop. ``get_or_create`` runs the
    creator once per key however many tasks ask at the same time. ``close()`` keeps the
    entries (there is no connection to release); ``clear()`` removes them.

    Args:
        max_entries: bound on the number of entries; the least recently used is evicted
            first. ``None``: unbounded (expired entries are still swept).
        default_ttl: TTL in seconds when a call passes none; ``None`` keeps entries until
            evicted.
        max_wait: seconds a caller waits for another caller's creator.
        fallback_on_error: accepted for symmetry with the Redis adapter (memory never fails).
        stale_ttl: default stale-while-revalidate window for ``get_or_create``.
    """

    def __init__(
        self,
        max_entries: int | None = None,
        default_ttl: int | None = 3600,
        *,
        max_wait: float = 60.0,
        fallback_on_error: bool = False,
        stale_ttl: int | None = None,
    ) -> None:
        if max_entries is not None:
            check_count(max_entries, "max_entries", CacheValueError.about)
        super().__init__(
            default_ttl=default_ttl,
            max_wait=max_wait,
            fallback_on_error=fallback_on_error,
            stale_ttl=stale_ttl,
        )
        self.max_entries = max_entries
        self._store = TTLStore(max_entries)

    def __repr__(self) -> str:
        return f"InMemoryCacheAdapter(entries={len(self._store)}, max_entries={self.max_entries})"

    def __len__(self) -> int:
        return len(self._store)

    # -- storage ---------------------------------------------------------------------------

    async def set(self, key: str, value: Any, ttl_seconds: int | None = None) -> None:
        """Store ``value`` under ``key`` for ``ttl_seconds`` (``None``: ``default_ttl``)."""
        check_cache_key(key)
        ttl = self.default_ttl if ttl_seconds is None else check_cache_ttl(ttl_seconds)
        now = time.time()
        self._store.put(key, (encode_entry(key, value), now, None if ttl is None else now + ttl))

    async def delete(self, key: str) -> bool:
        """Remove ``key``; return whether a live entry was there."""
        check_cache_key(key)
        return self._store.pop(key, time.time())

    async def clear(self) -> int:
        """Remove every entry; return how many live ones there were."""
        return self._store.clear(time.time())

    # -- lease primitives: the in-process single flight already elected the creator ------

    async def _read_raw(self, key: str) -> bytes | None:
        item = self._store.get(key, _now())
        return None if item is None else item[0]

    async def _commit(
        self, key: str, token: str, payload: bytes | None, ttl_ms: int | None
    ) -> None:
        if payload is not None:
            now = _now()
            self._store.put(key, (payload, now, None if ttl_ms is None else now + ttl_ms / 1000))
