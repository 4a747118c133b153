"""The lease's clock: claim tokens that carry their time, and the creator's heartbeat.

A producer that claims a call's lease at send (:meth:`BaseCacheAdapter.lookup` with
``claim=True``) draws a :func:`claim_token`; the worker that adopts it reads its age
(:func:`claim_age`) to know whether the lease is fresh enough to create under without a
first look. While a creator runs, a :class:`Heartbeat` keeps its lease alive.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
import zlib
from collections.abc import Awaitable, Callable

from taskiq_flow.cache._flight import _BACKEND_ERRORS

__all__ = ["Heartbeat", "claim_age", "claim_token", "fresh_claim"]

logger = logging.getLogger("taskiq_flow.cache")


_CLAIM = re.compile(r"([0-9a-f]{1,12})\.([0-9a-f]{1,8})\.([0-9a-f]{8})\.[0-9a-f]{20}")


def claim_token(key: str, lease_ms: int) -> str:
    """A lease token for a claim at send: ``drawn.lease.check.random`` (hex).

    ``drawn``: the wall-clock millisecond it was drawn; ``lease``: the lease it takes, in
    ms; ``check``: a CRC-32 of ``key``; then 80 random bits. They let the worker that
    adopts the claim tell a lease it may create under without asking again from one that
    may have lapsed while its message waited, or that is not this key's (the worker
    computed another key: a changed task under ``key_version="source"``) — see
    :func:`claim_age`.
    """
    check = zlib.crc32(key.encode("utf-8", "surrogatepass"))
    return f"{int(time.time() * 1000):x}.{lease_ms:x}.{check:08x}.{secrets.token_hex(10)}"


def claim_age(token: object, key: str) -> tuple[float, float] | None:
    """``(seconds since drawn, lease seconds)`` of a :func:`claim_token` for ``key``.

    ``None`` for any other token: another shape (an older producer's, the lock's own, a
    stale entry's regeneration claim), or a claim for another key.

    Wall clocks: producer's and worker's. A skew between the two hosts only moves the
    age; see ``_Creation._adopt_fresh`` for why that stays safe.
    """
    if type(token) is not str:
        return None
    parts = _CLAIM.fullmatch(token)
    if parts is None:
        return None
    stamp, lease, check = parts.groups()
    if int(check, 16) != zlib.crc32(key.encode("utf-8", "surrogatepass")):
        return None
    return time.time() - int(stamp, 16) / 1000, int(lease, 16) / 1000


def fresh_claim(token: str, key: str, lease: float) -> tuple[float, float] | None:
    """``(age, a third of the lease)`` of a claim on ``key`` fresh enough to adopt.

    Fresh: drawn less than a third of the lease ago, the shorter of ``lease`` (the
    adopting adapter's) and the one the claim took (a producer configured with a shorter
    ``lock_timeout`` took a shorter lease). ``None``: ask the backend first.
    """
    found = claim_age(token, key)
    if found is None:
        return None
    age, claimed = found
    third = min(lease, claimed) / 3
    return (age, third) if -third <= age < third else None


class Heartbeat:
    """Keeps a creator's lease alive: a timer until the first renewal is due, then a task.

    Most creators finish within a third of the lease, so most never need the task: a timer
    handle is cheaper to start and to cancel than a task (created, cancelled, awaited) on
    every miss.
    """

    __slots__ = ("_args", "_handle", "_renew", "_task")

    def __init__(
        self,
        renew: Callable[[str, str], Awaitable[bool]],
        key: str,
        token: str,
        lease: float,
        first: float | None,
    ) -> None:
        self._renew = renew
        self._args = (key, token, lease)
        self._task: asyncio.Task[None] | None = None
        self._handle: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            lease / 3 if first is None else first, self._start
        )

    def _start(self) -> None:
        self._handle = None
        self._task = asyncio.get_running_loop().create_task(self._keep(*self._args))

    async def _keep(self, key: str, token: str, lease: float) -> None:
        """Renew the lease now, then every third of its period, until it is lost."""
        while True:
            try:
                still_held = await self._renew(key, token)
            except _BACKEND_ERRORS as exc:
                logger.warning("could not renew the cache lease on %r: %s", key, exc)
                still_held = True  # not known lost: try again at the next beat
            if not still_held:
                logger.warning(
                    "lost the cache lease on %r while creating it: it lapsed or the key was "
                    "invalidated; this value will not be stored, and another caller may run "
                    "the creator too",
                    key,
                )
                return
            await asyncio.sleep(lease / 3)

    async def stop(self) -> None:
        """Stop renewing (the timer, or the task and its renewal in progress)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        await _stop(self._task)


async def _stop(task: asyncio.Task[None] | None) -> None:
    if task is None:
        return
    if task.done():
        if not task.cancelled() and task.exception() is not None:
            logger.warning("the cache lease heartbeat failed", exc_info=task.exception())
        return
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
