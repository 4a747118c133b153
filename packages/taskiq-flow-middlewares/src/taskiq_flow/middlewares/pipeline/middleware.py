"""``PipelineMiddleware``: advances dataflow runs after each step's result is saved.

It acts in ``post_save`` only. taskiq's retry middlewares turn a failure they retry
into ``NoResultError``, for which the receiver skips ``post_save``; so a step that
reaches ``post_save`` has its final result, and only final errors fail a run. A cache
hit still saves a result, so a cached step advances its run like an executed one.
``pre_execute`` / ``post_execute`` keep the step's execution marker and heartbeat (the
lease, see ``lease.py``); the recovery and control paths live in ``control.py``.

Sending the next steps from inside ``post_save`` would nest one step inside the
previous one under ``InMemoryBroker(await_inplace=True)`` (whose ``kick`` runs the task
before returning), and a long chain would exhaust the stack. So sends go through a
small trampoline: the outermost ``post_save`` (or ``kiq``) of an asyncio task drains a
queue; a ``post_save`` nested inside it only appends to that queue.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from taskiq import TaskiqMessage, TaskiqResult
from taskiq.exceptions import NoResultError

from taskiq_flow.middlewares.pipeline.control import PipelineControl, retrying
from taskiq_flow.middlewares.pipeline.graph import MAX_MAP_ELEMENTS, RunSpec, SpecNode
from taskiq_flow.middlewares.pipeline.sender import (
    LABEL_PIPELINE_ID,
    LABEL_PIPELINE_NODE,
    StepLabels,
    send_step,
)
from taskiq_flow.middlewares.pipeline.state import ClaimedStep, RunKeys
from taskiq_flow.storage import StorageError, StorageSerializationError

__all__ = ["LABEL_PIPELINE_ID", "LABEL_PIPELINE_NODE", "PipelineMiddleware"]

logger = logging.getLogger("taskiq_flow.pipeline")


@dataclass(eq=False)
class _Drain:
    """The send queue of the outermost dispatcher running in one asyncio task."""

    owner: asyncio.Task[Any] | None
    queue: collections.deque[ClaimedStep] = field(default_factory=collections.deque)


_DRAIN: contextvars.ContextVar[_Drain | None] = contextvars.ContextVar(
    "taskiq_flow_pipeline_drain",
    default=None,
)


class PipelineMiddleware(PipelineControl):
    """Drive dataflow pipelines (``DataflowPipeline``) from run state kept in storage.

    Any number of workers may advance one run: each step's worker writes its output,
    then claims and sends whatever became ready; a claim is an atomic ``add``. A step
    claimed, sent or running with no sign of life for ``lease_seconds`` is re-driven
    by whoever watches the run: every worker's sweeper, ``wait_result``, ``resume``
    (see docs/pipelines.md).

    Args:
        storage: where run state lives. ``None``: the storage of the broker's
            ``StorageMiddleware`` (the guide's "one place"), else, with a warning, a
            private in-memory store (which only works within one process).
        ttl_seconds: how long a run's state is kept; ``None`` uses the storage's
            default TTL.
        spec_cache_size: how many run specs a worker keeps in memory (they never change).
        lease_seconds: how long a step may show no sign of life (not sent, not started,
            no heartbeat) before it is sent again; runs take it from the producer.
        max_attempts: sends per node before a run whose step keeps vanishing fails.
        sweep_interval: seconds between two sweeps of the running runs by this
            process's sweeper (``sweeper.py``), which runs in worker processes
            (``broker.is_worker_process``) and under ``InMemoryBroker``, from
            ``startup`` to ``shutdown``. ``"auto"``: half of ``lease_seconds``;
            ``None`` or ``0``: no sweeper (runs are then re-driven only by a waiting
            ``wait_result`` or a ``resume``).
        metrics: export the ``taskiq_flow_pipeline_*`` Prometheus metrics when
            ``prometheus-client`` is installed (see docs/middlewares.md, "Monitoring").
        error_log_interval: while the storage fails, at most one log line per this many
            seconds (the first failure at once, then a count per interval, then one
            "recovered" line); the sweeper reports its failures the same way.

    Raises:
        MiddlewareConfigError: a bad ``ttl_seconds``, ``lease_seconds``,
            ``max_attempts`` or ``sweep_interval`` (a ``ValueError``).
        MiddlewareConfigTypeError: ``storage`` is not a ``BaseStorageAdapter``, or a
            number is not a number (a ``TypeError``).
    """

    # -- hooks for subclasses (tests widen races and inject faults here) --------------

    async def before_readiness_check(self, pipeline_id: str, node: str) -> None:
        """Hook between writing a step's output and reading which nodes are ready.

        Does nothing; a subclass may override it (tests widen the claim race with a
        sleep here). ``node`` is the step that just finished.
        """

    async def before_send(self, pipeline_id: str, node: str, attempt: int) -> None:
        """Hook after a node's claim was won and before its message is sent.

        Does nothing; the fault tests kill the process here (the claim->send window).
        """

    # -- taskiq hooks --------------------------------------------------------------------

    async def startup(self) -> None:
        """Start the sweeper (in a worker process or under ``InMemoryBroker``)."""
        self._sweeper.start(self.broker)

    async def shutdown(self) -> None:
        """Stop the sweeper (it already stopped if the broker ran its shutdown events)."""
        await self._sweeper.stop()

    async def pre_execute(self, message: TaskiqMessage) -> TaskiqMessage:
        """Mark a pipeline step as started and keep its heartbeat while it runs."""
        labels = StepLabels.of(message)
        if labels is None:
            return message
        try:
            spec = await self._spec(labels.pipeline_id)
            if spec is not None:
                await self._start_beating(spec, labels, message.task_id)
        except StorageError as exc:  # a marker is best effort: the lease covers its absence
            self._counters["errors"] += 1
            self.outage.failure("run %s: no start marker (%s)", labels.pipeline_id, exc)
        except Exception as exc:
            self._counters["errors"] += 1
            logger.warning("pipeline %s: no start marker (%s)", labels.pipeline_id, exc)
        else:
            self.storage_ok()
        return message

    def post_execute(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> None:
        """Stop the step's heartbeat (called whether or not its result is saved)."""
        beat_id = _beat_id(message)
        beat = self._beats.pop(beat_id, None)
        if beat is not None:
            beat.cancel()
        if isinstance(result.error, NoResultError):  # retried: post_save will not come
            self._started.pop(beat_id, None)

    async def post_save(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> None:
        """Record this step's output or failure, then claim and send the ready nodes."""
        labels = StepLabels.of(message)
        if labels is None:
            return
        try:
            await self._finish_step(labels, message.task_id, result)
        except StorageError as exc:
            # The storage is failing (after retries): one rate-limited line, not one per
            # step; the lease re-drives the step once it is back.
            self._counters["errors"] += 1
            self.outage.failure(
                "run %s: could not advance after node %s (task %s): %s",
                labels.pipeline_id,
                labels.node,
                message.task_id,
                exc,
            )
        except Exception:
            # A pipeline problem must never break the worker; the lease re-drives the step.
            self._counters["errors"] += 1
            logger.exception(
                "pipeline %s: could not advance after node %s (task %s)",
                labels.pipeline_id,
                labels.node,
                message.task_id,
            )

    # -- heartbeats ----------------------------------------------------------------------

    async def _start_beating(self, spec: RunSpec, labels: StepLabels, task_id: str) -> None:
        key = RunKeys(spec.pipeline_id).step(labels.node, labels.element)
        now = time.time()
        marker = {"attempt": labels.attempt, "task_id": task_id, "started_at": now}
        await self.storage.set(
            key, {**marker, "beat_at": now, "finished_at": None}, spec.ttl_seconds
        )
        beat_id = f"{task_id}:{labels.attempt}"
        old = self._beats.pop(beat_id, None)
        if old is not None:
            old.cancel()
        self._started[beat_id] = now
        self._beats[beat_id] = asyncio.create_task(self._beat(spec, key, marker))

    async def _beat(self, spec: RunSpec, key: str, marker: dict[str, Any]) -> None:
        while True:
            await asyncio.sleep(spec.lease_seconds / 3)
            with contextlib.suppress(StorageError):
                beat = {**marker, "beat_at": time.time(), "finished_at": None}
                await self.storage.set(key, beat, spec.ttl_seconds)

    async def _close_marker(
        self, spec: RunSpec, labels: StepLabels, task_id: str, *, ok: bool
    ) -> None:
        key = RunKeys(spec.pipeline_id).step(labels.node, labels.element)
        now = time.time()
        started_at = self._started.pop(f"{task_id}:{labels.attempt}", now)
        closed = {
            "attempt": labels.attempt,
            "task_id": task_id,
            "started_at": started_at,
            "beat_at": now,
            "finished_at": now,
            "ok": ok,
        }
        try:
            await self.storage.set(key, closed, spec.ttl_seconds)
        except StorageError as exc:  # status only: the output decides what happens next
            self.outage.failure("run %s: no finish marker (%s)", spec.pipeline_id, exc)

    # -- finishing a step ----------------------------------------------------------------

    async def _finish_step(
        self,
        labels: StepLabels,
        task_id: str,
        result: TaskiqResult[Any],
    ) -> None:
        pipeline_id = labels.pipeline_id
        spec = await retrying("read the spec", lambda: self._spec(pipeline_id), self.outage)
        if spec is None:
            logger.warning(
                "pipeline %s: no spec in storage (expired or another store?); node %s "
                "finished but the run cannot advance",
                pipeline_id,
                labels.node,
            )
            return
        node = spec.node(labels.node)
        if node is None:
            logger.warning("pipeline %s: unknown node %s", pipeline_id, labels.node)
            return
        await self._close_marker(spec, labels, task_id, ok=not result.is_err)
        if result.is_err:
            error = result.error
            await self._fail(spec, node, type(error).__qualname__, str(error), labels.element)
            return
        keys = RunKeys(pipeline_id)
        value = result.return_value
        if labels.element is not None and node.map_over is not None:
            value = await self._finish_element(spec, node, labels.element, value)
            if value is _NOT_YET:
                return
        key = keys.data(node.output)
        try:
            # add: a redelivered step cannot replace the value consumers already read.
            await retrying(
                "write an output",
                lambda: self.storage.add(key, value, spec.ttl_seconds),
                self.outage,
            )
        except StorageSerializationError as exc:
            await self._fail(spec, node, type(exc).__qualname__, str(exc), labels.element)
            return
        self._counters["steps_advanced"] += 1
        if self._metrics is not None:
            self._metrics.pipeline_step("ok")
        await self.before_readiness_check(pipeline_id, node.name)
        await self._advance(spec, nested=True, finished=node)

    async def _finish_element(self, spec: RunSpec, node: SpecNode, index: int, value: Any) -> Any:
        """Store one element's result; the node's output list once every element has one."""
        keys = RunKeys(spec.pipeline_id)
        item = keys.item(node.name, index)
        assert node.map_over is not None  # noqa: S101 - only map nodes have elements
        await retrying(
            "write an element",
            lambda: self.storage.add(item, value, spec.ttl_seconds),
            self.outage,
        )
        self._counters["elements_done"] += 1
        items = await self.storage.get(keys.data(node.map_over))
        count = len(items) if isinstance(items, list) else 0
        wanted = [keys.item(node.name, i) for i in range(count)]
        found = await self.storage.get_many(wanted)
        if len(found) < count:
            return _NOT_YET
        return [found[key] for key in wanted]

    # -- sending -------------------------------------------------------------------------

    async def _dispatch(self, steps: Iterable[ClaimedStep], *, nested: bool) -> None:
        current = asyncio.current_task()
        drain = _DRAIN.get()
        if nested and drain is not None and drain.owner is current:
            # An outer dispatcher of this very task is looping: let it send (no recursion).
            drain.queue.extend(steps)
            return
        drain = _Drain(owner=current)
        drain.queue.extend(steps)
        token = _DRAIN.set(drain)
        try:
            while drain.queue:
                # Back to back (siblings start together), then one write of their markers.
                batch = list(drain.queue)
                drain.queue.clear()
                await self._mark_sent([step for step in batch if await self._send(step)])
        finally:
            _DRAIN.reset(token)

    async def _mark_sent(self, steps: list[ClaimedStep]) -> None:
        now = time.time()
        by_ttl: dict[int | None, dict[str, Any]] = {}
        for step in steps:
            key = RunKeys(step.spec.pipeline_id).sent(step.node.name)
            by_ttl.setdefault(step.spec.ttl_seconds, {})[key] = {"at": now, "attempt": step.attempt}
        for ttl, markers in by_ttl.items():
            try:
                await self.storage.set_many(markers, ttl)
            except StorageError as exc:  # status only: the claim's time stands in for it
                self.outage.failure("no sent markers (%s)", exc)

    async def _send(self, step: ClaimedStep) -> bool:
        """Send one claimed step; ``False`` if it was not (a failure is recorded)."""
        spec, node = step.spec, step.node
        await self.before_send(spec.pipeline_id, node.name, step.attempt)
        try:
            items = None
            if node.map_over is not None:
                items = _map_input(node, step.kwargs.get(node.map_over))
                if not items:
                    await self._empty_map(spec, node)
                    return False
            sent = await send_step(self.broker, step, items)
            self._counters["steps_sent"] += 1
            self._counters["messages_sent"] += sent
            if step.attempt > 1:
                self._counters["steps_redriven"] += 1
        except Exception as exc:
            self._counters["errors"] += 1
            logger.exception("pipeline %s: could not send node %s", spec.pipeline_id, node.name)
            reason = str(exc) if isinstance(exc, _MapInputError) else f"not sent: {exc}"
            try:
                await self._fail(spec, node, _error_type(exc), reason)
            except StorageError as failure:
                self.outage.failure(
                    "run %s: could not record the failure (%s)", spec.pipeline_id, failure
                )
            return False
        return True

    async def _empty_map(self, spec: RunSpec, node: SpecNode) -> None:
        key = RunKeys(spec.pipeline_id).data(node.output)
        await self.storage.add(key, [], spec.ttl_seconds)
        self._counters["steps_advanced"] += 1
        if self._metrics is not None:
            self._metrics.pipeline_step("ok")
        await self._advance(spec, nested=True, finished=node)


_NOT_YET: Any = object()


def _beat_id(message: TaskiqMessage) -> str:
    labels = StepLabels.of(message)
    return f"{message.task_id}:{labels.attempt if labels else 1}"


class _MapInputError(Exception):
    """The list a ``map_over`` node fans out over is not a list, or too long."""


def _error_type(exc: Exception) -> str:
    return "PipelineDefinitionError" if isinstance(exc, _MapInputError) else type(exc).__qualname__


def _map_input(node: SpecNode, items: Any) -> list[Any]:
    if not isinstance(items, list):
        msg = (
            f"node {node.name!r} maps over {node.map_over!r}, which must be a list, "
            f"got {type(items).__name__}"
        )
        raise _MapInputError(msg)
    if len(items) > MAX_MAP_ELEMENTS:
        msg = (
            f"node {node.name!r} maps over {len(items)} elements of {node.map_over!r}; "
            f"the limit is {MAX_MAP_ELEMENTS} per run"
        )
        raise _MapInputError(msg)
    return items
