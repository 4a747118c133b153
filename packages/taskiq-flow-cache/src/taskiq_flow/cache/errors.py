"""The exceptions of ``taskiq_flow.cache``: one root, a leaf per failure.

Leaves also inherit the builtin meaning where one exists, so callers may catch either
``CacheSerializationError`` or plain ``TypeError``. Driver exceptions (``redis.RedisError``,
``OSError``) never escape an adapter method, ``close()`` included: the storage package's
Redis layer maps them to ``CacheConnectionError`` or ``CacheBackendError``.
"""

from __future__ import annotations

__all__ = [
    "CacheBackendError",
    "CacheConnectionError",
    "CacheError",
    "CacheKeyError",
    "CacheLockTimeout",
    "CacheSerializationError",
    "CacheValueError",
]


class CacheError(Exception):
    """Root of every error raised by ``taskiq_flow.cache``."""


class CacheValueError(CacheError, ValueError):
    """An argument is out of range: a TTL, a key, a timeout or an adapter option."""

    @classmethod
    def about(cls, value: object, reason: str) -> CacheValueError:
        """The error for ``value``, explained by ``reason`` (an argument-check factory)."""
        return cls(reason)


class CacheKeyError(CacheValueError, TypeError):
    """A key that is not a non-empty ``str`` encodable as UTF-8 (the storage rules)."""

    def __init__(self, key: object, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"invalid cache key {key!r}: {reason}")


class CacheConnectionError(CacheError, ConnectionError):
    """The cache backend cannot be reached (refused, reset or timed out)."""

    def __init__(self, operation: str, detail: str) -> None:
        self.operation = operation
        super().__init__(f"cache backend unavailable during {operation}: {detail}")


class CacheBackendError(CacheError):
    """The cache backend answered with an error (for example a Redis ``ResponseError``)."""

    def __init__(self, operation: str, detail: str) -> None:
        self.operation = operation
        super().__init__(f"cache backend error during {operation}: {detail}")


class CacheSerializationError(CacheError, TypeError):
    """A value cannot be encoded for the cache; nothing was written."""

    def __init__(self, key: str, value: object, detail: str) -> None:
        self.key = key
        self.value_type = type(value).__name__
        super().__init__(
            f"cannot cache a value of type {self.value_type!r} under key {key!r}: {detail}"
        )


class CacheLockTimeout(CacheError, TimeoutError):
    """Waited longer than ``max_wait`` for another caller to create a value."""

    def __init__(self, key: str, waited: float) -> None:
        self.key = key
        self.waited = waited
        super().__init__(
            f"gave up after {waited:.2f}s waiting for another caller to create {key!r}"
        )
