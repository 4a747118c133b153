"""The dogpile lock: one creator per key, in this process and across processes.

dogpile.cache's ``Lock`` (``dogpile/lock.py``) elects one thread to run the creator while the
others wait or keep returning the previous value. This is the same idea, async, with what a
distributed cache needs on top:

1. **Fresh hit** — one backend read, decode, return. Without a lease (in-memory) the read
   is ``_read_raw``; with one (Redis) it is ``_read_or_acquire``, which on a miss also
   takes the lease in the same round trip (so a miss is that and the commit: two).
2. **Miss** — in-process *single flight*: the first caller for a key registers a future in
   ``_flights`` (with a lease: before its first look, so whoever comes meanwhile joins the
   look itself and learns its outcome); every later caller in this process awaits that
   future (shielded, so one waiter giving up never cancels the creation). Only the flight
   leader talks to the backend's lease.
3. **Lease** (only for a backend with a cross-process lease — without one, step 2's flight
   is the whole election and its leader creates at once) — atomically: if a value
   appeared meanwhile, take it; otherwise take the lease (Redis: ``SET NX PX`` with a
   unique token) or learn the current holder's token. The holder runs the creator while a
   heartbeat renews the lease every third of its period (compare-token-then-``PEXPIRE``),
   so a slow creator never loses it. Commit writes the value only if the token still
   holds the lease (an invalidation removes the lease: the outdated value is not written
   back), releases it and wakes the waiters, in one atomic step.
4. **Waiting** (``_wait_for_release``) — a leader that lost the race blocks on a push
   wake-up tied to the holder's token, bounded by ``poll_interval``; every wake-up or
   poll re-runs step 3, so a holder that died (its lease lapsed) is replaced by exactly one
   waiter within one lease period plus one poll. After ``max_wait`` it raises
   :class:`CacheLockTimeout`.
5. **Stale-while-revalidate** — an entry written with ``stale_ttl`` carries a soft expiry.
   Past it, the one caller that wins the lease regenerates; everyone else (in this process:
   anyone who sees a flight in progress; elsewhere: anyone who fails the lease) gets the
   stale value at once. The backend keeps the entry until ``ttl + stale_ttl``.
6. **Failure** — the creator's exception goes to the caller and to every in-process waiter
   (the same object, so the same type); nothing is cached; the lease is released at once
   and waiters in other processes are woken and retry (an exception cannot cross a
   process boundary without pickle, which this package never uses).

The algorithm is written once here and shared by both adapters through
:class:`LockBackend`: creation, waiting, stale serving and failure are one path for every
backend; only the first look differs (a plain read without a lease, read-or-acquire
with one). An in-memory backend is fast because it has no lease (no token, no heartbeat,
no acquire round), not because it has a creation path of its own.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from typing import Any, cast

from taskiq_flow.cache._creation import _Creation
from taskiq_flow.cache._flight import (
    _BACKEND_ERRORS,
    _PENDING,
    _fail_flight,
    _land_flight,
    _LeaderGone,
    _new_request,
    _Pending,
    _Read,
    _Request,
)
from taskiq_flow.cache._lease import fresh_claim
from taskiq_flow.cache.backend import Creator, LeaseResult, LockBackend, call_creator
from taskiq_flow.cache.codec import CacheEntry, decode_entry
from taskiq_flow.cache.stats import CacheStats
from taskiq_flow.storage.kit.ratelog import OutageLog

__all__ = ["Creator", "DogpileLock", "LeaseResult", "LockBackend", "call_creator"]

logger = logging.getLogger("taskiq_flow.cache")


class DogpileLock(_Creation):
    """The get-or-create algorithm over a :class:`LockBackend` (see the module docstring).

    Args:
        backend: the adapter providing storage and lease primitives.
        stats: counters to update (backend failures are counted by the backend).
        max_wait: seconds a caller waits for another caller's creator before
            :class:`CacheLockTimeout`.
    """

    def __init__(self, backend: LockBackend, stats: CacheStats, *, max_wait: float) -> None:
        self._backend = backend
        self._stats = stats
        self.max_wait = max_wait
        # key -> the future its in-process waiters await; _PENDING while its leader runs
        # with nobody waiting yet: the first waiter turns it into a future, so the
        # uncontended miss (the common one) allocates none.
        self._flights: dict[str, asyncio.Future[Any] | _Pending] = {}
        # Creations committed by this lock so far. A lease-less miss whose read saw this
        # unchanged knows no flight here landed a value while the read was suspended.
        self._landed = 0
        # Whether the backend has a cross-process lease; asked once, on the first call
        # (an adapter sets its lease period after building its lock).
        self._leased: bool | None = None
        # Keys whose flight regenerates a stale entry (callers meanwhile get the stale one).
        self._regenerating: set[str] = set()
        # Keys whose flight is, for now, only a first look (a read): refresh waits it out.
        self._reading: set[str] = set()
        # Lease releases left to run after a caller was cancelled mid-look (kept referenced).
        self._releasing: set[asyncio.Task[None]] = set()
        # Lease tokens: unique across processes (a random prefix), cheap per call.
        self._token_prefix = secrets.token_hex(8)
        self._token_count = itertools.count()
        # A backend outage makes every call fall back: one line per interval, not per call.
        self.outage = OutageLog(logger, "cache backend", interval=30.0, level=logging.WARNING)

    async def get_or_create(  # noqa: PLR0917 - hit and miss in one frame (hot path)
        self,
        key: str,
        creator: Creator,
        ttl_seconds: int | None,
        stale_ttl: int | None,
        fallback_on_error: bool,
        lease_token: str | None = None,
    ) -> Any:
        """Return the cached value for ``key``, creating it once if needed (validated args).

        ``lease_token``: a lease already taken for this call (by a producer's
        ``lookup(claim=True)``); when it still holds the lease, this call adopts it.
        """
        leased = self._leased
        if leased is None:
            leased = self._leased = self._backend._lease_seconds is not None
        if leased:
            return await self._get_or_create_leased(
                key, creator, ttl_seconds, stale_ttl, fallback_on_error, lease_token
            )
        # The hit path is kept short on purpose: one read, one decode (_decode_hit, shared
        # with the leased path), no allocation besides.
        landed = self._landed
        try:
            payload = await self._backend._read_raw(key)
        except _BACKEND_ERRORS:
            if not fallback_on_error:
                raise
            return await self._uncached(
                _Request(key, creator, ttl_seconds, stale_ttl, True, lease_token)
            )
        if payload is not None:
            found = self._decode_hit(key, payload)
            if type(found) is CacheEntry:
                return found.value
            if found is not None:
                return await self._serve_stale(
                    _Request(key, creator, ttl_seconds, stale_ttl, fallback_on_error, lease_token),
                    found.value,
                    payload,
                    landed,
                )
        self._stats.misses += 1
        # The miss without a lease: the in-process single flight is the election.
        flights = self._flights
        if key in flights:
            return await self._join(
                key, creator, ttl_seconds, stale_ttl, fallback_on_error, lease_token
            )
        # Nobody here is filling the key: lead its flight. While it is ours nobody else
        # registers one (they join it), so the entry popped below is always ours.
        flights[key] = _PENDING
        try:
            # tuple.__new__: the NamedTuple's own __new__ is a Python frame on every miss.
            request = _new_request(
                _Request, (key, creator, ttl_seconds, stale_ttl, fallback_on_error, lease_token)
            )
            if self._landed == landed:
                # No flight here landed a value while the read was suspended (a
                # backend's _read_raw may await), so there is nothing to re-read.
                value = await self._create(request, "", None)
            else:
                value = await self._create_unless_landed(request, payload)
        except BaseException as exc:
            _fail_flight(flights, key, exc)
            raise
        _land_flight(flights, key, value)
        return value

    async def _get_or_create_leased(  # noqa: PLR0912, PLR0917 - get_or_create's (hot path: one frame)
        self,
        key: str,
        creator: Creator,
        ttl_seconds: int | None,
        stale_ttl: int | None,
        fallback_on_error: bool,
        lease_token: str | None,
    ) -> Any:
        """``get_or_create`` over a cross-process lease: a hit is one round trip, a miss two.

        The first look (:meth:`LockBackend._read_or_acquire`) returns the entry, or takes
        the lease in the same round trip. Its caller leads this process's flight of the
        key from before that round trip, so a concurrent caller here joins it (no round
        trip of its own) and always learns the leader's outcome: its hit, its value, its
        error. A regeneration of a stale entry is not joined: its callers read and get the
        stale value.
        """
        flights = self._flights
        lead = key not in flights
        if (
            lead
            and lease_token
            and (fresh := fresh_claim(lease_token, key, cast(float, self._backend._lease_seconds)))
        ):
            return await self._adopt_fresh(
                _Request(key, creator, ttl_seconds, stale_ttl, fallback_on_error, lease_token),
                lease_token,
                fresh,
            )
        if not lead and key not in self._regenerating:
            return await self._join(
                key, creator, ttl_seconds, stale_ttl, fallback_on_error, lease_token
            )
        req = _new_request(
            _Request, (key, creator, ttl_seconds, stale_ttl, fallback_on_error, lease_token)
        )
        if lead:
            flights[key] = _PENDING
            self._reading.add(key)
        token = lease_token or f"{self._token_prefix}{next(self._token_count):x}"
        try:
            try:
                try:
                    lease = await self._backend._read_or_acquire(key, token)
                finally:
                    # However the read ended, the flight is no longer only a read: a refresh
                    # joins it from now on (_reads_done) instead of waiting for its end.
                    if lead:
                        self._reading.discard(key)
            except _BACKEND_ERRORS:
                if not fallback_on_error:
                    raise
                value = await self._uncached(req)
            except asyncio.CancelledError:
                # The script may have run (a coalesced batch is sent all the same) and
                # taken the lease: give it back rather than make everyone wait it out.
                self._release_later(key, token)
                raise
            else:
                if self.outage.failing:
                    self.outage.success()
                value = await self._first_look(req, token, lease, lead)
        except BaseException as exc:
            if lead:
                _fail_flight(flights, key, exc)
            raise
        if lead and key in flights and key not in self._regenerating:
            # Still ours (a read landed it already, as a _Read): a created or uncached value.
            _land_flight(flights, key, value)
        return value

    async def _first_look(self, req: _Request, token: str, lease: LeaseResult, lead: bool) -> Any:
        """What the first look found: a hit, a stale entry, a miss (lease taken or held)."""
        key = req.key
        payload = lease.payload
        if payload is not None:
            found = self._decode_hit(key, payload)
            if type(found) is CacheEntry:
                if lead:
                    _land_flight(self._flights, key, _Read(found.value, False))
                return found.value
            if found is not None:
                if lead:
                    # Whoever joined us gets the stale value now; the regeneration is
                    # a flight of its own.
                    _land_flight(self._flights, key, found)
                return await self._serve_stale(req, found.value, payload, self._landed)
        self._stats.misses += 1
        lease_seconds = cast(float, self._backend._lease_seconds)
        if not lead:
            # We came in during a regeneration and found no usable entry: wait for it.
            if lease.acquired or lease.holder == token:
                await self._release_quietly(key, token)
            return await self._join(*req)
        # Ours: taken now, or held by this call's token already (adopted from a producer,
        # or taken by a repetition of the script after a dropped connection).
        if lease.acquired or (payload is None and await self._adopted(key, token, lease)):
            return await self._create(req, token, lease_seconds)
        # Someone elsewhere holds it (wait), or the entry was corrupt (take it over).
        return await self._fill(req, payload, lease_seconds, token, None if payload else lease)

    def _decode_hit(self, key: str, payload: bytes) -> CacheEntry | _Read | None:
        """Decode the entry a first look found, with or without a lease.

        Returns the entry if it is fresh (a hit, counted), ``_Read(value, True)`` if it is
        past its soft expiry (the caller serves it stale), ``None`` if it is corrupt
        (counted; a miss for the caller). A fresh hit allocates nothing: the hot path.
        """
        entry = decode_entry(key, payload)
        if entry is None:
            self._stats.corrupt_entries += 1
            return None
        soft_expiry = entry.soft_expiry
        if soft_expiry is None or time.time() < soft_expiry:
            self._stats.hits += 1
            return entry
        return _Read(entry.value, True)

    async def refresh(
        self,
        key: str,
        creator: Creator,
        ttl_seconds: int | None,
        stale_ttl: int | None,
        fallback_on_error: bool,
    ) -> Any:
        """Create ``key`` anew even if its entry is fresh; concurrent refreshes run once.

        The value read first is treated as absent: the caller takes the lease (or joins
        this process's creation of ``key``) and overwrites it. A caller that finds the
        lease taken waits for the holder and returns the value it committed, as on a miss.
        """
        flights = self._flights
        await self._reads_done(key)
        if key in flights:
            return await self._join(key, creator, ttl_seconds, stale_ttl, fallback_on_error, None)
        request = _Request(key, creator, ttl_seconds, stale_ttl, fallback_on_error, None)
        try:
            seen = await self._backend._read_raw(key)
        except _BACKEND_ERRORS:
            if not fallback_on_error:
                raise
            return await self._uncached(request)
        await self._reads_done(key)
        if key in flights:  # a creation started while we read
            return await self._join(key, creator, ttl_seconds, stale_ttl, fallback_on_error, None)
        self._stats.misses += 1
        flights[key] = _PENDING
        try:
            lease_seconds = self._backend._lease_seconds
            if lease_seconds is None:
                value = await self._create(request, "", None)
            else:
                value = await self._fill(request, seen, lease_seconds, secrets.token_hex(16), None)
        except BaseException as exc:
            _fail_flight(flights, key, exc)
            raise
        _land_flight(flights, key, value)
        return value

    async def _reads_done(self, key: str) -> None:
        """Wait while this process's flight of ``key`` is only a read (refresh must create).

        A read flight ends within one round trip (or turns into a creation, which a
        refresh then joins).
        """
        while key in self._reading:
            await self.wait_for_flight(key, self.max_wait)

    # -- miss: joining this process's flight ----------------------------------------------

    async def _join(  # noqa: PLR0917 - get_or_create's arguments, passed on
        self,
        key: str,
        creator: Creator,
        ttl_seconds: int | None,
        stale_ttl: int | None,
        fallback_on_error: bool,
        lease_token: str | None,
    ) -> Any:
        """Wait for this process's flight of ``key``; lead a new one if its leader is gone."""
        flights = self._flights
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while (flight := flights.get(key)) is not None:
            if isinstance(flight, _Pending):
                flights[key] = flight = loop.create_future()
            try:
                return await self._await_flight(key, flight, deadline)
            except _LeaderGone:
                continue
        # The leader was cancelled and nobody took over yet: start over (one read).
        return await self.get_or_create(
            key, creator, ttl_seconds, stale_ttl, fallback_on_error, lease_token
        )

    # -- what a producer asks before sending (BaseCacheAdapter.lookup) ---------------------

    def in_flight(self, key: str) -> bool:
        """Whether a creation of ``key`` is running in this process."""
        return key in self._flights

    async def wait_for_flight(self, key: str, within: float) -> None:
        """Wait until this process's creation of ``key`` ends, at most ``within`` seconds.

        Returns quietly however it ended (value, error, timeout): the caller re-reads.
        """
        flight = self._flights.get(key)
        if flight is None:
            return
        if isinstance(flight, _Pending):
            flight = self._flights[key] = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(flight), within)
        except Exception:  # its value, its error, _LeaderGone or the timeout: re-read
            return
