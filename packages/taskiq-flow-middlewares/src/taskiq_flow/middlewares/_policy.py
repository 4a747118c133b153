"""What CacheMiddleware keeps: ``cache_if`` for values, ``errors_ttl`` for cached errors.

- ``cache_if(value) -> bool`` (``CacheMiddleware(cache_if=...)``) is asked about every
  value a run produces; ``False`` returns it to its callers without caching it, so the
  next call runs again (say ``lambda v: v is not None``). If it raises, the value is not
  cached either (logged). Errors are governed by ``cache_errors``, not by it.
- ``errors_ttl`` (``CacheMiddleware(errors_ttl=...)``, label ``cache_errors_ttl``): how
  long a cached error stays, in seconds, instead of the call's ``cache_ttl``. It rides
  on the cache's :class:`~taskiq_flow.cache.Expiring`, so the TTL is set by the same
  write that stores the error (no second write an invalidation could race).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from taskiq import TaskiqMessage

from taskiq_flow.cache import Expiring
from taskiq_flow.middlewares import _codec, _labels
from taskiq_flow.middlewares.errors import MiddlewareConfigError, MiddlewareConfigTypeError

__all__ = ["check_options", "error_entry", "keeps"]

logger = logging.getLogger("taskiq_flow.middlewares")


def _valid_ttl(ttl: object) -> bool:
    return type(ttl) is int and 0 < ttl <= _labels.MAX_TTL


def check_options(
    cache_if: Callable[[Any], bool] | None, errors_ttl: int | None
) -> tuple[Callable[[Any], bool] | None, int | None]:
    """Return the options if usable.

    Raises:
        MiddlewareConfigTypeError: ``cache_if`` is not callable.
        MiddlewareConfigError: ``errors_ttl`` is not ``None`` or whole seconds in range.
    """
    if cache_if is not None and not callable(cache_if):
        raise MiddlewareConfigTypeError(
            name="cache_if", expected="a callable (value -> bool)", got=type(cache_if).__qualname__
        )
    if errors_ttl is not None and not _valid_ttl(errors_ttl):
        raise MiddlewareConfigError(
            name="errors_ttl",
            expected=f"None or a whole number of seconds in 1..{_labels.MAX_TTL}",
            got=repr(errors_ttl),
        )
    return cache_if, errors_ttl


def keeps(cache_if: Callable[[Any], bool], value: Any, key: str) -> bool:
    """Whether ``cache_if`` lets ``value`` be cached (``False`` if it raises)."""
    try:
        return bool(cache_if(value))
    except Exception:
        logger.warning(
            "cache_if raised on the result for %s; it is not cached.", key, exc_info=True
        )
        return False


def errors_ttl_of(message: TaskiqMessage, default: int | None) -> int | None:
    """The ``cache_errors_ttl`` label (seconds > 0), or ``default``; malformed -> warning."""
    raw = message.labels.get(_labels.LABEL_CACHE_ERRORS_TTL)
    if raw is None:
        return default
    try:
        ttl = int(str(raw).strip()) if not isinstance(raw, bool) else -1
    except ValueError:
        ttl = -1
    if not _valid_ttl(ttl):
        logger.warning(
            "Task %s (%s): label %s=%r is not a whole number of seconds in 1..%d; using %s.",
            message.task_name,
            message.task_id,
            _labels.LABEL_CACHE_ERRORS_TTL,
            raw,
            _labels.MAX_TTL,
            default,
        )
        return default
    return ttl


def error_entry(message: TaskiqMessage, exc: BaseException, default: int | None) -> Any:
    """The cache payload of a run's error, with its own TTL when one is set."""
    payload = _codec.encode_error_payload(exc)
    ttl = errors_ttl_of(message, default)
    return payload if ttl is None else Expiring(payload, ttl)
