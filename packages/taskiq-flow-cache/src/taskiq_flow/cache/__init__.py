"""Caches with a dogpile lock that holds across processes.

``InMemoryCacheAdapter`` for one process, ``RedisCacheAdapter`` (extra ``[redis]``,
imported lazily) for many. Both share :mod:`taskiq_flow.cache.lock`: one backend read on a
fresh hit, one creator per key on a miss, stale-while-revalidate, a leased and renewed
cross-process lock on Redis.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from taskiq_flow.cache.backend import Expiring
from taskiq_flow.cache.base import BaseCacheAdapter, CacheLookup
from taskiq_flow.cache.errors import (
    CacheBackendError,
    CacheConnectionError,
    CacheError,
    CacheKeyError,
    CacheLockTimeout,
    CacheSerializationError,
    CacheValueError,
)
from taskiq_flow.cache.memory import InMemoryCacheAdapter
from taskiq_flow.cache.shared_stats import SharedStats
from taskiq_flow.storage.kit.lifecycle import lazy_exports

if TYPE_CHECKING:
    from taskiq_flow.cache.redis import RedisCacheAdapter

__all__ = [
    "BaseCacheAdapter",
    "CacheBackendError",
    "CacheConnectionError",
    "CacheError",
    "CacheKeyError",
    "CacheLockTimeout",
    "CacheLookup",
    "CacheSerializationError",
    "CacheValueError",
    "Expiring",
    "InMemoryCacheAdapter",
    "RedisCacheAdapter",
    "SharedStats",
]


# The Redis adapter needs the optional `redis` client: import it only when asked for.
__getattr__ = lazy_exports(__name__, {"RedisCacheAdapter": "taskiq_flow.cache.redis"})
