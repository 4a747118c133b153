"""``InMemoryCacheAdapter``: a per-process cache, LRU-bounded, stampede-protected.

Entries are stored encoded (msgpack) with a monotonic hard expiry. The dogpile lock's
single flight is all the locking a single process needs, so the lease primitives here are
trivial: whoever leads the flight for a key holds it.
"""

from __future__ import annotations

import heapq
import time
from collections import OrderedDict
from typing import Any

from taskiq_flow.cache.base import BaseCacheAdapter, check_key, check_ttl
from taskiq_flow.cache.codec import encode_entry
from taskiq_flow.cache.errors import CacheValueError
from taskiq_flow.cache.lock import LeaseResult

__all__ = ["InMemoryCacheAdapter"]


class InMemoryCacheAdapter(BaseCacheAdapter):
    """A cache living in this process's memory.

    Safe under any number of concurrent tasks on one event loop. ``get_or_create`` runs the
    creator once per key however many tasks ask at the same time.

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
        if max_entries is not None and (type(max_entries) is not int or max_entries <= 0):
            msg = f"max_entries must be a positive int or None, got {max_entries!r}"
            raise CacheValueError(msg)
        super().__init__(
            default_ttl=default_ttl,
            max_wait=max_wait,
            fallback_on_error=fallback_on_error,
            stale_ttl=stale_ttl,
        )
        self.max_entries = max_entries
        # key -> (encoded entry, monotonic hard expiry or None); order = recency of use.
        self._entries: OrderedDict[str, tuple[bytes, float | None]] = OrderedDict()
        # (expiry, key) for sweeping; may hold outdated pairs, checked against _entries.
        self._expiries: list[tuple[float, str]] = []

    def __repr__(self) -> str:
        return f"InMemoryCacheAdapter(entries={len(self._entries)}, max_entries={self.max_entries})"

    def __len__(self) -> int:
        return len(self._entries)

    # -- storage ---------------------------------------------------------------------------

    def _read_now(self, key: str) -> bytes | None:
        item = self._entries.get(key)
        if item is None:
            return None
        payload, expires_at = item
        if expires_at is not None and time.monotonic() >= expires_at:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return payload

    def _store_now(self, key: str, payload: bytes, ttl_ms: int | None) -> None:
        entries = self._entries
        if key in entries:
            del entries[key]  # re-inserted below: last in recency order
        now = time.monotonic()
        heap = self._expiries
        if ttl_ms is None:
            entries[key] = (payload, None)
        else:
            expires_at = now + ttl_ms / 1000
            entries[key] = (payload, expires_at)
            heapq.heappush(heap, (expires_at, key))
        # Drop what has expired before the LRU bound below can evict a live entry.
        if heap and (heap[0][0] <= now or len(heap) > 2 * len(entries) + 64):
            self._sweep(now)
        max_entries = self.max_entries
        if max_entries is not None and len(entries) > max_entries:
            while len(entries) > max_entries:
                entries.popitem(last=False)

    def _sweep(self, now: float) -> None:
        heap, entries = self._expiries, self._entries
        while heap and heap[0][0] <= now:
            expires_at, key = heapq.heappop(heap)
            item = entries.get(key)
            if item is not None and item[1] == expires_at:
                del entries[key]
        # Overwritten or evicted keys leave outdated pairs behind; rebuild before they
        # dominate.
        if len(heap) > 2 * len(entries) + 64:
            self._expiries = [(exp, k) for k, (_, exp) in entries.items() if exp is not None]
            heapq.heapify(self._expiries)

    async def set(self, key: str, value: Any, ttl_seconds: int | None = None) -> None:
        """Store ``value`` under ``key`` for ``ttl_seconds`` (``None``: ``default_ttl``)."""
        check_key(key)
        ttl = self.default_ttl if ttl_seconds is None else check_ttl(ttl_seconds)
        self._store_now(key, encode_entry(key, value), None if ttl is None else ttl * 1000)

    async def delete(self, key: str) -> bool:
        """Remove ``key``; return whether a live entry was there."""
        check_key(key)
        found = self._read_now(key) is not None
        self._entries.pop(key, None)
        return found

    async def clear(self) -> int:
        """Remove every entry; return how many live ones there were."""
        now = time.monotonic()
        live = sum(1 for _, exp in self._entries.values() if exp is None or exp > now)
        self._entries.clear()
        self._expiries.clear()
        return live

    async def close(self) -> None:
        """Drop every entry. Idempotent."""
        self._entries.clear()
        self._expiries.clear()

    # -- lease primitives: the in-process single flight already elected the creator ------

    @property
    def _in_process(self) -> bool:
        # Every primitive below completes without suspending, and the lock then reads and
        # writes through _read_now/_store_now only: a subclass that awaits in, or
        # overrides, _read_raw/_acquire_lease/_commit must return False here.
        return True

    async def _read_raw(self, key: str) -> bytes | None:
        return self._read_now(key)

    async def _acquire_lease(self, key: str, token: str, *, ignore: bytes | None) -> LeaseResult:
        payload = self._read_now(key)
        if payload is not None and payload != ignore:
            return LeaseResult(payload, False, None)
        return LeaseResult(None, True, None)

    async def _commit(
        self, key: str, token: str, payload: bytes | None, ttl_ms: int | None
    ) -> None:
        if payload is not None:
            self._store_now(key, payload, ttl_ms)
