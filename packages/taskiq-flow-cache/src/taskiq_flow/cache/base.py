"""``BaseCacheAdapter``: the interface every cache backend implements.

An adapter supplies storage (``get``/``set``/``delete``/``clear``) and the handful of lease
primitives the dogpile lock needs (:class:`taskiq_flow.cache.lock.LockBackend`); the lock
algorithm itself, ``get_or_create``, is written once in :mod:`taskiq_flow.cache.lock`.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Coroutine, Iterable
from typing import Any, Literal, overload

from taskiq_flow.cache._checks import (
    MAX_TAG_LENGTH,
    MAX_TAGS,
    check_cache_key,
    check_cache_pattern,
    check_cache_seconds,
    check_cache_tag,
    check_cache_tags,
    check_cache_ttl,
)
from taskiq_flow.cache._lookup import CacheLookup, _Lookups
from taskiq_flow.cache.codec import decode_entry
from taskiq_flow.cache.errors import CacheValueError
from taskiq_flow.cache.lock import Creator, DogpileLock, LeaseResult
from taskiq_flow.cache.shared_stats import SharedStats
from taskiq_flow.cache.stats import CacheStats
from taskiq_flow.storage.kit.lifecycle import AsyncClosing

__all__ = [
    "MAX_TAGS",
    "MAX_TAG_LENGTH",
    "BaseCacheAdapter",
    "CacheLookup",
    "check_cache_key",
    "check_cache_pattern",
    "check_cache_seconds",
    "check_cache_tag",
    "check_cache_tags",
    "check_cache_ttl",
]

_GRANTED = LeaseResult(None, True, None)


class BaseCacheAdapter(_Lookups, AsyncClosing, ABC):
    """A cache with a dogpile-protected ``get_or_create``.

    Values are anything msgspec's msgpack encoder accepts, stored encoded (a later mutation
    of the caller's object never changes a cached value). A stored ``None`` is a value.
    TTLs are positive ints in seconds; ``None`` means the adapter's ``default_ttl`` (and a
    ``default_ttl`` of ``None`` means "keep until evicted").

    Args:
        default_ttl: TTL used when a call passes none.
        max_wait: seconds a caller waits for another caller's creator before
            :class:`~taskiq_flow.cache.errors.CacheLockTimeout`.
        fallback_on_error: default of ``get_or_create(fallback_on_error=...)``: when the
            backend is down, call the creator uncached instead of raising.
        stale_ttl: default soft-expiry window of ``get_or_create`` (see there).
    """

    default_ttl: int | None
    _scope: str = "process"
    shared_stats: SharedStats | None = None
    """Where per-task counts go to be added up across processes (Redis: a hash); ``None``
    for a backend that lives in one process. Fed by ``CacheMiddleware``."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Refuse a lease hook the lock would never call (no ``_lease_seconds``)."""
        super().__init_subclass__(**kwargs)
        if cls._lease_seconds is not BaseCacheAdapter._lease_seconds:
            return
        ignored = [
            name
            for name in ("_acquire_lease", "_renew_lease", "_wait_for_release")
            if getattr(cls, name) is not getattr(BaseCacheAdapter, name)
        ]
        if ignored:
            msg = (
                f"{cls.__qualname__} overrides {', '.join(ignored)} but not _lease_seconds: "
                "the lock calls the lease hooks only when _lease_seconds is not None"
            )
            raise TypeError(msg)

    def __init__(
        self,
        *,
        default_ttl: int | None,
        max_wait: float,
        fallback_on_error: bool,
        stale_ttl: int | None = None,
    ) -> None:
        self.default_ttl = check_cache_ttl(default_ttl, "default_ttl")
        self.default_stale_ttl = check_cache_ttl(stale_ttl, "stale_ttl")
        self.fallback_on_error = bool(fallback_on_error)
        self._stats = CacheStats()
        max_wait = check_cache_seconds(max_wait, "max_wait")
        self._lock = DogpileLock(self, self._stats, max_wait=max_wait)

    # -- storage ---------------------------------------------------------------------------

    async def get(self, key: str, default: Any = None) -> Any:
        """Return the value under ``key`` (stale or not), or ``default``. One backend read."""
        check_cache_key(key)
        payload = await self._read_raw(key)
        if payload is not None:
            entry = decode_entry(key, payload)
            if entry is not None:
                self._stats.hits += 1
                return entry.value
            self._stats.corrupt_entries += 1
        self._stats.misses += 1
        return default

    @abstractmethod
    async def set(self, key: str, value: Any, ttl_seconds: int | None = None) -> None:
        """Store ``value`` under ``key`` for ``ttl_seconds`` (``None``: ``default_ttl``).

        Raises:
            CacheSerializationError: the value cannot be encoded; nothing is written.
            CacheValueError: a bad key or TTL.
        """

    @abstractmethod
    async def delete(self, key: str) -> bool:
        """Remove ``key``; return whether it was there."""

    async def invalidate(self, key: str) -> bool:
        """Alias of :meth:`delete`: drop ``key`` so the next ``get_or_create`` recreates it."""
        return await self.delete(key)

    @abstractmethod
    async def clear(self) -> int:
        """Remove every entry of this adapter (and nothing else); return how many."""

    # -- listing and invalidation ------------------------------------------------------------
    #
    # The no-resurrection rule: delete, invalidate, delete_pattern and invalidate_tag remove
    # an entry *and* its lease, and a creation stores its value only while its lease is
    # still its own. A creation in flight when its key is invalidated therefore returns
    # its value to its own caller (and to callers already waiting for it) but never writes
    # it back: the next get_or_create runs the creator again.

    async def keys(self, pattern: str = "*") -> list[str]:
        r"""Keys of the entries matching the Redis glob ``pattern``, sorted, each once.

        The storage package's glob rules on every backend (``*``, ``?``, ``[a-z]``,
        ``[^a]``, ``\\`` escapes: see :mod:`taskiq_flow.storage.glob`); ``""`` matches
        nothing. A key holding ``*?[]\\`` is matched literally by
        ``escape_glob(key)``.

        Raises:
            CacheKeyError: ``pattern`` is not a ``str`` encodable as UTF-8.
            CacheConnectionError: the backend is down.
        """
        return sorted({key async for key in self.iter_keys(pattern)})

    @abstractmethod
    def iter_keys(self, pattern: str = "*") -> AsyncIterator[str]:
        """Iterate the keys matching ``pattern`` in bounded memory, in no set order.

        On Redis (``SCAN``) a key may come twice if the server resizes its table
        meanwhile; :meth:`keys` removes duplicates. Errors as :meth:`keys`.
        """

    @abstractmethod
    async def delete_pattern(self, pattern: str) -> int:
        """Remove every entry whose key matches ``pattern`` (as :meth:`keys`); how many.

        Creations of matching keys in flight are invalidated too (their leases go): they
        store nothing. Bounded memory (Redis: ``SCAN`` batches). Errors as :meth:`keys`.
        """

    @abstractmethod
    async def tag(self, key: str, tags: Iterable[str], ttl_seconds: int | None = None) -> None:
        """Attach ``tags`` to ``key``, so that :meth:`invalidate_tag` removes its entry.

        Call it when the entry is written (before or after). A tag's record of its keys
        lives as long as the longest ``ttl_seconds`` given for it (``None``:
        ``default_ttl``; both ``None``: no expiry) plus ``stale_ttl``, never longer than
        needed; keys whose entries went are pruned.

        Raises:
            CacheValueError: a bad key, TTL or tag (see :func:`check_cache_tags`).
            CacheConnectionError: the backend is down.
        """

    @abstractmethod
    def iter_tagged(self, tag: str) -> AsyncIterator[str]:
        """Iterate the keys of the entries carrying ``tag``, in no set order.

        What :meth:`invalidate_tag` would remove now; a key may come twice on Redis.

        Raises:
            CacheValueError: a bad tag.
            CacheConnectionError: the backend is down.
        """

    @abstractmethod
    async def invalidate_tag(self, tag: str) -> int:
        """Remove every entry tagged ``tag`` (and the tag); return how many entries went.

        Bounded memory (Redis: batches of the tag's set). In-flight creations of those
        keys store nothing (see the no-resurrection rule above).

        Raises:
            CacheValueError: a bad tag.
            CacheConnectionError: the backend is down.
        """

    def _tag_ttl(self, ttl_seconds: int | None) -> int | None:
        """How long a tag must outlive a write with ``ttl_seconds``: its entry's hard expiry."""
        ttl = self.default_ttl if ttl_seconds is None else check_cache_ttl(ttl_seconds)
        if ttl is None:
            return None
        return ttl + (self.default_stale_ttl or 0)

    # -- dogpile ---------------------------------------------------------------------------

    def get_or_create(
        self,
        key: str,
        creator: Creator,
        ttl_seconds: int | None = None,
        *,
        stale_ttl: int | None = None,
        fallback_on_error: bool | None = None,
        lease_token: str | None = None,
    ) -> Coroutine[Any, Any, Any]:
        """Return the cached value of ``key``, running ``creator`` once if there is none.

        Use it as ``await cache.get_or_create(...)``. The arguments are checked when it
        is called (a bad key or TTL raises right there), then the returned coroutine is
        the lock itself: one coroutine per call, not two (a subclass may override it
        with a plain ``async def``).

        A fresh entry costs one backend read. On a miss exactly one caller (per key, across
        every process sharing the backend) runs ``creator``; the others wait and receive its
        value. A sync ``creator`` runs in a worker thread, an async one in the caller's task.

        Args:
            key: the cache key.
            creator: zero-argument callable (sync or async) producing the value.
            ttl_seconds: how long the value is fresh (``None``: ``default_ttl``).
            stale_ttl: stale-while-revalidate window: for this many seconds after
                ``ttl_seconds`` the old value is still served at once to every caller but
                one, which regenerates it. ``None``: the adapter default (no window).
            fallback_on_error: when the backend is unreachable, call ``creator`` uncached
                instead of raising (``None``: the adapter default).
            lease_token: the lease taken for this call by :meth:`lookup` with
                ``claim=True`` (in another process, say the one that sent the task):
                while it still holds the lease this call adopts it and creates at once.

        Raises:
            CacheLockTimeout: waited ``max_wait`` seconds for another caller's creator.
            CacheConnectionError: the backend is down (and no fallback was asked for).
            CacheSerializationError: the creator's value cannot be encoded.
            CacheValueError: a bad key or TTL.
            Exception: whatever ``creator`` raised, unchanged (nothing is cached).
        """
        # The usual arguments (an ASCII key, an int TTL, no stale window) pass these
        # inline tests; anything else goes through the full checks.
        if type(key) is not str or not key or not key.isascii():
            check_cache_key(key)
        if ttl_seconds is None:
            ttl = self.default_ttl
        elif type(ttl_seconds) is int and ttl_seconds > 0:
            ttl = ttl_seconds
        else:
            ttl = check_cache_ttl(ttl_seconds)
        if stale_ttl is None:
            stale = self.default_stale_ttl
        else:
            stale = check_cache_ttl(stale_ttl, "stale_ttl")
        if stale is not None and ttl is None:
            msg = "stale_ttl needs a TTL: pass ttl_seconds or set default_ttl"
            raise CacheValueError(msg)
        fallback = self.fallback_on_error if fallback_on_error is None else fallback_on_error
        return self._lock.get_or_create(key, creator, ttl, stale, fallback, lease_token)

    async def refresh(
        self,
        key: str,
        creator: Creator,
        ttl_seconds: int | None = None,
        *,
        stale_ttl: int | None = None,
        fallback_on_error: bool | None = None,
    ) -> Any:
        """Run ``creator`` and store its value under ``key``, even over a fresh entry.

        A forced refresh under the same lock as :meth:`get_or_create`: callers refreshing
        (or creating) ``key`` at the same time, in any process sharing the backend, run
        ``creator`` once and all get its value. The TTL starts again. Arguments and
        errors as :meth:`get_or_create`.
        """
        if type(key) is not str or not key or not key.isascii():
            check_cache_key(key)
        ttl = self.default_ttl if ttl_seconds is None else check_cache_ttl(ttl_seconds)
        stale = self.default_stale_ttl if stale_ttl is None else check_cache_ttl(stale_ttl)
        if stale is not None and ttl is None:
            msg = "stale_ttl needs a TTL: pass ttl_seconds or set default_ttl"
            raise CacheValueError(msg)
        fallback = self.fallback_on_error if fallback_on_error is None else fallback_on_error
        return await self._lock.refresh(key, creator, ttl, stale, fallback)

    @overload
    def get_stats(self, scope: Literal["process"] = "process") -> dict[str, Any]: ...

    @overload
    def get_stats(self, scope: Literal["cluster"]) -> Coroutine[Any, Any, dict[str, Any]]: ...

    def get_stats(
        self, scope: Literal["process", "cluster"] = "process"
    ) -> dict[str, Any] | Coroutine[Any, Any, dict[str, Any]]:
        """Counters of this adapter in this process, or (awaited) of every process.

        ``scope="process"`` (a dict): ``hits``, ``misses``, ``hit_rate`` (hits / (hits +
        misses), 0.0 before any lookup), ``stale_hits``, ``lock_waits``,
        ``lock_timeouts``, ``regenerations``, ``errors`` (= ``creator_errors`` +
        ``backend_errors`` + ``corrupt_entries``) and ``scope`` (``"process"``).

        ``scope="cluster"`` (``await cache.get_stats(scope="cluster")``): the per-task
        counts every process wrote to the backend's :attr:`shared_stats` (see
        :func:`taskiq_flow.cache.shared_stats.summarize`: totals, ``hit_rate`` and
        ``by_task``), this process's pending counts included. An adapter without shared
        stats (in memory: the cache lives in one process) gives its process counters,
        ``"scope": "process"`` and an empty ``by_task``.

        Raises:
            CacheValueError: another ``scope``.
            CacheConnectionError: (cluster) the backend is down.
        """
        if scope == "process":
            return self._stats.snapshot(self._scope)
        if scope == "cluster":
            return self._cluster_stats()
        raise CacheValueError(f"scope must be 'process' or 'cluster', got {scope!r}")

    async def _cluster_stats(self) -> dict[str, Any]:
        if self.shared_stats is None:
            return {**self._stats.snapshot(self._scope), "by_task": {}}
        return await self.shared_stats.read()

    # -- lease primitives: the protected hooks of taskiq_flow.cache.lock.LockBackend ------
    #
    # The lock calls these and nothing else, so a subclass overriding one (say _read_raw)
    # is honoured on every path. _acquire_lease, _renew_lease and _wait_for_release are
    # called only when _lease_seconds is not None (a cross-process lease exists).

    @property
    def _lease_seconds(self) -> float | None:
        """Lease period; ``None``: no cross-process lease (the single flight decides)."""
        return None

    @property
    def _poll_interval(self) -> float:
        """Longest a waiter blocks before it re-checks the value and the lease."""
        return 0.1

    @abstractmethod
    async def _read_raw(self, key: str) -> bytes | None:
        """The stored entry bytes under a checked ``key``, or ``None``."""

    async def _acquire_lease(self, key: str, token: str, *, ignore: bytes | None) -> LeaseResult:
        """See :meth:`taskiq_flow.cache.lock.LockBackend._acquire_lease`.

        Without a lease (``_lease_seconds`` is ``None``) the lock never calls this: the
        in-process single flight is the election. This default (re-read through
        :meth:`_read_raw`, else granted) keeps the hook's contract for direct callers.
        """
        payload = await self._read_raw(key)
        if payload is not None and payload != ignore:
            return LeaseResult(payload, False, None)
        return _GRANTED

    async def _read_or_acquire(self, key: str, token: str) -> LeaseResult:
        """See :meth:`taskiq_flow.cache.lock.LockBackend._read_or_acquire`.

        This default is a read, then (on a miss) :meth:`_acquire_lease`: two round trips.
        A backend that can do both in one (Redis: one script) overrides it.
        """
        payload = await self._read_raw(key)
        if payload is not None:
            return LeaseResult(payload, False, None)
        return await self._acquire_lease(key, token, ignore=None)

    async def _renew_lease(self, key: str, token: str) -> bool:
        """Extend the lease if ``token`` still holds it (no lease: nothing to renew)."""
        return True

    @abstractmethod
    async def _commit(
        self, key: str, token: str, payload: bytes | None, ttl_ms: int | None
    ) -> None:
        """See :meth:`taskiq_flow.cache.lock.LockBackend._commit`."""

    async def _wait_for_release(self, key: str, holder: str, within: float) -> None:
        """Sleep ``within`` seconds; backends with a push wake-up override this."""
        await asyncio.sleep(within)
