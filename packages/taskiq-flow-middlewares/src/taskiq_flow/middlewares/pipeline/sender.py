"""Turning a claimed step into taskiq messages, and the labels that identify them.

Every step message carries the labels ``pipeline_id``, ``pipeline_node`` and
``pipeline_attempt`` (and ``pipeline_element`` for one element of a ``map_over`` node),
under the task id fixed at ``kiq``: a re-sent step keeps its id, so its record and its
result land where the first attempt's would have.
"""

from __future__ import annotations

from typing import Any

from taskiq import AsyncBroker, TaskiqMessage
from taskiq.kicker import AsyncKicker

from taskiq_flow.middlewares._labels import LABEL_PIPELINE_ID
from taskiq_flow.middlewares.pipeline.state import ClaimedStep

__all__ = [
    "LABEL_PIPELINE_ATTEMPT",
    "LABEL_PIPELINE_ELEMENT",
    "LABEL_PIPELINE_ID",
    "LABEL_PIPELINE_NODE",
    "StepLabels",
    "send_step",
]

LABEL_PIPELINE_NODE = "pipeline_node"
LABEL_PIPELINE_ATTEMPT = "pipeline_attempt"
LABEL_PIPELINE_ELEMENT = "pipeline_element"


def _int_label(value: Any, default: int | None) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return default


class StepLabels:
    """The pipeline labels of a received message (``None`` if it is no pipeline step)."""

    __slots__ = ("attempt", "element", "node", "pipeline_id")

    def __init__(self, pipeline_id: str, node: str, attempt: int, element: int | None) -> None:
        self.pipeline_id = pipeline_id
        self.node = node
        self.attempt = attempt
        self.element = element

    @classmethod
    def of(cls, message: TaskiqMessage) -> StepLabels | None:
        """Read the labels of ``message``."""
        pipeline_id = message.labels.get(LABEL_PIPELINE_ID)
        node = message.labels.get(LABEL_PIPELINE_NODE)
        if not pipeline_id or not node:
            return None
        element = message.labels.get(LABEL_PIPELINE_ELEMENT)
        return cls(
            str(pipeline_id),
            str(node),
            _int_label(message.labels.get(LABEL_PIPELINE_ATTEMPT, 1), 1) or 1,
            None if element is None else _int_label(element, None),
        )


def _kicker(broker: AsyncBroker, step: ClaimedStep) -> AsyncKicker[Any, Any]:
    node = step.node
    task = broker.find_task(node.task_name)
    kicker: AsyncKicker[Any, Any] = (
        task.kicker().with_broker(broker)
        if task is not None
        else AsyncKicker(task_name=node.task_name, broker=broker, labels={})
    )
    labels: dict[str, str | int] = {
        LABEL_PIPELINE_ID: step.spec.pipeline_id,
        LABEL_PIPELINE_NODE: node.name,
        LABEL_PIPELINE_ATTEMPT: step.attempt,
    }
    kicker.with_labels(**labels)
    if node.retries and "retry_on_error" not in kicker.labels:
        # taskiq's retry middlewares count the first attempt in max_retries.
        kicker.with_labels(retry_on_error=True, max_retries=node.retries + 1)
    return kicker


async def send_step(broker: AsyncBroker, step: ClaimedStep, items: list[Any] | None) -> int:
    """Send ``step``: one message, or one per element of ``items`` (a ``map_over`` node).

    Returns:
        How many messages were sent.
    """
    node = step.node
    if items is None:
        await _kicker(broker, step).with_task_id(node.task_id).kiq(**step.kwargs)
        return 1
    assert node.map_over is not None  # noqa: S101 - items are given for map nodes only
    indices = range(len(items)) if step.elements is None else step.elements
    for index in indices:
        kicker = _kicker(broker, step).with_task_id(node.element_task_id(index))
        kicker.with_labels(**{LABEL_PIPELINE_ELEMENT: index})
        await kicker.kiq(**{**step.kwargs, node.map_over: items[index]})
    return len(indices)
