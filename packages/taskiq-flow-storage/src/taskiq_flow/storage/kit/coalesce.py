"""``Coalescer``: commands issued in one event-loop turn leave as one batch (auto-pipelining).

As ioredis's ``autoPipelining`` and Lettuce do, without changing any caller's code:

- a command issued while none of this coalescer's requests is on the wire is sent at
  once (``send_one``): a lone caller pays nothing, not even a loop iteration;
- a command issued while one is in flight opens a batch (its caller, the *leader*, yields
  to the event loop once) or joins the open one: every command issued by other tasks
  before the leader resumes joins it. Under load (something always in flight) the
  commands of one turn thus leave together; then

- a batch of one is sent as it always was (``send_one``);
- a larger batch is sent once (``send_batch``, a pipeline: one round trip) by a task of
  its own, so a cancelled caller never takes the others' batch down with it, and each
  caller awaits **its own** future: its own reply, or its own error. ``send_batch``
  returns one reply per command, an exception instance standing for a command the
  server refused; an exception raised by ``send_batch`` itself (the connection failed)
  fails every caller of the batch, each with its own copy.

Nothing is acknowledged before the server answered: a future is resolved only from the
reply to its command. What may be coalesced, and so be sent again when the batch is
retried after a connection error, is the caller's decision (see
:func:`taskiq_flow.storage.kit.redis.coalescable`): only commands whose repetition leaves
the same state.

Needs no Redis client: the two send functions are given.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

__all__ = ["Coalescer", "Command"]

Command = tuple[tuple[Any, ...], dict[str, Any]]
"""One command: its arguments (the name first) and its options."""


class _Batch:
    __slots__ = ("commands", "futures", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, command: Command) -> None:
        self.loop = loop
        self.commands: list[Command] = [command]
        # The leader's slot stays None until it knows the batch is shared.
        self.futures: list[asyncio.Future[Any] | None] = [None]


def _own(exc: BaseException) -> BaseException:
    """A copy of ``exc`` for one caller (each raises its own; tracebacks do not mix)."""
    try:
        mine = copy.copy(exc)
    except Exception:  # an exception type that cannot be copied: share it
        return exc
    mine.__cause__ = exc.__cause__
    mine.__context__ = exc.__context__
    return mine


class Coalescer:
    """Send the commands of one event-loop turn as one batch; each caller gets its own reply.

    Args:
        send_one: sends one command the ordinary way (``(args, options) -> reply``).
        send_batch: sends several as one request; returns one reply per command, an
            exception instance for a command the server refused.
        max_batch: most commands per batch; the next caller starts a new batch.
    """

    def __init__(
        self,
        send_one: Callable[[tuple[Any, ...], dict[str, Any]], Awaitable[Any]],
        send_batch: Callable[[Sequence[Command]], Awaitable[Sequence[Any]]],
        *,
        max_batch: int = 512,
    ) -> None:
        self._send_one = send_one
        self._send_batch = send_batch
        self.max_batch = max_batch
        self._open: _Batch | None = None
        # Requests of ours on the wire (sent alone or as a batch) and not answered yet.
        self._in_flight = 0
        self._flushing: set[asyncio.Task[None]] = set()
        self.batches = 0
        """Batches of two or more commands sent."""
        self.batched_commands = 0
        """Commands that left in such a batch."""

    async def call(self, args: tuple[Any, ...], options: dict[str, Any]) -> Any:
        """Send ``args`` with the other commands of this turn; its reply, or its error."""
        batch = self._open
        if batch is not None and len(batch.commands) < self.max_batch:
            future = batch.loop.create_future()
            batch.commands.append((args, options))
            batch.futures.append(future)
            return await future
        if not self._in_flight:
            # Nothing of ours on the wire: nobody to wait for, nothing to gain by waiting.
            return await self._one(args, options)
        batch = self._open = _Batch(asyncio.get_running_loop(), (args, options))
        try:
            await asyncio.sleep(0)  # one loop turn: the other ready tasks may join
        except BaseException:
            # Cancelled while gathering: this command is not sent, the others still are.
            self._close(batch)
            del batch.commands[0], batch.futures[0]
            if batch.commands:
                self._flush(batch)
            raise
        self._close(batch)
        if len(batch.commands) == 1:
            return await self._one(args, options)
        future = batch.futures[0] = batch.loop.create_future()
        self._flush(batch)
        return await future

    async def _one(self, args: tuple[Any, ...], options: dict[str, Any]) -> Any:
        self._in_flight += 1
        try:
            return await self._send_one(args, options)
        finally:
            self._in_flight -= 1

    def _close(self, batch: _Batch) -> None:
        if self._open is batch:
            self._open = None

    def _flush(self, batch: _Batch) -> None:
        task = batch.loop.create_task(self._send(batch))
        self._flushing.add(task)  # a strong reference until it is done
        task.add_done_callback(self._flushing.discard)

    async def _send(self, batch: _Batch) -> None:
        self.batches += 1
        self.batched_commands += len(batch.commands)
        self._in_flight += 1
        try:
            replies = await self._send_batch(batch.commands)
        except asyncio.CancelledError:
            for future in batch.futures:
                if future is not None and not future.done():
                    future.cancel()
            raise
        except Exception as exc:
            _fail(batch, exc)
            return
        finally:
            self._in_flight -= 1
        if len(replies) != len(batch.futures):
            # Never leave a caller waiting forever, whatever send_batch got wrong.
            count = len(batch.futures)
            _fail(batch, RuntimeError(f"a batch of {count} commands got {len(replies)} replies"))
            return
        for future, reply in zip(batch.futures, replies, strict=True):
            if future is None or future.done():
                continue  # its caller was cancelled; the command ran all the same
            if isinstance(reply, BaseException):
                future.set_exception(reply)
            else:
                future.set_result(reply)


def _fail(batch: _Batch, exc: BaseException) -> None:
    """Fail every caller of ``batch`` still waiting, each with its own copy of ``exc``."""
    for future in batch.futures:
        if future is not None and not future.done():
            future.set_exception(_own(exc))
