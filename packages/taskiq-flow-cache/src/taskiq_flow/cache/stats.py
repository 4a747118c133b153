"""Counters behind ``get_stats()``."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

__all__ = ["LOCK_WAIT", "CacheStats"]

LOCK_WAIT: ContextVar[float] = ContextVar("taskiq_flow_cache_lock_wait")
"""Seconds the last ``get_or_create``/``refresh`` of this context waited for another
caller's creator. Set only by a call that waited (a hit or an uncontended miss leaves it
as it was), so a reader takes it and resets it: ``LOCK_WAIT.get(0.0)``, then
``LOCK_WAIT.set(0.0)`` when it was not zero. Each asyncio task has its own copy."""


@dataclass
class CacheStats:
    """Mutable counters of one adapter instance (so, per process).

    ``hits`` counts values served from the cache (``stale_hits`` of them served stale while
    another caller regenerated); ``misses`` counts calls that found no usable value;
    ``lock_waits`` counts callers that waited for another caller's creator;
    ``lock_wait_seconds`` sums how long they waited; ``regenerations`` counts creator
    runs that succeeded; ``uncached`` counts calls whose creator ran without the cache
    because the backend was down (``fallback_on_error``); ``errors`` counts creator
    failures, backend failures and corrupt entries (also broken down).
    """

    hits: int = 0
    misses: int = 0
    stale_hits: int = 0
    lock_waits: int = 0
    lock_timeouts: int = 0
    lock_wait_seconds: float = 0.0
    uncached: int = 0
    regenerations: int = 0
    creator_errors: int = 0
    backend_errors: int = 0
    corrupt_entries: int = 0

    def snapshot(self, scope: str) -> dict[str, Any]:
        """Return the counters as a plain dict, with ``hit_rate`` and ``scope``."""
        lookups = self.hits + self.misses
        return {
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": self.hits / lookups if lookups else 0.0,
            "stale_hits": self.stale_hits,
            "lock_waits": self.lock_waits,
            "lock_timeouts": self.lock_timeouts,
            "lock_wait_seconds": self.lock_wait_seconds,
            "uncached": self.uncached,
            "regenerations": self.regenerations,
            "errors": self.creator_errors + self.backend_errors + self.corrupt_entries,
            "creator_errors": self.creator_errors,
            "backend_errors": self.backend_errors,
            "corrupt_entries": self.corrupt_entries,
            "scope": scope,
        }
