__path__ = __import__("pkgutil").extend_path(__path__, __name__)
"""taskiq-flow: persistence and caching for taskiq.

The subpackages (``taskiq_flow.storage``, ``.cache``, ``.middlewares``,
``.factory``, ``.config``) come from their own distributions; this file only
merges them into one package (``pkgutil.extend_path`` above) and re-exports the
names the user guide imports from the top level, lazily, so that importing
``taskiq_flow.storage`` never pulls in taskiq.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskiq_flow.cache import InMemoryCacheAdapter, RedisCacheAdapter
    from taskiq_flow.config import TaskiqFlowConfig
    from taskiq_flow.factory import StorageAdapterFactory
    from taskiq_flow.middlewares import (
        CacheMiddleware,
        DataflowPipeline,
        DataflowRun,
        PipelineCancelledError,
        PipelineMiddleware,
        PipelineStepError,
        PipelineTimeoutError,
        RunStatus,
        StorageMiddleware,
        StorageResultBackend,
        StorageScheduleSource,
        pipeline_task,
    )
    from taskiq_flow.storage import (
        InMemoryStorageAdapter,
        RedisStorageAdapter,
        SQLiteStorageAdapter,
        StorageEntry,
    )

_EXPORTS: dict[str, str] = {
    "PipelineMiddleware": "taskiq_flow.middlewares",
    "DataflowPipeline": "taskiq_flow.middlewares",
    "DataflowRun": "taskiq_flow.middlewares",
    "pipeline_task": "taskiq_flow.middlewares",
    "PipelineCancelledError": "taskiq_flow.middlewares",
    "PipelineStepError": "taskiq_flow.middlewares",
    "PipelineTimeoutError": "taskiq_flow.middlewares",
    "RunStatus": "taskiq_flow.middlewares",
    "StorageMiddleware": "taskiq_flow.middlewares",
    "CacheMiddleware": "taskiq_flow.middlewares",
    "StorageResultBackend": "taskiq_flow.middlewares",
    "StorageScheduleSource": "taskiq_flow.middlewares",
    "StorageEntry": "taskiq_flow.storage",
    "InMemoryStorageAdapter": "taskiq_flow.storage",
    "RedisStorageAdapter": "taskiq_flow.storage",
    "SQLiteStorageAdapter": "taskiq_flow.storage",
    "InMemoryCacheAdapter": "taskiq_flow.cache",
    "RedisCacheAdapter": "taskiq_flow.cache",
    "TaskiqFlowConfig": "taskiq_flow.config",
    "StorageAdapterFactory": "taskiq_flow.factory",
}

__all__ = [
    "CacheMiddleware",
    "DataflowPipeline",
    "DataflowRun",
    "InMemoryCacheAdapter",
    "InMemoryStorageAdapter",
    "PipelineCancelledError",
    "PipelineMiddleware",
    "PipelineStepError",
    "PipelineTimeoutError",
    "RedisCacheAdapter",
    "RedisStorageAdapter",
    "RunStatus",
    "SQLiteStorageAdapter",
    "StorageAdapterFactory",
    "StorageEntry",
    "StorageMiddleware",
    "StorageResultBackend",
    "StorageScheduleSource",
    "TaskiqFlowConfig",
    "pipeline_task",
]


def __getattr__(name: str) -> Any:
    """Import a re-exported name on first use."""
    module = _EXPORTS.get(name)
    if module is None:
        msg = f"module 'taskiq_flow' has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
