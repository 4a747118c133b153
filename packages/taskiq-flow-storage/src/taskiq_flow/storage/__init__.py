"""taskiq_flow.storage: key-value persistence with per-key TTL on three backends.

``InMemoryStorageAdapter``, ``SQLiteStorageAdapter`` (aiosqlite) and
``RedisStorageAdapter`` (the ``[redis]`` extra, imported lazily on first access) keep one
contract, :class:`BaseStorageAdapter`. This package does not depend on taskiq.
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
from taskiq_flow.storage.sqlite import SQLiteStorageAdapter

if TYPE_CHECKING:
    from taskiq_flow.storage.redis import RedisStorageAdapter

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
    # so that a missing extra fails where Redis is asked for, naming the extra.
    if name == "RedisStorageAdapter":
        from taskiq_flow.storage.redis import RedisStorageAdapter  # noqa: PLC0415

        return RedisStorageAdapter
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
