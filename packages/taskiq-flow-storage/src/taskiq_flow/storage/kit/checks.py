"""Argument checks shared by every taskiq-flow package: keys, patterns, TTLs, durations.

Each check raises through an *error factory* ``(offending value, reason) -> Exception``,
so the storage package raises its own errors (``InvalidKeyError``, ``InvalidTTLError``,
``StorageConfigError``) and the cache package its own (``CacheKeyError``,
``CacheValueError``) from one set of rules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from taskiq_flow.storage.errors import (
    InvalidKeyError,
    InvalidTTLError,
    StorageConfigError,
    StorageCorruptError,
)

__all__ = [
    "ErrorFactory",
    "check_count",
    "check_key",
    "check_keys",
    "check_pattern",
    "check_seconds",
    "check_timestamp",
    "check_ttl",
]

ErrorFactory = Callable[[object, str], Exception]
"""Builds the exception to raise from the offending value and a sentence saying why."""


def _config_error(value: object, reason: str) -> Exception:
    return StorageConfigError(reason)


def check_key(key: object, error: ErrorFactory = InvalidKeyError) -> str:
    """Return ``key`` if it is a usable key: a non-empty ``str`` encodable as UTF-8.

    Raises:
        error: (``InvalidKeyError`` by default) not a ``str``, empty, or a lone surrogate.
    """
    if type(key) is str and key and key.isascii():
        return key  # the usual key; everything below is the slow path
    if not isinstance(key, str):
        raise error(key, f"keys are str, not {type(key).__name__}")
    if not key:
        raise error(key, "keys must not be empty")
    if not key.isascii():
        try:
            key.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise error(key, "not encodable as UTF-8") from exc
    return key


def check_keys(keys: Iterable[str], error: ErrorFactory = InvalidKeyError) -> list[str]:
    """Return ``keys`` as a list of checked keys (a bare ``str`` is refused, not iterated).

    Raises:
        error: ``keys`` is a ``str``/``bytes``, or one key is bad.
    """
    if isinstance(keys, str | bytes):
        raise error(keys, "expected an iterable of keys, not a single key")
    return [check_key(key, error) for key in keys]


def check_pattern(pattern: object, error: ErrorFactory = InvalidKeyError) -> str:
    """Return ``pattern`` if it is a usable glob pattern (the rules of keys; may be empty).

    Raises:
        error: not a ``str`` or not encodable as UTF-8.
    """
    if not isinstance(pattern, str):
        raise error(pattern, f"patterns are str, not {type(pattern).__name__}")
    if not pattern.isascii():
        try:
            pattern.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise error(pattern, "pattern not encodable as UTF-8") from exc
    return pattern


def check_ttl(
    ttl: object, name: str = "ttl_seconds", error: ErrorFactory = InvalidTTLError
) -> int | None:
    """Return ``ttl`` if it is ``None`` or an ``int`` > 0 (``bool`` is refused).

    Raises:
        error: (``InvalidTTLError`` by default) ``0``, negative, ``float``, ``str``, ``bool``.
    """
    if ttl is None or (type(ttl) is int and ttl > 0):
        return ttl
    if isinstance(ttl, int) and not isinstance(ttl, bool) and ttl > 0:
        return int(ttl)  # an int subclass (IntEnum...): stored as a plain int
    kind = type(ttl).__name__
    raise error(ttl, f"{name} must be a positive int (seconds) or None, got {ttl!r} of type {kind}")


def check_seconds(value: object, name: str, error: ErrorFactory = _config_error) -> float:
    """Return ``value`` as a float if it is a positive, finite number of seconds.

    Raises:
        error: (``StorageConfigError`` by default) anything else, ``bool`` included.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 < value < float("inf")  # NaN fails this too
    ):
        raise error(value, f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def check_count(value: object, name: str, error: ErrorFactory = _config_error) -> int:
    """Return ``value`` if it is a positive ``int`` (a size, a bound; ``bool`` is refused).

    Raises:
        error: (``StorageConfigError`` by default) anything else.
    """
    if type(value) is not int or value <= 0:
        raise error(value, f"{name} must be a positive int, got {value!r}")
    return value


_LAST_TIMESTAMP = 253402300799.0  # 9999-12-31T23:59:59Z, the last one datetime can hold


def check_timestamp(key: str, name: str, value: object) -> float:
    """``value`` as epoch seconds, or :class:`StorageCorruptError` naming ``key``.

    Stored times come back from a file or a server someone else may have written to.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 <= value <= _LAST_TIMESTAMP  # NaN fails this too
    ):
        raise StorageCorruptError(key, f"{name} is {value!r}, not a timestamp")
    return float(value)
