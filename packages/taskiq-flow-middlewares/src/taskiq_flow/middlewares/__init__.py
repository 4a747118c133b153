"""taskiq middlewares, and taskiq's result backend and schedule source over storage.

Add them with ``broker.add_middlewares(CacheMiddleware(...), StorageMiddleware(...))``;
nothing else is needed (no custom receiver, no CLI flag). For one store, also
``broker.with_result_backend(StorageResultBackend(storage))``, and for
``taskiq scheduler``, ``TaskiqScheduler(broker, sources=[StorageScheduleSource(storage)])``.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from taskiq_flow.middlewares._keys import cache_key_for
from taskiq_flow.middlewares.cache import CacheMiddleware
from taskiq_flow.middlewares.errors import (
    CachedTaskError,
    MiddlewareConfigError,
    MiddlewareConfigTypeError,
    MiddlewareError,
    ResultCorruptError,
    ResultMissingError,
    ResultNotSerializableError,
    StoredTaskError,
)
from taskiq_flow.middlewares.result_backend import StorageResultBackend
from taskiq_flow.middlewares.schedule_source import StorageScheduleSource
from taskiq_flow.middlewares.storage import StorageMiddleware, record_key

if TYPE_CHECKING:
    from taskiq_flow.middlewares.pipeline import (
        DataflowPipeline,
        DataflowRun,
        NodeStatus,
        PipelineCancelledError,
        PipelineDefinitionError,
        PipelineError,
        PipelineMiddleware,
        PipelineRunNotFoundError,
        PipelineRunStateError,
        PipelineStepError,
        PipelineTimeoutError,
        RunStatus,
        pipeline_task,
    )

_PIPELINE_NAMES = frozenset(
    {
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
        "RunStatus",
        "pipeline_task",
    },
)

__all__ = [
    "CacheMiddleware",
    "CachedTaskError",
    "DataflowPipeline",
    "DataflowRun",
    "MiddlewareConfigError",
    "MiddlewareConfigTypeError",
    "MiddlewareError",
    "NodeStatus",
    "PipelineCancelledError",
    "PipelineDefinitionError",
    "PipelineError",
    "PipelineMiddleware",
    "PipelineRunNotFoundError",
    "PipelineRunStateError",
    "PipelineStepError",
    "PipelineTimeoutError",
    "ResultCorruptError",
    "ResultMissingError",
    "ResultNotSerializableError",
    "RunStatus",
    "StorageMiddleware",
    "StorageResultBackend",
    "StorageScheduleSource",
    "StoredTaskError",
    "cache_key_for",
    "pipeline_task",
    "record_key",
]


def __getattr__(name: str) -> Any:
    """Load the pipeline names on first use (the subpackage is larger than the rest)."""
    if name in _PIPELINE_NAMES:
        value = getattr(import_module("taskiq_flow.middlewares.pipeline"), name)
        globals()[name] = value
        return value
    msg = f"module 'taskiq_flow.middlewares' has no attribute {name!r}"
    raise AttributeError(msg)
