"""Dataflow pipelines for taskiq, driven by run state in a storage adapter.

A task declares the output it produces (``@pipeline_task(output="stats")``); its
parameter names are the inputs it consumes; the DAG follows. ``PipelineMiddleware``
advances runs in ``post_save`` on whichever worker ran the step, so any number of
workers drive one run. See ``docs/pipelines.md``.
"""

from taskiq_flow.middlewares.pipeline.errors import (
    PipelineDefinitionError,
    PipelineError,
    PipelineStepError,
    PipelineTimeoutError,
)
from taskiq_flow.middlewares.pipeline.middleware import (
    LABEL_PIPELINE_ID,
    LABEL_PIPELINE_NODE,
    PipelineMiddleware,
)
from taskiq_flow.middlewares.pipeline.pipeline import DataflowPipeline, DataflowRun
from taskiq_flow.middlewares.pipeline.task import pipeline_task

__all__ = [
    "LABEL_PIPELINE_ID",
    "LABEL_PIPELINE_NODE",
    "DataflowPipeline",
    "DataflowRun",
    "PipelineDefinitionError",
    "PipelineError",
    "PipelineMiddleware",
    "PipelineStepError",
    "PipelineTimeoutError",
    "pipeline_task",
]
