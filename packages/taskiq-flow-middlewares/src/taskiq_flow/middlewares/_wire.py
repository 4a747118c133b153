"""What a worker's ``pre_execute`` will see of a message a producer is about to send.

The cache key must be the worker's: built from the arguments as the worker decodes them
from the wire, and the labels as it parses them (``TaskiqMessage.parse_labels``).
"""

from __future__ import annotations

import math
from typing import Any

from taskiq import TaskiqMessage
from taskiq.abc.formatter import TaskiqFormatter
from taskiq.labels import LabelType, parse_label

from taskiq_flow.middlewares import _labels

__all__ = ["parsed_labels", "probe_message"]

# Values that come back from the wire as they went (JSON): their digest is the worker's
# (finite floats too; pydantic writes inf and nan as null).
_WIRE_STABLE = frozenset({int, str, bool, type(None)})
_WIRE_CHECK_LIMIT = 64


def _wire_stable(values: Any, budget: list[int]) -> bool:
    for value in values:
        budget[0] -= 1
        if budget[0] < 0:
            return False
        kind = type(value)
        if kind in _WIRE_STABLE or (kind is float and math.isfinite(value)):
            continue
        if kind is list:
            if not _wire_stable(value, budget):
                return False
        elif kind is dict:
            if any(type(k) is not str for k in value) or not _wire_stable(value.values(), budget):
                return False
        else:
            return False
    return True


def parsed_labels(message: TaskiqMessage) -> TaskiqMessage:
    """``message`` with its labels as the worker parses them (a copy if they differ)."""
    types = message.labels_types
    if not types or all(t == LabelType.STR for t in types.values()):
        return message
    labels = dict(message.labels)
    for name, kind in types.items():
        if name in labels:
            labels[name] = parse_label(labels[name], kind)
    return TaskiqMessage.model_construct(
        task_id=message.task_id,
        task_name=message.task_name,
        labels=labels,
        labels_types=None,
        args=message.args,
        kwargs=message.kwargs,
    )


def probe_message(message: TaskiqMessage, formatter: TaskiqFormatter) -> TaskiqMessage:
    """What ``pre_execute`` will see of ``message``: wire arguments, parsed labels."""
    probe = message
    labels = message.labels
    if labels and not _labels.OUR_LABELS.isdisjoint(labels):
        probe = parsed_labels(message)
    budget = [_WIRE_CHECK_LIMIT]
    if _wire_stable(message.args, budget) and _wire_stable(message.kwargs.values(), budget):
        return probe
    # Dates, tuples keyed dicts, models...: the arguments as the worker decodes them.
    wire = formatter.loads(formatter.dumps(message).message)
    return TaskiqMessage.model_construct(
        task_id=message.task_id,
        task_name=message.task_name,
        labels=probe.labels,
        labels_types=None,
        args=wire.args,
        kwargs=wire.kwargs,
    )
