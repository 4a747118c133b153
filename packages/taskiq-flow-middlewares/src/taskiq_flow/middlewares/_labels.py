"""The per-call labels: how they are read, validated and brought into a message.

Labels reach a message three ways: at declaration (``@broker.task(cache_ttl=60)``), with
``task.kicker().with_labels(...)``, and in the guide's form ``task.kiq(x, labels={...})``,
which taskiq itself would pass to the function as a keyword argument named ``labels``.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable
from typing import Any

from taskiq import TaskiqMessage
from taskiq.labels import prepare_label

from taskiq_flow.cache.base import check_cache_tags

logger = logging.getLogger("taskiq_flow.middlewares")

LABEL_CACHE = "cache"
LABEL_CACHE_TTL = "cache_ttl"
LABEL_CACHE_ERRORS = "cache_errors"
LABEL_CACHE_KEY = "cache_key"
LABEL_CACHE_HIT = "cache_hit"
LABEL_CACHE_AT_SEND = "cache_at_send"
LABEL_CACHE_LEASE = "cache_lease"
LABEL_CACHE_REFRESH = "cache_refresh"
LABEL_CACHE_ERRORS_TTL = "cache_errors_ttl"
LABEL_CACHE_VERSION = "cache_version"
LABEL_CACHE_TAGS = "cache_tags"
LABEL_CACHE_ANSWERED = "cache_answered"
LABEL_PIPELINE_ID = "pipeline_id"

OUR_LABELS = frozenset(
    {
        LABEL_CACHE,
        LABEL_CACHE_TTL,
        LABEL_CACHE_ERRORS,
        LABEL_CACHE_KEY,
        LABEL_CACHE_LEASE,
        LABEL_CACHE_REFRESH,
        LABEL_CACHE_VERSION,
        LABEL_CACHE_ERRORS_TTL,
        LABEL_CACHE_TAGS,
    }
)
"""The labels CacheMiddleware reads: a message with none of them takes the defaults.

``cache_lease`` is set by the producer that claimed the call's lease at send (see
:mod:`taskiq_flow.middlewares._at_send`); ``cache_at_send`` is read by the producer only;
``cache_answered="send"`` marks a result answered at send (with ``cache_hit``)."""

ENV_CACHE_REFRESH = "TASKIQ_FLOW_CACHE_REFRESH"
"""Set to ``true`` in a process: every call it runs or sends refreshes its entry."""

MAX_TTL = 10 * 365 * 24 * 3600
"""Ten years: anything longer is a typo, and Redis rejects PX values past 2**63 ms."""

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def parse_bool(message: TaskiqMessage, label: str, default: bool) -> bool:
    """Read a boolean label; a malformed value logs a warning and gives ``default``."""
    raw = message.labels.get(label)
    if raw is None:
        return default
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    logger.warning(
        "Task %s (%s): label %s=%r is not 'true' or 'false'; using %s.",
        message.task_name,
        message.task_id,
        label,
        raw,
        default,
    )
    return default


def refresh_from_env() -> bool:
    """Whether ``TASKIQ_FLOW_CACHE_REFRESH`` asks this process to refresh every call.

    Raises:
        ValueError: a value that is not a boolean word (``true``/``false``, ``1``/``0``...);
            its message is the value's ``repr``.
    """
    raw = os.environ.get(ENV_CACHE_REFRESH, "").strip().lower()
    if not raw or raw in _FALSE:
        return False
    if raw in _TRUE:
        return True
    raise ValueError(repr(raw))


def parse_ttl(message: TaskiqMessage, default: int) -> int:
    """Read ``cache_ttl`` (seconds, ``0`` = do not cache); malformed -> warning, ``default``."""
    raw = message.labels.get(LABEL_CACHE_TTL)
    if raw is None:
        return default
    try:
        if isinstance(raw, bool):
            raise ValueError
        if isinstance(raw, float):
            if not raw.is_integer():
                raise ValueError
            ttl = int(raw)
        else:
            ttl = int(str(raw).strip())
    except (TypeError, ValueError):
        ttl = -1
    if ttl < 0 or ttl > MAX_TTL:
        logger.warning(
            "Task %s (%s): label %s=%r is not a whole number of seconds in 0..%d; using %s.",
            message.task_name,
            message.task_id,
            LABEL_CACHE_TTL,
            raw,
            MAX_TTL,
            default,
        )
        return default
    return ttl


def parse_tags(raw: object) -> tuple[str, ...]:
    """The tags of a ``cache_tags`` label: ``"a,b"`` (or a list of str), each stripped.

    Raises:
        CacheValueError: an empty tag (``""``, ``"a,,b"``), more than ``MAX_TAGS`` tags,
            a tag longer than ``MAX_TAG_LENGTH`` or not encodable as UTF-8.
    """
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, list | tuple):
        items = [raw]
    # check_cache_tags stops at the first tag past the bound: 10,000 cost no more.
    return check_cache_tags(str(item).strip() for item in items)


def _has_labels_parameter(func: Callable[..., Any] | None) -> bool:
    if func is None:
        return True  # unknown signature: never take an argument away from a task
    try:
        parameters = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return True
    return "labels" in parameters


def lift_labels_kwarg(
    message: TaskiqMessage,
    func: Callable[..., Any] | None,
    *,
    wire_format: bool,
) -> None:
    """Move a ``labels={...}`` keyword argument into the message's labels.

    Only when the task has no parameter named ``labels`` (then the argument is the
    task's own and is left alone). These labels override the task's declared ones:
    they were given for this one call (the guide's "override ... for this single
    execution").

    Args:
        message: the message, changed in place.
        func: the task function, for its signature (``None`` if unknown here).
        wire_format: ``True`` before sending (values become taskiq's string labels with
            their types), ``False`` in the worker after labels were parsed.
    """
    extra = message.kwargs.get("labels")
    if not isinstance(extra, dict) or _has_labels_parameter(func):
        return
    del message.kwargs["labels"]
    for name, value in extra.items():
        if not isinstance(name, str):
            continue
        if wire_format:
            text, label_type = prepare_label(value)
            message.labels[name] = text
            if message.labels_types is None:
                message.labels_types = {}
            message.labels_types[name] = label_type
        else:
            message.labels[name] = value
