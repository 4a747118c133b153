"""``InMemoryCacheAdapter``: a per-process cache, LRU-bounded, stampede-protected.

Entries live encoded (msgpack) in the storage package's
:class:`~taskiq_flow.storage.kit.TTLStore`, the store under the in-memory storage
adapter too. The dogpile lock's single flight is all the locking one process needs, so
this backend has no lease (``_lease_seconds`` is ``None``): on a miss the flight's
leader creates at once, and its commit is a plain store, skipped once for a key
invalidated while its creation was in flight (the no-resurrection rule of
:class:`~taskiq_flow.cache.base.BaseCacheAdapter`: there is no lease to delete, so the
adapter remembers the invalidation until that creation's commit).

Tags are a dict ``tag -> set of keys``; keys whose entries went (deleted, expired or
evicted) are pruned in a sweep whenever the pairs held reach twice those of the last
sweep (plus 1024), so memory stays proportional to the live entries and their tags.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

from taskiq_flow.cache.base import (
    BaseCacheAdapter,
    check_cache_key,
    check_cache_pattern,
    check_cache_tag,
    check_cache_tags,
    check_cache_ttl,
)
from taskiq_flow.cache.codec import encode_entry
from taskiq_flow.cache.errors import CacheValueError
from taskiq_flow.storage.glob import compile_glob
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
        # Keys invalidated while their creation was in flight: that commit stores nothing.
        self._invalidated: set[str] = set()
        self._tags: dict[str, set[str]] = {}
        self._tag_pairs = 0
        self._swept_pairs = 0

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
        """Remove ``key`` (a creation of it in flight stores nothing); whether it was there."""
        check_cache_key(key)
        self._stop_flights((key,))
        return self._store.pop(key, time.time())

    async def clear(self) -> int:
        """Remove every entry; return how many live ones there were."""
        removed = self._store.clear(time.time())
        self._sweep_tags()
        return removed

    async def iter_keys(self, pattern: str = "*") -> AsyncIterator[str]:
        """Iterate the keys of live entries matching ``pattern`` (over a snapshot)."""
        match = compile_glob(check_cache_pattern(pattern))
        for key in self._store.live_keys(time.time()):
            if match(key):
                yield key

    async def delete_pattern(self, pattern: str) -> int:
        """Remove every entry whose key matches ``pattern``; how many live ones went."""
        match = compile_glob(check_cache_pattern(pattern))
        now = time.time()
        # Creations in flight count too, with or without an entry yet (no resurrection).
        self._stop_flights(filter(match, self._lock._flights))
        doomed = list(filter(match, self._store.live_keys(now)))
        return sum(self._store.pop(key, now) for key in doomed)

    async def tag(self, key: str, tags: Iterable[str], ttl_seconds: int | None = None) -> None:
        """Attach ``tags`` to ``key`` (see :meth:`BaseCacheAdapter.tag`)."""
        check_cache_key(key)
        checked = check_cache_tags(tags)
        self._tag_ttl(ttl_seconds)  # checked like the other backends' (no expiry here)
        for tag in checked:
            keys = self._tags.setdefault(tag, set())
            if key not in keys:
                keys.add(key)
                self._tag_pairs += 1
        if self._tag_pairs > 2 * self._swept_pairs + 1024:
            self._sweep_tags()

    async def iter_tagged(self, tag: str) -> AsyncIterator[str]:
        """Iterate the keys of the live entries carrying ``tag`` (over a snapshot)."""
        keys = self._tags.get(check_cache_tag(tag), set())
        for key in [key for key in self._store.live_keys(time.time()) if key in keys]:
            yield key

    async def invalidate_tag(self, tag: str) -> int:
        """Remove every entry tagged ``tag``; how many live ones went."""
        keys = self._tags.pop(check_cache_tag(tag), set())
        self._tag_pairs -= len(keys)
        self._stop_flights(keys)
        now = time.time()
        return sum(self._store.pop(key, now) for key in keys)

    def _stop_flights(self, keys: Iterable[str]) -> None:
        """Make the commit of every creation of ``keys`` in flight store nothing."""
        flights = self._lock._flights
        self._invalidated.update(key for key in keys if key in flights)
        if len(self._invalidated) > len(flights):
            # A creation that ended without its commit (none does today) leaves no mark.
            self._invalidated.intersection_update(flights)

    def _sweep_tags(self) -> None:
        """Drop the keys whose entries went (and creations ended) from every tag."""
        live = set(self._store.live_keys(time.time()))
        live.update(self._lock._flights)
        pairs = 0
        for tag, keys in list(self._tags.items()):
            keys.intersection_update(live)
            if keys:
                pairs += len(keys)
            else:
                del self._tags[tag]
        self._tag_pairs = self._swept_pairs = pairs

    # -- lease primitives: the in-process single flight already elected the creator ------

    async def _read_raw(self, key: str) -> bytes | None:
        item = self._store.get(key, _now())
        return None if item is None else item[0]

    async def _commit(
        self, key: str, token: str, payload: bytes | None, ttl_ms: int | None
    ) -> None:
        if self._invalidated and key in self._invalidated:
            # Invalidated while this creation ran: its value goes to its callers only.
            self._invalidated.discard(key)
            return
        if payload is not None:
            now = _now()
            self._store.put(key, (payload, now, None if ttl_ms is None else now + ttl_ms / 1000))
