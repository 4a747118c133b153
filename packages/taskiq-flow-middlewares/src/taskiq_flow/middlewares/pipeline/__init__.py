"""Dataflow pipelines for taskiq, driven by run state in a storage adapter.

A task declares the output it produces (``@pipeline_task(output="stats")``); its
parameter names are the inputs it consumes; the DAG follows. ``PipelineMiddleware``
advances runs in ``post_save`` on whichever worker ran the step, so any number of
workers drive one run; steps whose worker died are re-driven when their lease lapses.
Runs can be cancelled, resumed, fanned out (``map_over``) and drawn. See
``docs/pipelines.md``.
"""

from taskiq_flow.middlewares.pipeline.errors import (
    PipelineCancelledError,
    PipelineDefinitionError,
    PipelineError,
    PipelineRunNotFoundError,
    PipelineRunStateError,
    PipelineStepError,
    PipelineTimeoutError,
)
from taskiq_flow.middlewares.pipeline.graph import MAX_MAP_ELEMENTS, RunSpec
from taskiq_flow.middlewares.pipeline.middleware import PipelineMiddleware
from taskiq_flow.middlewares.pipeline.pipeline import DataflowPipeline, DataflowRun
from taskiq_flow.middlewares.pipeline.sender import (
    LABEL_PIPELINE_ATTEMPT,
    LABEL_PIPELINE_ELEMENT,
    LABEL_PIPELINE_ID,
    LABEL_PIPELINE_NODE,
)
from taskiq_flow.middlewares.pipeline.status import NodeStatus, RunStatus, read_status
from taskiq_flow.middlewares.pipeline.task import pipeline_task
from taskiq_flow.middlewares.pipeline.view import render_run, to_dot, to_mermaid

__all__ = [
    "LABEL_PIPELINE_ATTEMPT",
    "LABEL_PIPELINE_ELEMENT",
    "LABEL_PIPELINE_ID",
    "LABEL_PIPELINE_NODE",
    "MAX_MAP_ELEMENTS",
    "DataflowPipeline",
    "DataflowRun",
    "NodeStatus",
    "PipelineCancelledError",
    "PipelineDefinitionError",
    "PipelineError",
    "PipelineMiddleware",
    "PipelineRunNotFoundError",
    "PipelineRunStateError",
    "PipelineStepError",
    "PipelineTimeoutError",
    "RunSpec",
    "RunStatus",
    "pipeline_task",
    "read_status",
    "render_run",
    "to_dot",
    "to_mermaid",
]
