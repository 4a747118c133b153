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
from inspect import CO_COROUTINE
from types import FunctionType
from typing import Any, NamedTuple, cast

from taskiq_flow.cache.backend import Creator, Expiring, LeaseResult, LockBackend, call_creator
from taskiq_flow.cache.codec import decode_entry, encode_entry
from taskiq_flow.cache.errors import (
    CacheBackendError,
    CacheConnectionError,
    CacheLockTimeout,
    CacheValueError,
)
from taskiq_flow.cache.stats import LOCK_WAIT, CacheStats
from taskiq_flow.storage.kit.checks import check_ttl
from taskiq_flow.storage.kit.ratelog import OutageLog

__all__ = ["Creator", "DogpileLock", "LeaseResult", "LockBackend", "call_creator"]

logger = logging.getLogger("taskiq_flow.cache")

_BACKEND_ERRORS = (CacheConnectionError, CacheBackendError)


class _Request(NamedTuple):
    """One validated ``get_or_create`` call."""

    key: str
    creator: Creator
    ttl_seconds: int | None
    stale_ttl: int | None
    fallback_on_error: bool
    lease_token: str | None = None
    """A lease taken for this call elsewhere (``lookup(claim=True)``), adopted here."""


_new_request = tuple.__new__
_GRANTED = LeaseResult(None, True, None)


class _Pending:
    """The flight marker of a lone creator that nobody waits for yet."""

    __slots__ = ()


_PENDING = _Pending()


class _Read(NamedTuple):
    """A flight that ended in a read (a hit, or a stale value), as its joiners receive it.

    They count it as the hit it is, not as a wait for a creator.
    """

    value: Any
    stale: bool


class _LeaderGone(Exception):
    """The flight leader was cancelled: its in-process waiters start over."""


# Immutable values msgpack gives back equal and of the same type: no copy needed.
_SAME_WHEN_DECODED = frozenset({bytes, str, int, float, bool, type(None)})


def _as_returned(key: str, value: Any, payload: bytes) -> Any:
    """What a creator's caller gets: what a later hit would return, not the creator's object.

    That is a decoded copy of ``payload``, except for the immutable types above.
    """
    if type(value) in _SAME_WHEN_DECODED:
        return value  # callers on the hot path test this first themselves
    entry = decode_entry(key, payload)
    return value if entry is None else entry.value


class DogpileLock:
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
        # The hit path is kept flat on purpose: one read, one decode, no allocation besides.
        landed = self._landed
        try:
            payload = await self._backend._read_raw(key)
        except _BACKEND_ERRORS:
            if not fallback_on_error:
                raise
            return await self._uncached(
                _Request(key, creator, ttl_seconds, stale_ttl, True, lease_token)
            )
        stats = self._stats
        if payload is not None:
            entry = decode_entry(key, payload)
            if entry is not None:
                soft_expiry = entry.soft_expiry
                if soft_expiry is None or time.time() < soft_expiry:
                    stats.hits += 1
                    return entry.value
                return await self._serve_stale(
                    _Request(key, creator, ttl_seconds, stale_ttl, fallback_on_error, lease_token),
                    entry.value,
                    payload,
                    landed,
                )
            stats.corrupt_entries += 1
        stats.misses += 1
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

    async def _get_or_create_leased(  # noqa: PLR0917 - get_or_create's arguments
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
                lease = await self._backend._read_or_acquire(key, token)
            except _BACKEND_ERRORS:
                if lead:
                    self._reading.discard(key)
                if not fallback_on_error:
                    raise
                value = await self._uncached(req)
            except asyncio.CancelledError:
                # The script may have run (a coalesced batch is sent all the same) and
                # taken the lease: give it back rather than make everyone wait it out.
                self._release_later(key, token)
                raise
            else:
                if lead:
                    self._reading.discard(key)
                if self.outage.failing:
                    self.outage.success()
                value = await self._first_look(req, token, lease, lead)
        except BaseException as exc:
            if lead:
                self._reading.discard(key)
                _fail_flight(flights, key, exc)
            raise
        if lead and key in flights and key not in self._regenerating:
            # Still ours (a read landed it already, as a _Read): a created or uncached value.
            _land_flight(flights, key, value)
        return value

    async def _first_look(self, req: _Request, token: str, lease: LeaseResult, lead: bool) -> Any:
        """What the first look found: a hit, a stale entry, a miss (lease taken or held)."""
        key = req.key
        stats = self._stats
        payload = lease.payload
        if payload is not None:
            entry = decode_entry(key, payload)
            if entry is not None:
                soft_expiry = entry.soft_expiry
                if soft_expiry is None or time.time() < soft_expiry:
                    stats.hits += 1
                    if lead:
                        _land_flight(self._flights, key, _Read(entry.value, False))
                    return entry.value
                if lead:
                    # Whoever joined us gets the stale value now; the regeneration is
                    # a flight of its own.
                    _land_flight(self._flights, key, _Read(entry.value, True))
                return await self._serve_stale(req, entry.value, payload, self._landed)
            stats.corrupt_entries += 1
        stats.misses += 1
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

    def _release_later(self, key: str, token: str) -> None:
        """Release ``token``'s lease on ``key`` (if it holds it) in a task of its own."""
        task = asyncio.get_running_loop().create_task(self._release_quietly(key, token))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    # -- miss: joining a flight; the lease ---------------------------------------------

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

    async def _await_flight(self, key: str, flight: asyncio.Future[Any], deadline: float) -> Any:
        stats = self._stats
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            # shield: a waiter that times out or is cancelled must not cancel the creation.
            result = await asyncio.wait_for(asyncio.shield(flight), deadline - started)
        except TimeoutError:
            stats.lock_waits += 1
            self._waited(loop.time() - started)
            if flight.done():
                raise
            stats.lock_timeouts += 1
            raise CacheLockTimeout(key, loop.time() - started) from None
        except BaseException:
            stats.lock_waits += 1
            self._waited(loop.time() - started)
            raise
        if type(result) is _Read:
            # The leader's first look found the entry: a hit for us too, no creator waited on.
            stats.hits += 1
            if result.stale:
                stats.stale_hits += 1
            return result.value
        stats.lock_waits += 1
        self._waited(loop.time() - started)
        return result

    def _waited(self, seconds: float) -> None:
        """Note how long a caller waited for another's creator (stats, ``LOCK_WAIT``)."""
        self._stats.lock_wait_seconds += seconds
        LOCK_WAIT.set(seconds)

    async def _create_unless_landed(self, req: _Request, seen: bytes | None) -> Any:
        """Lease-less miss after a flight here landed a value during our read: re-read."""
        payload = await self._backend._read_raw(req.key)
        if payload is not None and payload != seen:
            entry = decode_entry(req.key, payload)
            if entry is not None:
                return entry.value
            self._stats.corrupt_entries += 1
        return await self._create(req, "", None)

    async def _fill(  # noqa: PLR0912 - the waiter's loop, one frame
        self,
        req: _Request,
        ignore: bytes | None,
        lease_seconds: float,
        token: str,
        lease: LeaseResult | None,
    ) -> Any:
        """Take the lease and create, take a value that appeared, or wait for the holder.

        ``token``: this call's (unique per call: the release is compare-and-delete; an
        adopted lease keeps the producer's). ``lease``: the outcome of a first attempt
        already made (``None``: start by asking).
        """
        key = req.key
        backend = self._backend
        loop = asyncio.get_running_loop()
        started: float | None = None
        deadline: float | None = None
        try:
            while True:
                if lease is None:
                    try:
                        lease = await backend._acquire_lease(key, token, ignore=ignore)
                    except _BACKEND_ERRORS:
                        if not req.fallback_on_error:
                            raise
                        return await self._uncached(req)
                if lease.acquired or await self._adopted(key, token, lease):
                    return await self._create(req, token, lease_seconds)
                if lease.payload is not None:
                    entry = decode_entry(key, lease.payload)
                    if entry is not None:
                        return entry.value
                    self._stats.corrupt_entries += 1
                    ignore, lease = lease.payload, None
                    continue
                now = loop.time()
                if started is None:
                    started = now
                    deadline = now + self.max_wait
                    self._stats.lock_waits += 1
                assert deadline is not None  # noqa: S101 - set with started
                remaining = deadline - now
                if remaining <= 0:
                    self._stats.lock_timeouts += 1
                    raise CacheLockTimeout(key, now - started)
                assert lease.holder is not None  # noqa: S101 - the backend contract
                holder, lease = lease.holder, None
                try:
                    await backend._wait_for_release(
                        key, holder, min(backend._poll_interval, remaining)
                    )
                except _BACKEND_ERRORS:
                    if not req.fallback_on_error:
                        raise
                    return await self._uncached(req)
        finally:
            if started is not None:
                self._waited(loop.time() - started)

    async def _adopted(self, key: str, token: str, lease: LeaseResult) -> bool:
        """Whether ``lease`` is held by ``token`` itself (handed over), now renewed to full."""
        if lease.holder is None or lease.holder != token:
            return False
        # Taken when the call was sent: it may be close to lapsing; renew it at once.
        return await self._backend._renew_lease(key, token)

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

    # -- the holder ----------------------------------------------------------------------

    async def _create(self, req: _Request, token: str, lease_seconds: float | None) -> Any:
        key, creator, ttl_seconds, stale_ttl, _, _ = req
        heartbeat: asyncio.Task[None] | None = None
        if lease_seconds is not None:
            heartbeat = asyncio.create_task(self._heartbeat(key, token, lease_seconds))
        try:
            # A plain ``async def`` is awaited here; anything else goes to call_creator.
            if type(creator) is FunctionType and creator.__code__.co_flags & CO_COROUTINE:
                value = await creator()
            else:
                value = await call_creator(creator)
            if type(value) is Expiring:
                value, ttl_seconds = value.value, _expiring_ttl(value.ttl_seconds)
            soft_expiry = None
            if stale_ttl is not None and ttl_seconds is not None:
                soft_expiry = time.time() + ttl_seconds
            payload = encode_entry(key, value, soft_expiry)
        except BaseException as exc:
            if heartbeat is not None:
                await _stop(heartbeat)
            if isinstance(exc, Exception):
                self._stats.creator_errors += 1
            await self._release_quietly(key, token)
            raise
        if heartbeat is not None:
            await _stop(heartbeat)
        self._stats.regenerations += 1
        self._landed += 1
        # How long the backend keeps the entry: its TTL plus any stale window, in ms.
        ttl_ms = None if ttl_seconds is None else (ttl_seconds + (stale_ttl or 0)) * 1000
        returned = value if type(value) in _SAME_WHEN_DECODED else _as_returned(key, value, payload)
        try:
            await self._backend._commit(key, token, payload, ttl_ms)
        except _BACKEND_ERRORS as exc:
            if not req.fallback_on_error:
                # The caller learns the write failed; whoever joined its flight gets the
                # value (see _fail_flight) rather than run the creator again.
                setattr(exc, _CREATED, returned)
                raise
            logger.warning("could not store the new value of %r; returning it uncached", key)
        return returned

    async def _heartbeat(self, key: str, token: str, lease: float) -> None:
        interval = lease / 3
        while True:
            await asyncio.sleep(interval)
            try:
                still_held = await self._backend._renew_lease(key, token)
            except _BACKEND_ERRORS as exc:
                logger.warning("could not renew the cache lease on %r: %s", key, exc)
                continue
            if not still_held:
                logger.warning(
                    "lost the cache lease on %r while creating it (another caller may run "
                    "the creator too)",
                    key,
                )
                return

    async def _release_quietly(self, key: str, token: str) -> None:
        try:
            await self._backend._commit(key, token, None, None)
        except _BACKEND_ERRORS as exc:
            logger.warning("could not release the cache lease on %r (it will lapse): %s", key, exc)

    # -- stale-while-revalidate -------------------------------------------------------------

    async def _serve_stale(self, req: _Request, stale: Any, payload: bytes, landed: int) -> Any:
        key = req.key
        stats = self._stats
        if key in self._flights:
            stats.hits += 1
            stats.stale_hits += 1
            return stale
        flight = asyncio.get_running_loop().create_future()
        self._flights[key] = flight
        self._regenerating.add(key)
        lease_seconds = self._backend._lease_seconds
        token = "" if lease_seconds is None else (req.lease_token or secrets.token_hex(16))
        try:
            lease = await self._refresh_lease(key, token, payload, landed)
            if lease.payload is not None:
                refreshed = decode_entry(key, lease.payload)
                if refreshed is not None:
                    stats.hits += 1
                    flight.set_result(refreshed.value)
                    return refreshed.value
            if not lease.acquired:
                stats.hits += 1
                stats.stale_hits += 1
                flight.set_result(stale)
                return stale
            stats.misses += 1
            try:
                value = await self._create(req, token, lease_seconds)
            except Exception as exc:
                _settle(flight, exc)
                raise
            except BaseException:
                _settle(flight, _LeaderGone())
                raise
            flight.set_result(value)
            return value
        finally:
            # Cancelled before the flight settled (e.g. while asking for the lease):
            # whoever joined it must start over, not wait out max_wait.
            _settle(flight, _LeaderGone())
            if self._flights.get(key) is flight:
                del self._flights[key]
                self._regenerating.discard(key)

    async def _refresh_lease(
        self, key: str, token: str, payload: bytes, landed: int
    ) -> LeaseResult:
        """May this caller regenerate the stale ``payload``? Or has someone refreshed it?"""
        if not token:
            # No cross-process lease: this flight is the one regeneration, unless a
            # flight here refreshed the entry while our read was suspended.
            if self._landed != landed:
                fresh = await self._backend._read_raw(key)
                if fresh is not None and fresh != payload:
                    return LeaseResult(fresh, False, None)
            return _GRANTED
        try:
            # ignore=payload: if another process refreshed the entry meanwhile, the new
            # value comes back instead of a second regeneration.
            lease = await self._backend._acquire_lease(key, token, ignore=payload)
            if await self._adopted(key, token, lease):
                return _GRANTED
            return lease
        except _BACKEND_ERRORS as exc:
            logger.warning("serving a stale value of %r: %s", key, exc)
            return LeaseResult(None, False, None)

    async def _uncached(self, req: _Request) -> Any:
        self._stats.uncached += 1
        self.outage.failure("calling the creator of %r uncached", req.key)
        try:
            return await call_creator(req.creator)
        except Exception:
            self._stats.creator_errors += 1
            raise


def _expiring_ttl(ttl: object) -> int | None:
    return check_ttl(ttl, "Expiring.ttl_seconds", CacheValueError.about)


def _land_flight(flights: dict[str, Any], key: str, value: Any) -> None:
    """End the leader's flight of ``key`` with ``value`` (for whoever joined it)."""
    joined = flights.pop(key, None)
    if isinstance(joined, asyncio.Future):
        joined.set_result(value)


_CREATED = "_taskiq_flow_created"
"""On a commit error: the value its creator made (joiners get it; the caller the error)."""
_NOT_CREATED = object()


def _fail_flight(flights: dict[str, Any], key: str, exc: BaseException) -> None:
    """End the flight of ``key`` with ``exc``; a cancelled leader makes joiners start over.

    A commit that failed after its creator ran carries the value: joiners get that.
    """
    joined = flights.pop(key, None)
    if isinstance(joined, asyncio.Future):
        created = getattr(exc, _CREATED, _NOT_CREATED)
        if created is not _NOT_CREATED:
            if not joined.done():
                joined.set_result(created)
            return
        _settle(joined, exc if isinstance(exc, Exception) else _LeaderGone())


def _settle(flight: asyncio.Future[Any], exc: BaseException) -> None:
    if flight.done():
        return
    flight.set_exception(exc)
    # Mark it retrieved: with no waiter, asyncio would log "exception never retrieved".
    flight.exception()


async def _stop(task: asyncio.Task[None] | None) -> None:
    if task is None or task.done():
        return
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
