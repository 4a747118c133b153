"""The in-process single flight of :class:`~taskiq_flow.cache.lock.DogpileLock`, as data.

What a flight's leader leaves in ``DogpileLock._flights`` (a future, or :data:`_PENDING`
while nobody waits), what its joiners may receive (a value, a :class:`_Read`, an error,
:class:`_LeaderGone`) and the functions that end a flight; with them, the call a leader
carries (:class:`_Request`) and the errors it may fall back on. Both halves of the lock use
them: the caller's side (:mod:`taskiq_flow.cache.lock`) leads and joins flights, the
creator's side (:mod:`taskiq_flow.cache._creation`) waits for them and ends them. A
module of its own keeps that vocabulary in one place, imported by both halves (which
would otherwise import each other).
"""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple

from taskiq_flow.cache.backend import Creator
from taskiq_flow.cache.errors import CacheBackendError, CacheConnectionError

# The backend's failures, not the creator's: the only ones ``fallback_on_error`` covers.
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
