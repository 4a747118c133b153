"""Answering a task in the producer, as a worker would after a cache hit.

Used by :mod:`taskiq_flow.middlewares._at_send` for calls answered at ``kiq()``: every
other middleware's ``post_execute``, the result, every ``post_save`` (so StorageMiddleware
records the hit and PipelineMiddleware advances a run). The returned ``AsyncTaskiqTask``
polls the broker's result backend; that backend object's ``is_result_ready`` and
``get_result`` are wrapped (once) so this process's callers get the answer from memory at
once, whatever the backend. It is written with ``set_result`` too: before ``kiq`` returns
for a ``StorageResultBackend`` (its results are the records); otherwise unless read here
within ``_WRITE_DELAY`` (the usual ``kiq`` + ``wait_result`` caller got it; a task id
handed to another process is written for it). An answer read here is kept in memory for
this process's later readers among the last ``_ANSWERS_KEPT`` answers only: re-reading
it after that finds no result unless the backend is a ``StorageResultBackend``.

No timer or task per answer: one background writer, and every new answer first writes
the unread ones that are due, so a caller that never yields to the event loop stays
bounded too.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import TYPE_CHECKING, Any

from taskiq import TaskiqMessage, TaskiqMiddleware, TaskiqResult
from taskiq.abc.result_backend import AsyncResultBackend
from taskiq.utils import maybe_awaitable

from taskiq_flow.middlewares import _codec, _labels
from taskiq_flow.middlewares._wrapping import CURRENT, CacheCall

if TYPE_CHECKING:
    from taskiq_flow.middlewares.cache import CacheMiddleware

__all__ = ["Answers"]

logger = logging.getLogger("taskiq_flow.middlewares")

_ANSWERS_MARK = "__taskiq_flow_answers__"
_ANSWERS_KEPT = 1_000
"""Answers kept in memory per process for this process's readers (the oldest leave first;
an answer read here is not written to the result backend, see the module docstring)."""
_WRITE_DELAY = 0.5
"""Seconds an answer waits to be read in this process before it is written to the backend."""


class Answers:
    """The results of the calls one CacheMiddleware answered in this process."""

    def __init__(self, middleware: CacheMiddleware) -> None:
        self._mw = middleware
        self._answers: collections.OrderedDict[str, TaskiqResult[Any]] = collections.OrderedDict()
        # Answers not read here yet, oldest first: (backend, result, when its write is due).
        self._unwritten: collections.OrderedDict[
            str, tuple[AsyncResultBackend[Any], TaskiqResult[Any], float]
        ] = collections.OrderedDict()
        self._flusher: asyncio.Task[None] | None = None

    async def answer(
        self, message: TaskiqMessage, call: CacheCall, cached: _codec.CachedValue
    ) -> bool:
        """Do what a worker does after a hit: post_execute, set_result, post_save.

        The result is served to this process's callers from memory at once, and written
        to the broker's result backend in the background (for everyone else).
        """
        mw = self._mw
        broker = mw.broker
        if self._unwritten:
            # Inline as well as in the background: a caller that never yields to the
            # event loop (a tight kiq + wait_result loop) must not pile answers up.
            await self._write_due()
        labels = message.labels
        labels.pop(_labels.LABEL_CACHE_LEASE, None)
        labels[_labels.LABEL_CACHE_HIT] = "true"
        labels[_labels.LABEL_CACHE_ANSWERED] = "send"
        error = None if cached.error is None else _codec.rebuild_exception(cached.error)
        result: TaskiqResult[Any] = TaskiqResult(
            is_err=error is not None,
            log=None,
            return_value=None if error is not None else cached.value,
            execution_time=0.0,
            labels=labels,
            error=error,
        )
        # StorageMiddleware asks answered_from_cache(message): this call was a hit.
        call.taken = call.hit = True
        token = CURRENT.set(call)
        try:
            others = [m for m in reversed(broker.middlewares) if m is not mw]
            for other in others:
                if type(other).post_execute is not TaskiqMiddleware.post_execute:
                    await _quietly("post_execute", other.post_execute, message, result)
            backend = broker.result_backend
            if _records_live_in(backend):
                # Its results are the records: written before kiq returns, as a worker would.
                await self._write(backend, message.task_id, result)
            self._save(backend, message.task_id, result)
            for other in others:
                if type(other).post_save is not TaskiqMiddleware.post_save:
                    await _quietly("post_save", other.post_save, message, result)
        finally:
            CURRENT.reset(token)
        mw._counters["answered_at_send"] += 1
        return True

    def _save(self, backend: AsyncResultBackend[Any], task_id: str, result: Any) -> None:
        if getattr(backend, _ANSWERS_MARK, None) is not self._answers:
            self._serve_answers(backend)
        answers = self._answers
        answers[task_id] = result
        if len(answers) > _ANSWERS_KEPT:
            answers.popitem(last=False)
        if _records_live_in(backend):
            return  # written already (see answer)
        # Read here first (the usual kiq + wait_result): delivered, no write needed.
        # Still unread after a moment: written for readers in other processes.
        loop = asyncio.get_running_loop()
        self._unwritten[task_id] = (backend, result, loop.time() + _WRITE_DELAY)
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush_when_due())

    async def _write_due(self) -> None:
        """Write the unread answers whose delay is over (oldest first)."""
        unwritten = self._unwritten
        now = asyncio.get_running_loop().time()
        while unwritten:
            task_id, (backend, result, due) = next(iter(unwritten.items()))
            if due > now:
                return
            del unwritten[task_id]
            await self._write(backend, task_id, result)

    async def _flush_when_due(self) -> None:
        """One background writer for this process's unread answers (no task per answer)."""
        loop = asyncio.get_running_loop()
        while self._unwritten:
            first_due = next(iter(self._unwritten.values()))[2]
            await asyncio.sleep(max(0.0, first_due - loop.time()))
            await self._write_due()

    def _serve_answers(self, backend: AsyncResultBackend[Any]) -> None:
        """Let ``backend`` answer this process's readers of an answered task from memory."""
        answers, unwritten = self._answers, self._unwritten
        is_ready, get_result = backend.is_result_ready, backend.get_result

        async def is_result_ready(task_id: str) -> bool:
            return task_id in answers or await is_ready(task_id)

        async def get_answer(task_id: str, with_logs: bool = False) -> TaskiqResult[Any]:
            found = answers.get(task_id)
            if found is not None:
                unwritten.pop(task_id, None)  # delivered to its reader here
                return found.model_copy()  # taskiq parses return_value into the copy
            return await get_result(task_id, with_logs=with_logs)

        setattr(backend, "is_result_ready", is_result_ready)  # noqa: B010 - an instance's
        setattr(backend, "get_result", get_answer)  # noqa: B010 - an instance's
        setattr(backend, _ANSWERS_MARK, answers)

    async def _write(self, backend: AsyncResultBackend[Any], task_id: str, result: Any) -> None:
        try:
            await backend.set_result(task_id, result)
        except Exception:
            logger.warning(
                "Could not save the result of task %s answered at send in the result "
                "backend (this process still has it).",
                task_id,
                exc_info=True,
            )

    async def close(self) -> None:
        """Write every answer not read yet; stop the background writer."""
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
            self._flusher = None
        while self._unwritten:
            task_id, (backend, result, _) = self._unwritten.popitem(last=False)
            await self._write(backend, task_id, result)


def _records_live_in(backend: AsyncResultBackend[Any]) -> bool:
    """Whether ``backend`` is a StorageResultBackend (its results are the task records)."""
    from taskiq_flow.middlewares.result_backend import (  # noqa: PLC0415 - a cycle
        StorageResultBackend,
    )

    return isinstance(backend, StorageResultBackend)


async def _quietly(hook: str, method: Any, *args: Any) -> None:
    # The call itself inside the try: a sync hook raises when called, not when awaited.
    try:
        await maybe_awaitable(method(*args))
    except Exception:
        logger.exception("A middleware's %s failed for a task answered at send.", hook)
