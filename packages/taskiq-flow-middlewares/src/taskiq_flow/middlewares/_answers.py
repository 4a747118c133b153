"""Answering a task in the producer, as a worker would after a cache hit.

Used by :mod:`taskiq_flow.middlewares._at_send` for calls answered at ``kiq()``: every
other middleware's ``post_execute``, the result, every ``post_save`` (so StorageMiddleware
records the hit and PipelineMiddleware advances a run). The returned ``AsyncTaskiqTask``
polls the broker's result backend; that backend object's ``is_result_ready`` and
``get_result`` are wrapped (once) so this process's callers get the answer from memory at
once, whatever the backend. It is written with ``set_result`` too: before ``kiq`` returns
for a ``StorageResultBackend`` (its results are the records); otherwise unless read here
within ``_WRITE_DELAY`` (the usual ``kiq`` + ``wait_result`` caller got it; a task id
handed to another process is written for it).
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
_ANSWERS_KEPT = 10_000
"""Answers kept in memory per process; older ones are read from the result backend."""
_WRITE_DELAY = 0.5
"""Seconds an answer waits to be read in this process before it is written to the backend."""


class Answers:
    """The results of the calls one CacheMiddleware answered in this process."""

    def __init__(self, middleware: CacheMiddleware) -> None:
        self._mw = middleware
        self._answers: collections.OrderedDict[str, TaskiqResult[Any]] = collections.OrderedDict()
        self._writes: set[asyncio.Task[None]] = set()
        self._unwritten: dict[
            str, tuple[AsyncResultBackend[Any], TaskiqResult[Any], asyncio.TimerHandle]
        ] = {}

    async def answer(
        self, message: TaskiqMessage, call: CacheCall, cached: _codec.CachedValue
    ) -> bool:
        """Do what a worker does after a hit: post_execute, set_result, post_save.

        The result is served to this process's callers from memory at once, and written
        to the broker's result backend in the background (for everyone else).
        """
        mw = self._mw
        broker = mw.broker
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
                    await _quietly("post_execute", other.post_execute(message, result))
            backend = broker.result_backend
            if _records_live_in(backend):
                # Its results are the records: written before kiq returns, as a worker would.
                await self._write(backend, message.task_id, result)
            self._save(backend, message.task_id, result)
            for other in others:
                if type(other).post_save is not TaskiqMiddleware.post_save:
                    await _quietly("post_save", other.post_save(message, result))
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
            return  # written already (see _answer)
        # Read here first (the usual kiq + wait_result): delivered, no write needed.
        # Still unread after a moment: written for readers in other processes.
        handle = asyncio.get_running_loop().call_later(_WRITE_DELAY, self._write_unread, task_id)
        self._unwritten[task_id] = (backend, result, handle)

    def _write_unread(self, task_id: str) -> None:
        pending = self._unwritten.pop(task_id, None)
        if pending is not None:
            self._start_write(pending[0], task_id, pending[1])

    def _start_write(self, backend: AsyncResultBackend[Any], task_id: str, result: Any) -> None:
        write = asyncio.get_running_loop().create_task(self._write(backend, task_id, result))
        self._writes.add(write)
        write.add_done_callback(self._writes.discard)

    def _serve_answers(self, backend: AsyncResultBackend[Any]) -> None:
        """Let ``backend`` answer this process's readers of an answered task from memory."""
        answers, unwritten = self._answers, self._unwritten
        is_ready, get_result = backend.is_result_ready, backend.get_result

        async def is_result_ready(task_id: str) -> bool:
            return task_id in answers or await is_ready(task_id)

        async def get_answer(task_id: str, with_logs: bool = False) -> TaskiqResult[Any]:
            found = answers.get(task_id)
            if found is not None:
                pending = unwritten.pop(task_id, None)
                if pending is not None:
                    pending[2].cancel()  # delivered to its reader here
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
        """Write every answer not read yet; wait for the writes."""
        for task_id in list(self._unwritten):
            self._unwritten[task_id][2].cancel()
            self._write_unread(task_id)
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)


def _records_live_in(backend: AsyncResultBackend[Any]) -> bool:
    """Whether ``backend`` is a StorageResultBackend (its results are the task records)."""
    from taskiq_flow.middlewares.result_backend import (  # noqa: PLC0415 - a cycle
        StorageResultBackend,
    )

    return isinstance(backend, StorageResultBackend)


async def _quietly(hook: str, outcome: Any) -> None:
    try:
        await maybe_awaitable(outcome)
    except Exception:
        logger.exception("A middleware's %s failed for a task answered at send.", hook)
