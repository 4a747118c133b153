"""taskiq-flow settings: ``TaskiqFlowConfig`` reads ``TASKIQ_FLOW_*`` environment variables.

>>> from taskiq_flow.config import TaskiqFlowConfig
>>> TaskiqFlowConfig(storage_type="sqlite", storage_sqlite_path=":memory:", environ={}).storage_type
'sqlite'
"""

from taskiq_flow.config._parse import mask_url
from taskiq_flow.config.errors import BackendNotInstalledError, ConfigError
from taskiq_flow.config.model import (
    CACHE_TYPES,
    ENV_PREFIX,
    STORAGE_TYPES,
    UNSET,
    CacheType,
    SettingSource,
    StorageType,
    TaskiqFlowConfig,
)

__all__ = [
    "CACHE_TYPES",
    "ENV_PREFIX",
    "STORAGE_TYPES",
    "UNSET",
    "BackendNotInstalledError",
    "CacheType",
    "ConfigError",
    "SettingSource",
    "StorageType",
    "TaskiqFlowConfig",
    "mask_url",
]
