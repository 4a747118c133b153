"""The cache key of one call: built in one place for the worker, the producer and users.

:func:`call_key` is what ``CacheMiddleware`` uses for every message, in the worker's
``pre_execute`` and in the producer's look before sending (``pre_send``, on the wire
form of the message). :func:`cache_key_for` builds the message ``task.kiq(*args,
**kwargs)`` would send, as a producer sees it before sending, and asks the same
:func:`call_key`: the key it returns is the one a cached run of that call is stored under.
"""

from __future__ import annotations

from hashlib import blake2b
from typing import Any

from taskiq import TaskiqMessage

from taskiq_flow.cache import CacheKeyError
from taskiq_flow.cache.base import check_cache_key
from taskiq_flow.middlewares import _codec, _labels
from taskiq_flow.middlewares._versions import call_version, source_version
from taskiq_flow.middlewares._wire import probe_message
from taskiq_flow.middlewares._wrapping import original

__all__ = ["cache_key_for", "call_key"]


def call_key(message: TaskiqMessage, binder: _codec.Binder, source: str | None = None) -> str:
    """The cache key of ``message`` (labels as the worker parses them).

    ``{task_name}:key:{cache_key}`` with a non-empty ``cache_key`` label, else
    ``{task_name}:{digest}`` (see :func:`taskiq_flow.middlewares._codec.cache_key_digest`).
    With a version (the ``cache_version`` label and/or ``source``, the task's
    ``key_version="source"`` digest): the digest is keyed with the version's digest,
    and an explicit key gets ``@{version digest}`` appended. Without one, keys are those
    of every earlier release.

    Raises:
        CacheKeyError: the ``cache_key`` label is not a usable key (a lone surrogate), or
            ``cache_version`` is longer than ``MAX_VERSION_LENGTH``.
        taskiq_flow.middlewares._codec.Unencodable: an argument msgspec cannot encode.
    """
    labels = message.labels
    explicit = labels.get(_labels.LABEL_CACHE_KEY) if labels else None
    version = b""
    if source or (labels and _labels.LABEL_CACHE_VERSION in labels):
        version = _version_key(labels.get(_labels.LABEL_CACHE_VERSION), source)
    if explicit is not None and (explicit := str(explicit)):
        # Backends store keys as UTF-8, which a lone surrogate cannot be. Only explicit
        # keys need the check (digests are hex).
        if not explicit.isascii():
            check_cache_key(explicit)
        if version:
            return f"{message.task_name}:key:{explicit}@{version[:8].hex()}"
        return f"{message.task_name}:key:{explicit}"
    return f"{message.task_name}:{binder.digest(message.args, message.kwargs, version)}"


def _version_key(label: object, source: str | None) -> bytes:
    try:
        version = call_version(label, source)
    except ValueError as exc:
        raise CacheKeyError(f"cache_version={str(label)[:40]!r}...", str(exc)) from exc
    if not version:
        return b""
    return blake2b(
        version.encode("utf-8", "surrogatepass"), digest_size=32, person=b"taskiq-flow-ver1"
    ).digest()


def cache_key_for(task: Any, *args: Any, **kwargs: Any) -> str:
    """The cache key ``CacheMiddleware`` uses for ``task.kiq(*args, **kwargs)``.

    The task's declared labels count (``cache_key``, ``cache_version``), and so does a
    ``labels={...}`` keyword argument, as with ``kiq``; so does ``key_version="source"``
    of the ``CacheMiddleware`` on the task's broker. The key is returned even when that call would
    bypass the cache (``cache="false"``, ``cache_ttl=0``): it is where its result
    would be cached.

    Args:
        task: a task declared with ``@broker.task`` (an ``AsyncTaskiqDecoratedTask``).
        *args: the call's positional arguments, as given to ``kiq``.
        **kwargs: the call's keyword arguments, as given to ``kiq``.

    Raises:
        TypeError: ``task`` is not a taskiq task.
        CacheKeyError: the call has no cache key (an argument msgspec cannot encode, or
            a ``cache_key`` label that is not a usable key).
    """
    kicker = getattr(task, "kicker", None)
    broker = getattr(task, "broker", None)
    if kicker is None or broker is None or not hasattr(task, "original_func"):
        msg = f"cache_key_for expects a taskiq task, got {type(task).__qualname__}"
        raise TypeError(msg)
    func = original(task.original_func)
    # kiq builds its message with this very method: same labels, same argument forms.
    message = kicker()._prepare_message(*args, **kwargs)
    if "labels" in message.kwargs:
        _labels.lift_labels_kwarg(message, func, wire_format=True)
    source = None
    for middleware in getattr(broker, "middlewares", ()):
        # The broker's CacheMiddleware decides whether the task's code is in its keys.
        if getattr(middleware, "key_version", None) == "source":
            source = source_version(func)
            break
    try:
        probe = probe_message(message, broker.formatter)
    except ValueError as exc:  # the broker's formatter cannot send them (pydantic's error)
        raise CacheKeyError(
            f"{message.task_name}(...)", f"its arguments cannot be sent ({exc})"
        ) from exc
    try:
        return call_key(probe, _codec.binder(func), source)
    except _codec.Unencodable as exc:
        raise CacheKeyError(
            f"{message.task_name}(...)", f"its arguments cannot be encoded ({exc})"
        ) from exc
