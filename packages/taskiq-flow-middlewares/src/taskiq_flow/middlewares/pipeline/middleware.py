"""``PipelineMiddleware``: advances dataflow runs after each step's result is saved.

It acts in ``post_save`` only. taskiq's retry middlewares turn a failure they retry
into ``NoResultError``, for which the receiver skips ``post_save``; so a step that
reaches ``post_save`` has its final result, and only final errors fail a run. A cache
hit still saves a result, so a cached step advances its run like an executed one.

Sending the next steps from inside ``post_save`` would nest one step inside the
previous one under ``InMemoryBroker(await_inplace=True)`` (whose ``kick`` runs the task
before returning), and a long chain would exhaust the stack. So sends go through a
small trampoline: the outermost ``post_save`` (or ``kiq``) of an asyncio task drains a
queue; a ``post_save`` nested inside it only appends to that queue.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from taskiq import TaskiqMessage, TaskiqMiddleware, TaskiqResult
from taskiq.kicker import AsyncKicker

from taskiq_flow.middlewares._labels import LABEL_PIPELINE_ID
from taskiq_flow.middlewares.pipeline.graph import RunSpec, SpecNode
from taskiq_flow.middlewares.pipeline.state import (
    Advance,
    ClaimedStep,
    RunKeys,
    advance,
    failure_record,
)
from taskiq_flow.middlewares.storage import (
    StorageMiddleware,
    check_number,
    check_storage_arguments,
)
from taskiq_flow.storage import (
    BaseStorageAdapter,
    InMemoryStorageAdapter,
    StorageConnectionError,
    StorageError,
    StorageSerializationError,
)

__all__ = ["LABEL_PIPELINE_ID", "LABEL_PIPELINE_NODE", "PipelineMiddleware"]

logger = logging.getLogger("taskiq_flow.pipeline")

LABEL_PIPELINE_NODE = "pipeline_node"


@dataclass(eq=False)
class _Drain:
    """The send queue of the outermost dispatcher running in one asyncio task."""

    owner: asyncio.Task[Any] | None
    queue: collections.deque[ClaimedStep] = field(default_factory=collections.deque)


# Pauses between attempts when the storage is unreachable (then the error is logged).
_BACKOFF = (0.05, 0.2, 0.8)

_T = TypeVar("_T")


async def _retrying(what: str, operation: Callable[[], Awaitable[_T]]) -> _T:
    """Run an idempotent storage operation, retrying connection errors a few times."""
    for pause in (*_BACKOFF, None):
        try:
            return await operation()
        except StorageConnectionError as exc:
            if pause is None:
                raise
            logger.warning("pipeline: could not %s (%s); retrying in %.2fs", what, exc, pause)
            await asyncio.sleep(pause)
    raise AssertionError  # pragma: no cover - the last attempt returns or raises


_DRAIN: contextvars.ContextVar[_Drain | None] = contextvars.ContextVar(
    "taskiq_flow_pipeline_drain",
    default=None,
)


class PipelineMiddleware(TaskiqMiddleware):
    """Drive dataflow pipelines (``DataflowPipeline``) from run state kept in storage.

    Any number of workers may advance one run: each step's worker writes its output,
    then claims and sends whatever became ready; a claim is an atomic ``add``.

    Args:
        storage: where run state lives. ``None``: the storage of the broker's
            ``StorageMiddleware`` (the guide's "one place"), else, with a warning, a
            private in-memory store (which only works within one process).
        ttl_seconds: how long a run's state is kept; ``None`` uses the storage's
            default TTL.
        spec_cache_size: how many run specs a worker keeps in memory (they never change).

    Raises:
        MiddlewareConfigError: a bad ``ttl_seconds`` (a ``ValueError``).
        MiddlewareConfigTypeError: ``storage`` is not a ``BaseStorageAdapter``, or
            ``spec_cache_size`` not a number (a ``TypeError``).
    """

    def __init__(
        self,
        storage: BaseStorageAdapter | None = None,
        *,
        ttl_seconds: int | None = None,
        spec_cache_size: int = 1024,
    ) -> None:
        super().__init__()
        check_storage_arguments(storage, ttl_seconds)
        check_number("spec_cache_size", spec_cache_size)
        self.ttl_seconds = ttl_seconds
        self._storage = storage
        self._specs: collections.OrderedDict[str, RunSpec] = collections.OrderedDict()
        self._spec_cache_size = max(1, spec_cache_size)
        self._counters = {
            "steps_advanced": 0,
            "steps_failed": 0,
            "steps_sent": 0,
            "claims_won": 0,
            "claims_lost": 0,
            "claims_taken": 0,
            "runs_started": 0,
            "runs_done": 0,
            "errors": 0,
        }

    @property
    def storage(self) -> BaseStorageAdapter:
        """The adapter holding run state (resolved on first use, see the class docs)."""
        if self._storage is None:
            self._storage = self._find_storage()
        return self._storage

    def _find_storage(self) -> BaseStorageAdapter:
        broker = getattr(self, "broker", None)
        for middleware in getattr(broker, "middlewares", ()):
            if isinstance(middleware, StorageMiddleware):
                return middleware.storage
        logger.warning(
            "PipelineMiddleware has no storage and the broker has no StorageMiddleware: "
            "run state is kept in this process only (multi-worker runs will not advance).",
        )
        return InMemoryStorageAdapter()

    def get_stats(self) -> dict[str, int]:
        """Counters of this process (a dict of ints).

        ``steps_advanced`` / ``steps_failed``: step results handled; ``steps_sent``:
        messages sent for claimed nodes; ``claims_won``: claims this process took;
        ``claims_lost``: claims it tried and lost to a concurrent advancer (a race settled
        by ``add``); ``claims_taken``: nodes a finished step feeds that it found ready but
        already claimed (a duplicate trigger avoided); ``runs_started`` / ``runs_done``;
        ``errors``: problems logged instead of raised.
        """
        return dict(self._counters)

    async def before_readiness_check(self, pipeline_id: str, node: str) -> None:
        """Hook between writing a step's output and reading which nodes are ready.

        Does nothing; a subclass may override it (tests widen the claim race with a
        sleep here). ``node`` is the step that just finished.
        """

    # -- taskiq hook -----------------------------------------------------------------------

    async def post_save(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> None:
        """Record this step's output or failure, then claim and send the ready nodes."""
        pipeline_id = message.labels.get(LABEL_PIPELINE_ID)
        node_name = message.labels.get(LABEL_PIPELINE_NODE)
        if not pipeline_id or not node_name:
            return
        try:
            await self._finish_step(str(pipeline_id), str(node_name), result)
        except Exception:
            # A pipeline problem must never break the worker; the run will time out.
            self._counters["errors"] += 1
            logger.exception(
                "pipeline %s: could not advance after node %s (task %s)",
                pipeline_id,
                node_name,
                message.task_id,
            )

    # -- the engine (also used by DataflowPipeline.kiq) ------------------------------------

    async def start_run(self, spec: RunSpec, inputs: dict[str, Any]) -> bool:
        """Reserve the run's id, store its inputs and send its first nodes.

        Returns ``False`` (and writes nothing) when the id is already taken.

        Raises:
            StorageSerializationError: an input cannot be stored (the id is released).
            StorageError: the storage failed (after bounded retries).
        """
        storage = self.storage
        keys = RunKeys(spec.pipeline_id)
        if not await storage.add(keys.spec, spec, spec.ttl_seconds):
            return False
        try:
            if inputs:
                await storage.set_many(
                    {keys.data(name): value for name, value in inputs.items()},
                    spec.ttl_seconds,
                )
        except StorageError:
            await storage.delete(keys.spec)
            raise
        self._remember(spec)
        self._counters["runs_started"] += 1
        await self._advance(spec, nested=False)
        return True

    async def _finish_step(
        self,
        pipeline_id: str,
        node_name: str,
        result: TaskiqResult[Any],
    ) -> None:
        storage = self.storage
        spec = await _retrying("read the spec", lambda: self._spec(pipeline_id))
        if spec is None:
            logger.warning(
                "pipeline %s: no spec in storage (expired or another store?); node %s "
                "finished but the run cannot advance",
                pipeline_id,
                node_name,
            )
            return
        node = spec.node(node_name)
        if node is None:
            logger.warning("pipeline %s: unknown node %s", pipeline_id, node_name)
            return
        if result.is_err:
            error = result.error
            await self._fail(spec, node, type(error).__qualname__, str(error))
            return
        key = RunKeys(pipeline_id).data(node.output)
        try:
            # add: a redelivered step cannot replace the value consumers already read.
            await _retrying(
                "write an output",
                lambda: storage.add(key, result.return_value, spec.ttl_seconds),
            )
        except StorageSerializationError as exc:
            await self._fail(spec, node, type(exc).__qualname__, str(exc))
            return
        self._counters["steps_advanced"] += 1
        await self.before_readiness_check(pipeline_id, node.name)
        await self._advance(spec, nested=True, finished=node)

    async def _advance(
        self,
        spec: RunSpec,
        *,
        nested: bool,
        finished: SpecNode | None = None,
    ) -> None:
        """Run ``advance`` and send what it claimed; retry it on connection errors."""
        for pause in (*_BACKOFF, None):
            error: StorageError | None
            try:
                outcome = await advance(self.storage, spec, finished)
            except StorageConnectionError as exc:
                error = exc
            else:
                self._count(outcome)
                # Claims won before an error must be sent whatever happens next.
                await self._dispatch(outcome.steps, nested=nested)
                error = outcome.error
                if error is None:
                    return
            if pause is None or not isinstance(error, StorageConnectionError):
                raise error
            logger.warning(
                "pipeline %s: storage unreachable while advancing (%s); retrying in %.2fs",
                spec.pipeline_id,
                error,
                pause,
            )
            await asyncio.sleep(pause)

    async def _fail(self, spec: RunSpec, node: SpecNode, error_type: str, message: str) -> None:
        self._counters["steps_failed"] += 1
        record = failure_record(node, error_type, message)
        key = RunKeys(spec.pipeline_id).failed
        await _retrying("record a failure", lambda: self.storage.add(key, record, spec.ttl_seconds))

    def _count(self, outcome: Advance) -> None:
        self._counters["claims_won"] += outcome.claims_won
        self._counters["claims_lost"] += outcome.claims_lost
        self._counters["claims_taken"] += outcome.claims_taken
        if outcome.marked_done:
            self._counters["runs_done"] += 1

    def _remember(self, spec: RunSpec) -> None:
        self._specs[spec.pipeline_id] = spec
        self._specs.move_to_end(spec.pipeline_id)
        while len(self._specs) > self._spec_cache_size:
            self._specs.popitem(last=False)

    async def _spec(self, pipeline_id: str) -> RunSpec | None:
        spec = self._specs.get(pipeline_id)
        if spec is None:
            spec = await self.storage.get(RunKeys(pipeline_id).spec, type=RunSpec)
            if spec is None:
                return None
            self._remember(spec)
        return spec

    # -- sending ------------------------------------------------------------------------------

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
                await self._send(drain.queue.popleft())
        finally:
            _DRAIN.reset(token)

    async def _send(self, step: ClaimedStep) -> None:
        spec, node = step.spec, step.node
        try:
            task = self.broker.find_task(node.task_name)
            kicker: AsyncKicker[Any, Any] = (
                task.kicker().with_broker(self.broker)
                if task is not None
                else AsyncKicker(task_name=node.task_name, broker=self.broker, labels={})
            )
            kicker.with_task_id(node.task_id).with_labels(
                **{LABEL_PIPELINE_ID: spec.pipeline_id, LABEL_PIPELINE_NODE: node.name},
            )
            if node.retries and "retry_on_error" not in kicker.labels:
                # taskiq's retry middlewares count the first attempt in max_retries.
                kicker.with_labels(retry_on_error=True, max_retries=node.retries + 1)
            await kicker.kiq(**step.kwargs)
            self._counters["steps_sent"] += 1
        except Exception as exc:
            self._counters["errors"] += 1
            logger.exception("pipeline %s: could not send node %s", spec.pipeline_id, node.name)
            try:
                await self._fail(spec, node, type(exc).__qualname__, f"not sent: {exc}")
            except StorageError:
                logger.exception("pipeline %s: could not record the failure", spec.pipeline_id)
