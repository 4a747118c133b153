"""The creator's side of :class:`~taskiq_flow.cache.lock.DogpileLock`, as a mixin.

Once a caller knows it must create, or wait for whoever does, the rest is here: the wait
for this process's flight (``_await_flight``), the election over a cross-process lease
and the wait for its holder (``_fill``), running the creator under a renewed lease and
committing its value (``_create``; ``_adopt_fresh`` when a producer claimed the lease
at send moments ago), serving a stale entry while one caller regenerates
it (``_serve_stale``), and the uncached fallback. :mod:`taskiq_flow.cache.lock` keeps
the caller's side: the entry points, the first look, leading and joining the in-process
single flight.

The seam is clean: the caller's side calls into this one, never the reverse, so the
creation path reads on its own (and each module stays under the project's size bound).
It is still one object: :class:`_Creation` holds no state and declares the attributes
of the lock it uses, which ``DogpileLock.__init__`` sets.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from inspect import CO_COROUTINE
from types import FunctionType
from typing import Any, cast

from taskiq_flow.cache._flight import (
    _BACKEND_ERRORS,
    _CREATED,
    _PENDING,
    _fail_flight,
    _land_flight,
    _LeaderGone,
    _Pending,
    _Read,
    _Request,
    _settle,
)
from taskiq_flow.cache._lease import Heartbeat
from taskiq_flow.cache.backend import Expiring, LeaseResult, LockBackend, call_creator
from taskiq_flow.cache.codec import decode_entry, encode_entry
from taskiq_flow.cache.errors import CacheLockTimeout, CacheValueError
from taskiq_flow.cache.stats import LOCK_WAIT, CacheStats
from taskiq_flow.storage.kit.checks import check_ttl
from taskiq_flow.storage.kit.ratelog import OutageLog

# The one wait of a joiner; a module name so that a test can make it race (see the tests).
_wait_for = asyncio.wait_for
logger = logging.getLogger("taskiq_flow.cache")

_GRANTED = LeaseResult(None, True, None)

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


class _Creation:
    """Electing, running and committing the one creator of a key (see the module doc)."""

    # Set by DogpileLock.__init__ (see there): declared for the type checker only.
    _backend: LockBackend
    _stats: CacheStats
    max_wait: float
    _flights: dict[str, asyncio.Future[Any] | _Pending]
    _landed: int
    _regenerating: set[str]
    _releasing: set[asyncio.Task[None]]
    outage: OutageLog

    # -- a miss: waiting for a creator (a flight here, a lease elsewhere), or the lease --

    def _waited(self, seconds: float) -> None:
        """Note how long a caller waited for another's creator (stats, ``LOCK_WAIT``)."""
        self._stats.lock_wait_seconds += seconds
        LOCK_WAIT.set(seconds)

    async def _await_flight(self, key: str, flight: asyncio.Future[Any], deadline: float) -> Any:
        stats = self._stats
        loop = asyncio.get_running_loop()
        started = loop.time()
        ended = False
        try:
            # shield: a waiter that times out or is cancelled must not cancel the creation.
            result = await _wait_for(asyncio.shield(flight), deadline - started)
        except TimeoutError:
            if not flight.done():
                stats.lock_waits += 1
                self._waited(loop.time() - started)
                stats.lock_timeouts += 1
                raise CacheLockTimeout(key, loop.time() - started) from None
            # The flight ended: with the creator's own TimeoutError, or just as the wait
            # ran out (wait_for then cancels the shield and reports a timeout although the
            # value is there). Its outcome is ours, as if woken a moment earlier.
            ended = True
        except BaseException:
            stats.lock_waits += 1
            self._waited(loop.time() - started)
            raise
        if ended:
            try:
                # Outside the handler above; result() raises the creator's error with the
                # flight's own traceback, as the shield gives every other joiner.
                result = flight.result()
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

    # -- the holder ----------------------------------------------------------------------

    async def _adopt_fresh(self, req: _Request, token: str, fresh: tuple[float, float]) -> Any:
        """Create under a lease a producer claimed at send less than a third of it ago.

        No first look: the claim was that look, done at ``kiq()``, and the lease has at
        least two thirds of its period left, so the first heartbeat (due a third of the
        lease after the claim) renews it in time. The trade: the look would also have
        seen a change made since the claim, which now only the commit sees. A lease that
        an invalidation removed, or that lapsed and went to another caller, does not
        hold ``token``, so this value is returned but not stored; a value written since
        (``set()``, another caller's commit after an invalidation) is computed again.
        Both need an invalidation or a direct write within a third of the lease after
        the claim. A skewed or forged stamp only moves the age: an age the clocks
        understate by well under two thirds of the lease still leaves the first renewal
        inside it.
        """
        key = req.key
        lease_seconds = cast(float, self._backend._lease_seconds)
        age, third = fresh
        flights = self._flights
        flights[key] = _PENDING
        self._stats.misses += 1
        try:
            value = await self._create(req, token, lease_seconds, third - max(age, 0.0))
        except BaseException as exc:
            _fail_flight(flights, key, exc)
            raise
        _land_flight(flights, key, value)
        return value

    async def _create(
        self,
        req: _Request,
        token: str,
        lease_seconds: float | None,
        first_renewal: float | None = None,
    ) -> Any:
        """Run the creator under ``token``'s lease and commit its value.

        The lease is renewed every third of its period; the first time after
        ``first_renewal`` seconds if given (a lease claimed earlier, at send).
        """
        key, creator, ttl_seconds, stale_ttl, _, _ = req
        heartbeat: Heartbeat | None = None
        if lease_seconds is not None:
            heartbeat = Heartbeat(
                self._backend._renew_lease, key, token, lease_seconds, first_renewal
            )
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
                await heartbeat.stop()
            if isinstance(exc, Exception):
                self._stats.creator_errors += 1
            await self._release_quietly(key, token)
            raise
        if heartbeat is not None:
            await heartbeat.stop()
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

    async def _release_quietly(self, key: str, token: str) -> None:
        try:
            await self._backend._commit(key, token, None, None)
        except _BACKEND_ERRORS as exc:
            logger.warning("could not release the cache lease on %r (it will lapse): %s", key, exc)

    def _release_later(self, key: str, token: str) -> None:
        """Release ``token``'s lease on ``key`` (if it holds it) in a task of its own."""
        task = asyncio.get_running_loop().create_task(self._release_quietly(key, token))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def releases_done(self, within: float) -> None:
        """Wait up to ``within`` seconds for the releases :meth:`_release_later` started.

        Called before the adapter closes its client, so that they are not cut off.
        """
        if self._releasing:
            await asyncio.wait(set(self._releasing), timeout=within)

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
