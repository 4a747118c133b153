"""What the dogpile lock needs from a cache backend: :class:`LockBackend` and its types.

Every cache adapter implements these protected hooks (``BaseCacheAdapter`` declares
them); :class:`taskiq_flow.cache.lock.DogpileLock` calls them and nothing else.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, Protocol

__all__ = ["Creator", "Expiring", "LeaseResult", "LockBackend", "call_creator"]


Creator = Callable[[], Any] | Callable[[], Awaitable[Any]]
"""A zero-argument callable producing the value: sync (run in a thread) or async."""


class Expiring:
    """A creator's value with its own TTL: ``return Expiring(value, 60)`` from a creator.

    ``get_or_create`` and ``refresh`` store ``value`` (and return it) for ``ttl_seconds``
    instead of the TTL the call was given: a creator can keep, say, an error marker for
    less time than a real answer. The TTL is checked when the entry is stored (a bad
    one raises ``CacheValueError`` there).
    """

    __slots__ = ("ttl_seconds", "value")

    def __init__(self, value: Any, ttl_seconds: int) -> None:
        self.value = value
        self.ttl_seconds = ttl_seconds


class LeaseResult(NamedTuple):
    """Outcome of one lease attempt."""

    payload: bytes | None
    """The stored entry, when one appeared (only if the attempt asked to check)."""
    acquired: bool
    """Whether this caller now holds the lease."""
    holder: str | None
    """The current holder's token when the lease is taken by someone else."""


class LockBackend(Protocol):
    """What the lock needs from an adapter. Each method is one backend round trip."""

    @property
    def _lease_seconds(self) -> float | None:
        """Lease period; ``None`` when there is no cross-process lease (in-memory).

        Without one there is no lease at all: the in-process single flight elects the one
        creator, and ``_acquire_lease``, ``_renew_lease`` and ``_wait_for_release`` are
        never called (no token is drawn, no heartbeat runs).
        """

    @property
    def _poll_interval(self) -> float:
        """Longest a waiter blocks before it re-checks the value and the lease."""

    async def _read_raw(self, key: str) -> bytes | None:
        """The stored entry bytes, or ``None``."""

    async def _read_or_acquire(self, key: str, token: str) -> LeaseResult:
        """The first look of a call on a backend with a lease: the entry, or else the lease.

        Returns the stored entry if there is one (fresh, stale or corrupt: the caller
        decides); otherwise takes the lease for ``token`` or reports its holder. A
        lease ``token`` holds already (taken earlier for this call, or by a repetition of
        this very request after a dropped connection) is either reported as its holder,
        and the lock renews it (one more round trip), or renewed here to a full lease and
        reported acquired (the Redis backend, in its one script). One round trip where
        the backend allows (a miss then costs this and the commit, no more).
        """

    async def _acquire_lease(self, key: str, token: str, *, ignore: bytes | None) -> LeaseResult:
        """Return the entry unless absent or equal to ``ignore``; else take or report the lease.

        ``ignore`` is a stale or corrupt entry the caller has already seen.
        """

    async def _renew_lease(self, key: str, token: str) -> bool:
        """Extend the lease if ``token`` still holds it."""

    async def _commit(
        self, key: str, token: str, payload: bytes | None, ttl_ms: int | None
    ) -> None:
        """Store ``payload`` (unless ``None``), release the lease if held, wake waiters."""

    async def _wait_for_release(self, key: str, holder: str, within: float) -> None:
        """Block until ``holder`` releases (push) or ``within`` seconds pass."""


async def call_creator(creator: Creator) -> Any:
    """Run ``creator``: a coroutine function in this task, anything else in a thread.

    Running sync creators with :func:`asyncio.to_thread` keeps the event loop (and so the
    lease heartbeat) alive while they work; ``to_thread`` copies the caller's contextvars.
    """
    if inspect.iscoroutinefunction(creator):
        return await creator()
    result = await asyncio.to_thread(creator)
    if inspect.isawaitable(result):
        return await result
    return result
