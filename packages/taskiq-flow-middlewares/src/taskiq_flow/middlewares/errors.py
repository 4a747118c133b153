"""Errors raised by taskiq-flow's middlewares.

They inherit taskiq's own root, so ``except TaskiqError`` keeps catching everything a
broker raises. Leaves also inherit the builtin meaning where one exists, so callers may
catch either ``MiddlewareConfigError`` or plain ``ValueError``. Messages are built from
the declared fields (taskiq's templated-exception style).
"""

from __future__ import annotations

from taskiq.exceptions import ResultGetError, TaskiqError

__all__ = [
    "CachedTaskError",
    "MiddlewareConfigError",
    "MiddlewareConfigTypeError",
    "MiddlewareError",
    "ResultCorruptError",
    "ResultMissingError",
    "ResultNotSerializableError",
    "StoredTaskError",
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


class StoredTaskError(MiddlewareError):
    """A stored task error whose original exception class cannot be rebuilt here.

    Raised instead of the original when the class is not importable in this process:
    a stored error only ever re-raises classes of modules already imported (stored data
    never chooses what gets imported), and no pickle is used to carry it.

    Args:
        error_type: ``module.QualName`` of the original exception class.
        error_message: its message.
    """

    __template__ = "task error {error_type}: {error_message}"
    error_type: str
    error_message: str


class CachedTaskError(StoredTaskError):
    """A :class:`StoredTaskError` answered from the cache (``cache_errors``)."""

    __template__ = "cached task error {error_type}: {error_message}"


class ResultMissingError(MiddlewareError, ResultGetError):
    """``StorageResultBackend.get_result`` found no result for the task id (or it expired)."""

    __template__ = "no result stored for task {task_id}"
    task_id: str


class ResultCorruptError(MiddlewareError, ResultGetError):
    """The bytes stored as a task's result are not a result this package wrote."""

    __template__ = "the stored result of task {task_id} is corrupt: {reason}"
    task_id: str
    reason: str


class ResultNotSerializableError(MiddlewareError):
    """A task returned a value msgspec cannot encode: its result says so instead.

    The worker stays up and the caller's ``wait_result()`` returns an error result
    carrying this exception (the value itself cannot cross processes without pickle).
    """

    __template__ = "the task returned a {value_type}, which cannot be stored: {reason}"
    value_type: str
    reason: str
