"""taskiq_flow.storage: key-value persistence with per-key TTL on three backends.

``InMemoryStorageAdapter``, ``SQLiteStorageAdapter`` (aiosqlite) and
``RedisStorageAdapter`` (the ``[redis]`` extra) keep one contract,
:class:`BaseStorageAdapter`; the two with a driver are imported on first access. This
package does not depend on taskiq. :mod:`taskiq_flow.storage.kit` is its low-level API,
the building blocks the other taskiq-flow packages share.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from taskiq_flow.storage.base import BaseStorageAdapter
from taskiq_flow.storage.entry import StorageEntry
from taskiq_flow.storage.errors import (
    InvalidKeyError,
    InvalidStorageURLError,
    InvalidTTLError,
    StorageConfigError,
    StorageConnectionError,
    StorageCorruptError,
    StorageError,
    StorageSerializationError,
)
from taskiq_flow.storage.glob import glob_match
from taskiq_flow.storage.kit.lifecycle import lazy_exports
from taskiq_flow.storage.memory import InMemoryStorageAdapter

if TYPE_CHECKING:
    from taskiq_flow.storage.redis import RedisStorageAdapter
    from taskiq_flow.storage.sqlite import SQLiteStorageAdapter

__all__ = [
    "BaseStorageAdapter",
    "InMemoryStorageAdapter",
    "InvalidKeyError",
    "InvalidStorageURLError",
    "InvalidTTLError",
    "RedisStorageAdapter",
    "SQLiteStorageAdapter",
    "StorageConfigError",
    "StorageConnectionError",
    "StorageCorruptError",
    "StorageEntry",
    "StorageError",
    "StorageSerializationError",
    "glob_match",
]


# The Redis adapter needs the optional redis client, the SQLite one a database driver:
# both are imported on first use, so a missing extra fails where it is asked for (naming
# the extra), and the cache package, which imports this one for its low-level API
# (taskiq_flow.storage.kit), loads neither.
__getattr__ = lazy_exports(
    __name__,
    {
        "RedisStorageAdapter": "taskiq_flow.storage.redis",
        "SQLiteStorageAdapter": "taskiq_flow.storage.sqlite",
    },
)
