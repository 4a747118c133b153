"""The storage error tree: catch :class:`StorageError` for all of them, or a leaf.

Leaves that mean something a builtin already means also inherit it, so code written
against the builtin (``except ValueError``) keeps working.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "InvalidKeyError",
    "InvalidStorageURLError",
    "InvalidTTLError",
    "StorageConfigError",
    "StorageConnectionError",
    "StorageCorruptError",
    "StorageError",
    "StorageSerializationError",
]


class StorageError(Exception):
    """Root of every error raised by ``taskiq_flow.storage``."""


class StorageConnectionError(StorageError):
    """The backend could not be reached, or the connection broke mid-operation."""


class StorageConfigError(StorageError, ValueError):
    """An adapter option that cannot work (a bad ``max_entries``, a bad client)."""


class InvalidStorageURLError(StorageConfigError, StorageConnectionError):
    """A connection URL or path that the backend cannot use.

    The message never contains the URL's password.
    """

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"invalid storage URL {url!r}: {reason}")


class StorageSerializationError(StorageError, TypeError):
    """A value cannot be encoded (on write) or does not match the requested type (on read)."""

    def __init__(self, key: str, value_type: Any, reason: str) -> None:
        self.key = key
        self.value_type = value_type
        self.reason = reason
        name = getattr(value_type, "__qualname__", None) or repr(value_type)
        super().__init__(f"value of type {name} under key {key!r}: {reason}")


class StorageCorruptError(StorageError):
    """The bytes stored under a key are not a value this package wrote."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"stored data under key {key!r} is corrupt: {reason}")


class InvalidKeyError(StorageError, TypeError, ValueError):
    """A key that is not a non-empty ``str`` encodable as UTF-8."""

    def __init__(self, key: object, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"invalid storage key {key!r}: {reason}")


class InvalidTTLError(StorageError, ValueError):
    """A TTL that is not a positive ``int`` number of seconds."""

    def __init__(self, ttl: object, reason: str | None = None) -> None:
        self.ttl = ttl
        super().__init__(
            reason
            or f"ttl_seconds must be a positive int (seconds) or None, got {ttl!r}"
            f" of type {type(ttl).__name__}"
        )
