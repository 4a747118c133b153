"""``DataflowPipeline`` (build, validate, start, cancel, resume) and ``DataflowRun``."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from taskiq import AsyncBroker, TaskiqResult
from taskiq.decor import AsyncTaskiqDecoratedTask

from taskiq_flow.middlewares.errors import MiddlewareConfigError
from taskiq_flow.middlewares.pipeline.errors import (
    PipelineCancelledError,
    PipelineDefinitionError,
    PipelineRunNotFoundError,
    PipelineStepError,
    PipelineTimeoutError,
)
from taskiq_flow.middlewares.pipeline.graph import (
    Graph,
    GraphNode,
    RunSpec,
    SpecNode,
    check_pipeline_id,
)
from taskiq_flow.middlewares.pipeline.middleware import PipelineMiddleware
from taskiq_flow.middlewares.pipeline.state import RunKeys, read_run_state
from taskiq_flow.middlewares.pipeline.status import RunStatus, read_status
from taskiq_flow.middlewares.pipeline.task import task_info
from taskiq_flow.middlewares.pipeline.view import to_dot, to_mermaid
from taskiq_flow.middlewares.storage import check_number
from taskiq_flow.storage import BaseStorageAdapter, StorageError, StorageSerializationError

__all__ = ["DataflowPipeline", "DataflowRun"]

logger = logging.getLogger("taskiq_flow.pipeline")

_FIRST_POLL = 0.005


class DataflowRun:
    """One run of a pipeline: its id, its task ids, and a way to wait for its outputs.

    Attributes:
        pipeline_id: the run's id (the ``pipeline_id`` label of every step).
        task_ids: node name -> the task id its step runs under (fixed at ``kiq``).
    """

    def __init__(
        self,
        spec: RunSpec,
        middleware: PipelineMiddleware | BaseStorageAdapter,
    ) -> None:
        # Over a bare store, waits, status and cancel work; nothing is re-sent (there is
        # no broker to send with).
        self._can_send = not isinstance(middleware, BaseStorageAdapter)
        if isinstance(middleware, BaseStorageAdapter):
            middleware = PipelineMiddleware(middleware)
        self.pipeline_id = spec.pipeline_id
        self.task_ids: Mapping[str, str] = MappingProxyType(
            {node.name: node.task_id for node in spec.nodes},
        )
        self._spec = spec
        self._middleware = middleware
        self._storage = middleware.storage
        self._keys = RunKeys(spec.pipeline_id)
        self._watching: asyncio.Task[None] | None = None
        self._watch_started = 0.0
        self._watches: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"DataflowRun(pipeline_id={self.pipeline_id!r}, nodes={list(self.task_ids)})"

    async def is_ready(self) -> bool:
        """Whether the run has finished (every output present), failed or was cancelled."""
        state = await self._storage.get_many(self._keys.state_keys())
        return bool(state)

    async def status(self) -> RunStatus:
        """Each node's state (pending, claimed, sent, running, done, failed, cancelled) and times.

        Raises:
            PipelineRunNotFoundError: the run's state is gone (expired).
        """
        status = await read_status(self._storage, self.pipeline_id)
        if status is None:
            raise PipelineRunNotFoundError(pipeline_id=self.pipeline_id)
        return status

    async def cancel(self) -> bool:
        """Cancel the run: no further step is sent; results of running steps are kept.

        Returns:
            Whether this call cancelled it (``False``: it was cancelled already).

        Raises:
            PipelineRunStateError: the run is already done or failed.
        """
        return await self._middleware.cancel(self.pipeline_id)

    async def wait_result(
        self,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - taskiq's wait_result(timeout=) API
        poll_interval: float = 0.1,
    ) -> TaskiqResult[dict[str, Any]]:
        """Wait until the run is done or failed, polling its state in storage.

        Args:
            timeout: seconds to wait at most (``None``: no limit).
            poll_interval: the longest pause between two polls (they start at 5 ms
                and double up to this).

        Returns:
            On success ``return_value`` maps every output name to its value. On failure
            ``is_err`` is true, ``error`` is a :class:`PipelineStepError` naming the node
            and the exception type, and ``return_value`` holds the outputs produced
            before it.

        While it waits it also watches the run (every half lease): steps whose lease
        lapsed (their worker died) are sent again, so a waited-for run never hangs.

        Raises:
            MiddlewareConfigError: ``poll_interval`` is not > 0 (a ``ValueError``; a
                ``MiddlewareConfigTypeError``, also a ``TypeError``, if not a number).
            PipelineTimeoutError: the run did not finish within ``timeout`` (with its
                state: ``running`` or ``stalled``).
            PipelineCancelledError: the run was cancelled.
        """
        check_number("poll_interval", poll_interval)
        if not poll_interval > 0:  # NaN too
            raise MiddlewareConfigError(
                name="poll_interval", expected="> 0 (seconds)", got=repr(poll_interval)
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = min(_FIRST_POLL, poll_interval)
        watch_every = self._spec.lease_seconds / 2
        next_watch = time.monotonic() + watch_every
        while True:
            state = await self._storage.get_many(self._keys.state_keys())
            if state:
                return await self._result(state)
            if time.monotonic() >= next_watch and self._can_send:
                self._watch()
                next_watch = time.monotonic() + watch_every
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    status = await read_status(self._storage, self.pipeline_id)
                    stalled = status is not None and status.stalled
                    raise PipelineTimeoutError(
                        pipeline_id=self.pipeline_id,
                        timeout=timeout,
                        state="stalled" if stalled else "running",
                    )
                await asyncio.sleep(min(pause, remaining))
            else:
                await asyncio.sleep(pause)
            pause = min(pause * 2, poll_interval)

    def _watch(self) -> None:
        # In the background: a slow re-send never holds up the wait (or its timeout); one
        # stuck for a whole lease no longer holds up the next watch either.
        now = time.monotonic()
        if (
            self._watching is None
            or self._watching.done()
            or now - self._watch_started > self._spec.lease_seconds
        ):
            self._watch_started = now
            self._watching = asyncio.create_task(self._watch_once())
            self._watches.add(self._watching)
            self._watching.add_done_callback(self._watches.discard)

    async def _watch_once(self) -> None:
        try:
            await self._middleware.watch(self._spec)
        except StorageError as exc:  # the next watch tries again; one line per interval
            self._middleware.outage.failure("run %s: could not watch (%s)", self.pipeline_id, exc)
        except Exception as exc:  # the next watch tries again
            logger.warning("pipeline %s: could not watch the run (%s)", self.pipeline_id, exc)

    async def _result(self, state: dict[str, Any]) -> TaskiqResult[dict[str, Any]]:
        if read_run_state(self._keys, state) == "cancelled":
            raise PipelineCancelledError(pipeline_id=self.pipeline_id)
        outputs = await self._storage.get_many(
            [self._keys.data(name) for name in self._spec.outputs],
        )
        prefix_len = len(self._keys.data(""))
        values = {key[prefix_len:]: value for key, value in outputs.items()}
        ordered = {name: values[name] for name in self._spec.outputs if name in values}
        failure = state.get(self._keys.failed)
        labels = {"pipeline_id": self.pipeline_id}
        if isinstance(failure, dict) and self._keys.done not in state:
            element = failure.get("element")
            message = str(failure.get("error_message"))
            error = PipelineStepError(
                pipeline_id=self.pipeline_id,
                node=str(failure.get("node")),
                task_id=str(failure.get("task_id")),
                error_type=str(failure.get("error_type")),
                error_message=message if element is None else f"element {element}: {message}",
                element=element if isinstance(element, int) else None,
            )
            elapsed = float(failure.get("failed_at", time.time())) - self._spec.created_at
            return TaskiqResult(
                is_err=True,
                return_value=ordered,
                execution_time=round(max(elapsed, 0.0), 3),
                error=error,
                labels=labels,
            )
        done = state.get(self._keys.done)
        finished_at = done.get("finished_at") if isinstance(done, dict) else None
        elapsed = float(finished_at or time.time()) - self._spec.created_at
        return TaskiqResult(
            is_err=False,
            return_value=ordered,
            execution_time=round(max(elapsed, 0.0), 3),
            labels=labels,
        )


class DataflowPipeline:
    """A DAG of ``pipeline_task``-decorated tasks, connected by parameter names.

    Build it with :meth:`from_tasks`; the graph is checked there (duplicate outputs,
    cycles), each run's inputs and id at :meth:`kiq`, always before anything is sent.
    The broker needs a :class:`PipelineMiddleware`.
    """

    def __init__(self, broker: AsyncBroker, graph: Graph) -> None:
        self.broker = broker
        self._graph = graph

    @classmethod
    def from_tasks(
        cls,
        broker: AsyncBroker,
        tasks: Iterable[AsyncTaskiqDecoratedTask[Any, Any]],
    ) -> DataflowPipeline:
        """Build a pipeline from tasks registered on ``broker``.

        Raises:
            PipelineDefinitionError: a task lacks ``pipeline_task``, is not registered on
                the broker, or the graph has duplicate names or outputs, or a cycle.
        """
        nodes: list[GraphNode] = []
        for task in tasks:
            if not isinstance(task, AsyncTaskiqDecoratedTask):
                raise PipelineDefinitionError(
                    reason=f"{task!r} is not a taskiq task: decorate it with @broker.task",
                )
            info = task_info(task)
            if info is None:
                raise PipelineDefinitionError(
                    reason=f"task {task.task_name} has no @pipeline_task(output=...)",
                )
            if broker.find_task(task.task_name) is None:
                raise PipelineDefinitionError(
                    reason=f"task {task.task_name} is not registered on this broker",
                )
            nodes.append(GraphNode(info=info, task_name=task.task_name))
        return cls(broker, Graph(nodes))

    @property
    def nodes(self) -> tuple[str, ...]:
        """The node names, in the order given."""
        return tuple(node.info.name for node in self._graph.nodes)

    @property
    def outputs(self) -> tuple[str, ...]:
        """The names of the values the nodes produce."""
        return tuple(node.info.output for node in self._graph.nodes)

    @property
    def inputs(self) -> frozenset[str]:
        """The names ``kiq`` accepts (consumed by some node, produced by none)."""
        return self._graph.external_inputs

    @property
    def required_inputs(self) -> frozenset[str]:
        """The inputs ``kiq`` must be given."""
        return self._graph.required_inputs

    def _spec_nodes(self) -> list[SpecNode]:
        available = set(self._graph.external_inputs) | set(self._graph.producers)
        return [
            SpecNode(
                name=node.info.name,
                task_name=node.task_name,
                task_id="",
                output=node.info.output,
                inputs=tuple(
                    item
                    for item in (*node.info.signature.required, *node.info.signature.optional)
                    if item in available
                ),
                map_over=node.info.map_over,
            )
            for node in self._graph.nodes
        ]

    def to_mermaid(self) -> str:
        """The DAG as a Mermaid ``flowchart`` (paste it into Markdown)."""
        return to_mermaid(self._spec_nodes())

    def to_dot(self) -> str:
        """The DAG as a Graphviz ``digraph`` (``dot -Tsvg``)."""
        return to_dot(self._spec_nodes())

    def _middleware(self) -> PipelineMiddleware:
        for middleware in self.broker.middlewares:
            if isinstance(middleware, PipelineMiddleware):
                return middleware
        raise PipelineDefinitionError(
            reason="the broker has no PipelineMiddleware: "
            "broker.add_middlewares(StorageMiddleware(...), PipelineMiddleware())",
        )

    async def kiq(self, *, pipeline_id: str | None = None, **inputs: Any) -> DataflowRun:
        """Start a run: validate, store the inputs, send the nodes that are ready.

        Args:
            pipeline_id: the run's id (default: a new random one). Reusing an id whose
                state is still stored is an error.
            **inputs: the pipeline's external inputs, by name.

        Raises:
            PipelineDefinitionError: missing or unknown inputs, a bad or reused
                ``pipeline_id``, an input storage cannot encode, or no
                ``PipelineMiddleware`` on the broker. Nothing was sent.
        """
        middleware = self._middleware()
        run_id = uuid.uuid4().hex if pipeline_id is None else check_pipeline_id(pipeline_id)
        spec = self._graph.plan(
            run_id,
            inputs,
            new_task_id=self.broker.id_generator,
            created_at=time.time(),
            ttl_seconds=middleware.ttl_seconds,
            lease_seconds=middleware.lease_seconds,
            max_attempts=middleware.max_attempts,
        )
        try:
            started = await middleware.start_run(spec, dict(inputs))
        except StorageSerializationError as exc:
            raise PipelineDefinitionError(reason=f"cannot store the inputs: {exc}") from exc
        if not started:
            raise PipelineDefinitionError(
                reason=f"pipeline_id {run_id!r} is already used by a stored run",
            )
        return DataflowRun(spec, middleware)

    async def run(self, pipeline_id: str) -> DataflowRun:
        """The stored run ``pipeline_id`` (to wait for it, see its status, cancel it).

        Raises:
            PipelineRunNotFoundError: no such run.
        """
        middleware = self._middleware()
        return DataflowRun(await middleware.load_spec(pipeline_id), middleware)

    async def cancel(self, pipeline_id: str) -> bool:
        """Cancel run ``pipeline_id``; see :meth:`DataflowRun.cancel`.

        Raises:
            PipelineRunNotFoundError: no such run.
            PipelineRunStateError: the run is already done or failed.
        """
        return await self._middleware().cancel(pipeline_id)

    async def resume(self, pipeline_id: str) -> DataflowRun:
        """Re-drive a failed, cancelled or stuck run: finished steps keep their outputs.

        The failed step (and any step whose worker died) is sent again under its task
        id; the nodes downstream follow as usual. Wait with the returned run.

        Raises:
            PipelineRunNotFoundError: no such run.
            PipelineRunStateError: the run is done.
        """
        middleware = self._middleware()
        return DataflowRun(await middleware.resume(pipeline_id), middleware)

    async def kiq_dataflow(
        self,
        *,
        pipeline_id: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - taskiq's wait_result(timeout=) API
        **inputs: Any,
    ) -> dict[str, Any]:
        """Run the pipeline and wait: the outputs by name.

        Raises:
            PipelineDefinitionError: as :meth:`kiq`.
            PipelineStepError: a node failed (names the node and exception type).
            PipelineTimeoutError: not finished within ``timeout`` seconds.
        """
        run = await self.kiq(pipeline_id=pipeline_id, **inputs)
        result = await run.wait_result(timeout=timeout)
        if result.is_err and result.error is not None:
            raise result.error
        return result.return_value
