"""Asking without creating: :meth:`BaseCacheAdapter.lookup` and what it answers.

What a producer asks before it sends a task (the middlewares' answer at send): is the
value there, is someone creating it, may I claim its creation? It asks through the lease
hooks the lock uses and runs nothing. A feature built on the adapter interface rather
than part of it, so it has a module of its own: :class:`_Lookups` is a base of
:class:`~taskiq_flow.cache.base.BaseCacheAdapter` (which re-exports ``CacheLookup``) and
declares the attributes and hooks of the adapter it uses.
"""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from taskiq_flow.cache._checks import check_cache_key
from taskiq_flow.cache._lease import claim_token
from taskiq_flow.cache.codec import CacheEntry, decode_entry

if TYPE_CHECKING:
    from taskiq_flow.cache.backend import LeaseResult
    from taskiq_flow.cache.lock import DogpileLock
    from taskiq_flow.cache.stats import CacheStats

__all__ = ["CacheLookup"]


class CacheLookup(NamedTuple):
    """What :meth:`BaseCacheAdapter.lookup` found under a key, without creating anything.

    ``state`` is one of:

    - ``"hit"``: a fresh value (``value``);
    - ``"stale"``: a value past its soft expiry (``value``), still served; with
      ``token`` set, this caller holds the lease for its one regeneration;
    - ``"in_flight"``: no value, but a creation is running (``holder``: the lease token
      to wait for with :meth:`BaseCacheAdapter.wait_for_release`; ``""`` for a creation
      in this process on a backend without a cross-process lease);
    - ``"miss"``: nothing, nobody creating it; with ``token`` set, this caller now holds
      the lease and must hand it to the creator (``get_or_create(lease_token=token)``)
      or give it back (:meth:`BaseCacheAdapter.release_lease`).
    """

    state: Literal["hit", "stale", "in_flight", "miss"]
    value: Any = None
    token: str | None = None
    holder: str | None = None


_MISS = CacheLookup("miss")


class _Lookups:
    """``lookup``, ``wait_for_release`` and ``release_lease`` of every cache adapter."""

    # Set by BaseCacheAdapter.__init__, or defined there (the lease hooks): declared for
    # the type checker only, so nothing here shadows the adapter's own.
    _lock: DogpileLock
    _stats: CacheStats

    if TYPE_CHECKING:

        @property
        def _lease_seconds(self) -> float | None: ...

        @property
        def _poll_interval(self) -> float: ...

        async def _read_raw(self, key: str) -> bytes | None: ...

        async def _acquire_lease(
            self, key: str, token: str, *, ignore: bytes | None
        ) -> LeaseResult: ...

        async def _read_or_acquire(self, key: str, token: str) -> LeaseResult: ...

        async def _commit(
            self, key: str, token: str, payload: bytes | None, ttl_ms: int | None
        ) -> None: ...

        async def _wait_for_release(self, key: str, holder: str, within: float) -> None: ...

    # -- asking without creating (answer at send) -------------------------------------------

    @property
    def shares_leases(self) -> bool:
        """Whether the lock's lease holds across processes (so :meth:`lookup` can claim)."""
        return self._lease_seconds is not None

    async def lookup(  # noqa: PLR0911 - one return per outcome
        self, key: str, *, claim: bool = False
    ) -> CacheLookup:
        """Say what is under ``key`` (see :class:`CacheLookup`) without running anything.

        One backend round trip for a hit, a miss or a creation in flight; a stale entry
        with ``claim`` costs a second one (the claim of its regeneration). Counts hits
        and stale hits; a miss is left for the ``get_or_create`` that follows to count.

        Args:
            key: the cache key.
            claim: on a miss (or a stale entry) take the lease if nobody holds it, so
                that identical lookups elsewhere see the call in flight. Only backends
                with a cross-process lease can claim; others report ``token=None``.

        Raises:
            CacheConnectionError: the backend is down.
            CacheKeyError: a bad key.
        """
        if type(key) is not str or not key or not key.isascii():
            check_cache_key(key)
        if not claim or self._lease_seconds is None:
            payload = await self._read_raw(key)
            if payload is not None:
                entry = decode_entry(key, payload)
                if entry is not None:
                    return self._found(entry, None)
                self._stats.corrupt_entries += 1
            if self._lock.in_flight(key):
                return CacheLookup("in_flight", holder="")
            return _MISS
        token = claim_token(key, round(self._lease_seconds * 1000))
        # The worker's first look: one script, coalesced with the other lookups in flight.
        lease = await self._read_or_acquire(key, token)
        if lease.payload is None:
            if lease.acquired:
                return CacheLookup("miss", token=token)
            return CacheLookup("in_flight", holder=lease.holder)
        entry = decode_entry(key, lease.payload)
        if entry is None:
            # Corrupt bytes: not a value. Whoever runs the call replaces them.
            self._stats.corrupt_entries += 1
            return _MISS
        if entry.soft_expiry is None or time.time() < entry.soft_expiry:
            return self._found(entry, None)
        # Stale: claim its one regeneration (unless another caller holds it, or refreshed it).
        # A token of no claim shape: the worker that regenerates takes the first look,
        # which serves the stale value to its process's other callers meanwhile.
        token = secrets.token_hex(16)
        refresh = await self._acquire_lease(key, token, ignore=lease.payload)
        if refresh.payload is not None:
            newer = decode_entry(key, refresh.payload)
            if newer is not None:
                return self._found(newer, None)
        return self._found(entry, token if refresh.acquired else None)

    def _found(self, entry: CacheEntry, token: str | None) -> CacheLookup:
        self._stats.hits += 1
        if entry.soft_expiry is None or time.time() < entry.soft_expiry:
            return CacheLookup("hit", entry.value)
        self._stats.stale_hits += 1
        return CacheLookup("stale", entry.value, token)

    async def wait_for_release(self, key: str, holder: str, within: float) -> None:
        """Block until ``holder`` (a :class:`CacheLookup` holder) lets go of ``key``.

        Woken by push where the backend has one (Redis: the holder's release list);
        returns after at most ``within`` seconds, and at most one poll interval, either
        way: the caller then asks :meth:`lookup` again (a lapsed lease shows as a miss).

        Raises:
            CacheConnectionError: the backend is down.
        """
        if self._lease_seconds is None:
            await self._lock.wait_for_flight(key, within)
            return
        if within > 0:
            await self._wait_for_release(key, holder, min(within, self._poll_interval))

    async def release_lease(self, key: str, token: str) -> None:
        """Give back a lease taken by :meth:`lookup` (compare-and-delete; wakes waiters).

        A no-op when ``token`` no longer holds it.

        Raises:
            CacheConnectionError: the backend is down.
        """
        if self._lease_seconds is not None:
            await self._commit(key, token, None, None)

    def release_lease_soon(self, key: str, token: str) -> None:
        """Give back a lease taken by :meth:`lookup`, in the background (never raises).

        For a caller that must not wait on the cache (a producer's send): a failure is
        logged and the lease lapses. ``close()`` waits a moment for such releases. Needs
        a running event loop.
        """
        if self._lease_seconds is not None:
            self._lock._release_later(key, token)
