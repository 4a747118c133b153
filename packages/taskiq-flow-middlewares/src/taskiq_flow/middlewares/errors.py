"""Errors raised by taskiq-flow's middlewares.

They inherit taskiq's own root, so ``except TaskiqError`` keeps catching everything a
broker raises. Leaves also inherit the builtin meaning where one exists, so callers may
catch either ``MiddlewareConfigError`` or plain ``ValueError``. Messages are built from
the declared fields (taskiq's templated-exception style).
"""

from __future__ import annotations

from taskiq.exceptions import TaskiqError

__all__ = [
    "CachedTaskError",
    "MiddlewareConfigError",
    "MiddlewareConfigTypeError",
    "MiddlewareError",
]


class MiddlewareError(TaskiqError):
    """Root of every error raised by ``taskiq_flow.middlewares``."""

    __template__ = "taskiq-flow middleware error"


class MiddlewareConfigError(MiddlewareError, ValueError):
    """An argument with a value that cannot work (a negative TTL, a zero buffer size).

    Raised by the middlewares' constructors (and ``DataflowRun.wait_result``'s
    ``poll_interval``) before anything happens. ``except ValueError`` catches it too.

    Args:
        name: the argument's name.
        expected: what it must be, in words (``"a whole number of seconds >= 0"``).
        got: what was given, as shown to the user (a ``repr`` or a type name).
    """

    __template__ = "{name} must be {expected}, got {got}"
    name: str
    expected: str
    got: str


class MiddlewareConfigTypeError(MiddlewareConfigError, TypeError):
    """An argument of the wrong type (a URL string where an adapter is expected).

    A kind of :class:`MiddlewareConfigError`, so ``except MiddlewareConfigError`` catches
    every bad argument; it is therefore both a ``TypeError`` (what these checks raised
    before) and a ``ValueError``, like the storage package's ``InvalidKeyError``.
    """


class CachedTaskError(MiddlewareError):
    """A cached task error whose original exception class cannot be rebuilt here.

    Raised instead of the original when the class is not importable in this process
    (the cache only ever re-raises classes of modules already imported; it never
    imports a module named by stored data).
    """

    __template__ = "cached task error {error_type}: {error_message}"
    error_type: str
    error_message: str
