"""taskiq_flow.storage: key-value persistence with per-key TTL on three backends.

``InMemoryStorageAdapter``, ``SQLiteStorageAdapter`` (aiosqlite) and
``RedisStorageAdapter`` (the ``[redis]`` extra) keep one contract,
:class:`BaseStorageAdapter`; the two with a driver are imported on first access. This
package does not depend on taskiq. :mod:`taskiq_flow.storage.kit` is its low-level API,
the building blocks the other taskiq-flow packages share.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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


def __getattr__(name: str) -> Any:
    # The Redis adapter needs the optional redis client: import it on first use only,
    # so that a missing extra fails where Redis is asked for, naming the extra. The
    # SQLite adapter is loaded on first use too: the cache package imports this package
    # for its low-level API (taskiq_flow.storage.kit), not for a database driver.
    if name == "RedisStorageAdapter":
        from taskiq_flow.storage.redis import RedisStorageAdapter  # noqa: PLC0415

        return RedisStorageAdapter
    if name == "SQLiteStorageAdapter":
        from taskiq_flow.storage.sqlite import SQLiteStorageAdapter  # noqa: PLC0415

        return SQLiteStorageAdapter
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
