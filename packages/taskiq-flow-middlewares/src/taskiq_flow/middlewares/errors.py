"""Errors raised by taskiq-flow's middlewares.

They inherit taskiq's own root, so ``except TaskiqError`` keeps catching everything a
broker raises.
"""

from __future__ import annotations

from taskiq.exceptions import TaskiqError

__all__ = ["CachedTaskError", "MiddlewareError"]


class MiddlewareError(TaskiqError):
    """Root of every error raised by ``taskiq_flow.middlewares``."""

    __template__ = "taskiq-flow middleware error"


class CachedTaskError(MiddlewareError):
    """A cached task error whose original exception class cannot be rebuilt here.

    Raised instead of the original when the class is not importable in this process
    (the cache only ever re-raises classes of modules already imported; it never
    imports a module named by stored data).
    """

    __template__ = "cached task error {error_type}: {error_message}"
    error_type: str
    error_message: str
