"""Zero-config setup: ``StorageAdapterFactory`` builds adapters and middlewares from config.

>>> from taskiq_flow.factory import StorageAdapterFactory
>>> middlewares = StorageAdapterFactory.create_default_middlewares()  # reads TASKIQ_FLOW_*
"""

from taskiq_flow.config import BackendNotInstalledError, ConfigError, TaskiqFlowConfig
from taskiq_flow.factory.builder import DefaultMiddlewares, StorageAdapterFactory

__all__ = [
    "BackendNotInstalledError",
    "ConfigError",
    "DefaultMiddlewares",
    "StorageAdapterFactory",
    "TaskiqFlowConfig",
]
