"""Errors raised by dataflow pipelines.

``PipelineError`` is the root; it inherits the package's ``MiddlewareError`` (itself a
taskiq ``TaskiqError``), so ``except TaskiqError`` keeps catching everything. Messages are built
from the declared fields (taskiq's templated-exception style).
"""

from __future__ import annotations

from taskiq.exceptions import TaskiqResultTimeoutError

from taskiq_flow.middlewares.errors import MiddlewareError

__all__ = [
    "PipelineCancelledError",
    "PipelineDefinitionError",
    "PipelineError",
    "PipelineRunNotFoundError",
    "PipelineRunStateError",
    "PipelineStepError",
    "PipelineTimeoutError",
]


class PipelineError(MiddlewareError):
    """Root of every error raised by ``taskiq_flow.middlewares.pipeline``."""

    __template__ = "taskiq-flow pipeline error"


class PipelineDefinitionError(PipelineError, ValueError):
    """The pipeline, its inputs or its ``pipeline_id`` are invalid; nothing was sent."""

    __template__ = "{reason}"
    reason: str


class PipelineStepError(PipelineError):
    """A node of a run failed for good (after any retries); the run stopped there."""

    __template__ = (
        "pipeline {pipeline_id!r}: node {node!r} (task {task_id}) failed with "
        "{error_type}: {error_message}"
    )
    pipeline_id: str
    node: str
    task_id: str
    error_type: str
    error_message: str
    # The element's index when the node fans out (``map_over``); also in the message.
    element: int | None = None


class PipelineTimeoutError(PipelineError, TaskiqResultTimeoutError):
    """``wait_result`` gave up before the run finished (the run itself goes on)."""

    __template__ = (
        "pipeline {pipeline_id!r} did not finish within {timeout} seconds (state: {state})"
    )
    pipeline_id: str
    # The run's state when the wait gave up: "running" (or "stalled": work lost, not
    # yet re-driven), see ``DataflowRun.status()``.
    state: str = "running"


class PipelineCancelledError(PipelineError):
    """The run was cancelled (``run.cancel()`` / ``pipeline.cancel(id)``) before it finished."""

    __template__ = "pipeline {pipeline_id!r} was cancelled"
    pipeline_id: str


class PipelineRunNotFoundError(PipelineError, LookupError):
    """No stored run has this ``pipeline_id`` (never started, or its state expired)."""

    __template__ = "no pipeline run {pipeline_id!r} in storage"
    pipeline_id: str


class PipelineRunStateError(PipelineError, ValueError):
    """The run is in a state that does not allow this (cancel a finished run, resume a done one)."""

    __template__ = "cannot {action} pipeline {pipeline_id!r}: it is {state}"
    pipeline_id: str
    action: str
    state: str
