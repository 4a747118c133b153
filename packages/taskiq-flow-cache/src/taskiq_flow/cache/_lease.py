"""The lease's clock: claim tokens that carry their time, and the creator's heartbeat.

A producer that claims a call's lease at send (:meth:`BaseCacheAdapter.lookup` with
``claim=True``) draws a :func:`claim_token`; the worker that adopts it reads its age
(:func:`claim_age`) to know whether the lease is fresh enough to create under without a
first look. While a creator runs, a :class:`Heartbeat` keeps its lease alive.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable

from taskiq_flow.cache._flight import _BACKEND_ERRORS

__all__ = ["Heartbeat", "claim_age", "claim_token"]

logger = logging.getLogger("taskiq_flow.cache")


def claim_token() -> str:
    """A lease token for a claim at send: when it was drawn (wall-clock ms, hex), a random part.

    The time lets the worker that adopts the claim tell a fresh lease from one that may
    have lapsed while its message waited in the queue (see :func:`claim_age`).
    """
    return f"{int(time.time() * 1000):x}-{secrets.token_hex(12)}"


def claim_age(token: str) -> float | None:
    """Seconds since :func:`claim_token` drew ``token``; ``None`` for any other token.

    Wall clocks: producer's and worker's. A skew between the two hosts only moves the
    age; see ``DogpileLock._adopt_fresh`` for why that stays safe.
    """
    stamp, dash, rest = token.partition("-")
    if not dash or len(rest) != 24 or not 0 < len(stamp) <= 12:
        return None
    try:
        return time.time() - int(stamp, 16) / 1000
    except ValueError:
        return None


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
    if task is None or task.done():
        return
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
