"""A picture of one run: each node's state and times, read from the run's keys.

Node states: ``pending`` (inputs missing, or not claimed yet), ``claimed`` (a process
won its claim, the message is not sent yet), ``sent``, ``running`` (a worker started
it), ``done``, ``failed``, ``cancelled`` (the run was cancelled before it ran).
``stalled`` marks a claimed / sent / running node with no sign of life for longer
than the run's lease: the next ``watch`` (a worker's sweeper, a waiting
``wait_result``) or a ``resume`` sends it again.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from taskiq_flow.middlewares.pipeline.graph import RunSpec, SpecNode
from taskiq_flow.middlewares.pipeline.lease import MAX_ATTEMPTS_TOTAL, last_sign_of_life
from taskiq_flow.middlewares.pipeline.state import RunKeys, read_run_state
from taskiq_flow.storage import BaseStorageAdapter

__all__ = ["NodeStatus", "RunStatus", "read_status"]


class NodeStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One node of a run: where it is, since when, and how often it was sent."""

    name: str
    task_id: str
    output: str
    inputs: tuple[str, ...]
    state: str
    attempts: int = 0
    stalled: bool = False
    claimed_at: float | None = None
    sent_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    # ``map_over`` nodes: how many elements, how many finished (else ``None``).
    elements: int | None = None
    elements_done: int | None = None
    error: str | None = None


class RunStatus(msgspec.Struct, frozen=True, kw_only=True):
    """A run: its state (``running``, ``done``, ``failed``, ``cancelled``) and its nodes."""

    pipeline_id: str
    state: str
    created_at: float
    finished_at: float | None
    stalled: bool
    nodes: tuple[NodeStatus, ...]
    failure: dict[str, Any] | None = None

    def node(self, name: str) -> NodeStatus:
        """The status of the node called ``name`` (``KeyError`` if none)."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """Builtins only (for JSON)."""
        result: dict[str, Any] = msgspec.to_builtins(self)
        return result


def _stamp(record: Any, name: str) -> float | None:
    value = record.get(name) if isinstance(record, dict) else None
    return float(value) if isinstance(value, int | float) else None


def _step_state(step: Any) -> str | None:
    if not isinstance(step, dict):
        return None
    if step.get("finished_at") is not None:
        return None if step.get("ok", True) else "failed"
    return "running"


async def read_status(storage: BaseStorageAdapter, pipeline_id: str) -> RunStatus | None:
    """The status of run ``pipeline_id``; ``None`` if no such run is stored."""
    keys = RunKeys(pipeline_id)
    spec = await storage.get(keys.spec, type=RunSpec)
    if spec is None:
        return None
    wanted = [keys.data(name) for name in spec.data_names] + keys.state_keys()
    for node in spec.nodes:
        wanted += [keys.claim(node.name), keys.sent(node.name), keys.step(node.name)]
    values = await storage.get_many(wanted)
    extra: list[str] = []
    for node in spec.nodes:
        if keys.claim(node.name) in values and keys.data(node.output) not in values:
            extra += [keys.claim(node.name, a) for a in range(2, MAX_ATTEMPTS_TOTAL + 1)]
        items = values.get(keys.data(node.map_over)) if node.map_over else None
        if isinstance(items, list):
            extra += [keys.item(node.name, i) for i in range(len(items))]
            extra += [keys.step(node.name, i) for i in range(len(items))]
    values.update(await storage.get_many(extra))
    state = read_run_state(keys, values)
    failure = values.get(keys.failed)
    now = time.time()
    nodes = tuple(
        _node_status(spec, node, values, run_state=state, failure=failure, now=now)
        for node in spec.nodes
    )
    done = values.get(keys.done)
    finished_at = _stamp(done, "finished_at") or _stamp(failure, "failed_at")
    if state == "cancelled":
        finished_at = _stamp(values.get(keys.cancelled), "at")
    return RunStatus(
        pipeline_id=pipeline_id,
        state=state,
        created_at=spec.created_at,
        finished_at=None if state == "running" else finished_at,
        stalled=state == "running" and any(node.stalled for node in nodes),
        nodes=nodes,
        failure=failure if isinstance(failure, dict) else None,
    )


def _node_status(
    spec: RunSpec,
    node: SpecNode,
    values: dict[str, Any],
    *,
    run_state: str,
    failure: Any,
    now: float,
) -> NodeStatus:
    keys = RunKeys(spec.pipeline_id)
    claim = values.get(keys.claim(node.name))
    sent = values.get(keys.sent(node.name))
    steps = [values.get(keys.step(node.name))]
    # Claims beyond the first are read only for unfinished nodes; markers carry the rest.
    attempts = max(
        sum(1 for a in range(1, MAX_ATTEMPTS_TOTAL + 1) if keys.claim(node.name, a) in values),
        *(int(_stamp(record, "attempt") or 0) for record in (sent, *steps)),
    )
    elements = elements_done = None
    items = values.get(keys.data(node.map_over)) if node.map_over else None
    if isinstance(items, list):
        elements = len(items)
        elements_done = sum(1 for i in range(elements) if keys.item(node.name, i) in values)
        steps = [values.get(keys.step(node.name, i)) for i in range(elements)]
    started = [s for s in (_stamp(step, "started_at") for step in steps) if s is not None]
    finished = [s for s in (_stamp(step, "finished_at") for step in steps) if s is not None]
    step_states = {_step_state(step) for step in steps}
    error = None
    if keys.data(node.output) in values:
        state = "done"
    elif isinstance(failure, dict) and failure.get("node") == node.name:
        state = "failed"
        error = f"{failure.get('error_type')}: {failure.get('error_message')}"
    elif "running" in step_states:
        state = "running"
    elif "failed" in step_states:
        state = "failed"
    elif run_state == "cancelled":
        state = "cancelled"
    elif sent is not None:
        state = "sent"
    elif claim is not None:
        state = "claimed"
    else:
        state = "pending"
    newest = max(last_sign_of_life(claim, sent, step) for step in steps)
    return NodeStatus(
        name=node.name,
        task_id=node.task_id,
        output=node.output,
        inputs=node.inputs,
        state=state,
        attempts=attempts,
        stalled=state in {"claimed", "sent", "running"} and now - newest >= spec.lease_seconds,
        claimed_at=_stamp(claim, "at"),
        sent_at=_stamp(sent, "at"),
        started_at=min(started, default=None),
        finished_at=max(finished, default=None) if state in {"done", "failed"} else None,
        elements=elements,
        elements_done=elements_done,
        error=error,
    )
