"""Leases: finding the steps of a run that were claimed but will never finish.

A claim is written before its message is sent, so a process can die between the two;
a message can also be lost with the worker that took it (a list broker acknowledges on
receipt). Each step therefore leaves signs of life, all with the run's TTL:

- ``claim:{node}[:{attempt}]`` (``at``): written by ``add`` when it is claimed;
- ``sent:{node}`` (``at``, ``attempt``): written right after its message was sent;
- ``step:{node}[:{i}]`` (``started_at``, ``beat_at``, ``finished_at``): written by the
  worker when the step starts, refreshed every third of the lease while it runs,
  closed when it finishes.

A ready node without its output whose newest sign of life is older than the run's
``lease_seconds`` has *lapsed*: it is claimed again as attempt ``n + 1`` (``add`` on
``claim:{node}:{n+1}``, so of several watchers exactly one re-sends it) under the
same task id. A node that lapsed ``max_attempts`` times fails the run instead. A
re-sent step may duplicate one that was only slow: outputs are written with ``add``,
so the first result wins and a duplicate changes nothing downstream.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from taskiq_flow.middlewares.pipeline.graph import RunSpec, SpecNode
from taskiq_flow.middlewares.pipeline.state import ClaimedStep, RunKeys
from taskiq_flow.storage import BaseStorageAdapter

__all__ = ["MAX_ATTEMPTS_TOTAL", "Redrive", "find_lapsed", "last_sign_of_life"]

# Claims per node a run may ever take, re-drives and resumes together.
MAX_ATTEMPTS_TOTAL = 64


@dataclass
class Redrive:
    """What one look for lapsed steps found."""

    steps: list[ClaimedStep] = field(default_factory=list)
    # Nodes that lapsed too often: (node, attempts taken); the run must fail.
    lost: list[tuple[SpecNode, int]] = field(default_factory=list)
    # ``map_over`` nodes whose every element finished but whose output is missing.
    assembled: list[tuple[SpecNode, list[Any]]] = field(default_factory=list)


def _at(record: Any, *names: str) -> float:
    if not isinstance(record, dict):
        return 0.0
    stamps = [record.get(name) for name in names]
    return max((float(s) for s in stamps if isinstance(s, int | float)), default=0.0)


def last_sign_of_life(claim: Any, sent: Any, step: Any) -> float:
    """The newest time a claim, a send or an execution marker says the step was alive."""
    return max(
        _at(claim, "at"),
        _at(sent, "at"),
        _at(step, "started_at", "beat_at", "finished_at"),
    )


def _running(step: Any, now: float, lease: float) -> bool:
    # Started, not finished, and its heartbeat is fresh: a worker is on it right now.
    return (
        isinstance(step, dict)
        and step.get("finished_at") is None
        and now - _at(step, "beat_at", "started_at") < lease
    )


async def find_lapsed(
    storage: BaseStorageAdapter,
    spec: RunSpec,
    *,
    force: bool = False,
) -> Redrive:
    """Claim again every ready, unfinished node of the run whose lease lapsed.

    ``force`` (a resume): every such node counts as lapsed unless a worker is running
    it right now, whether or not the run failed or was cancelled, and the
    ``max_attempts`` limit does not apply.
    """
    keys = RunKeys(spec.pipeline_id)
    now = time.time()
    wanted = [keys.data(name) for name in spec.data_names]
    for node in spec.nodes:
        wanted += [keys.claim(node.name), keys.sent(node.name), keys.step(node.name)]
    values = await storage.get_many([*wanted, keys.failed, keys.cancelled])
    outcome = Redrive()
    if not force and (keys.failed in values or keys.cancelled in values):
        return outcome
    candidates = [
        node
        for node in spec.nodes
        if keys.claim(node.name) in values
        and keys.data(node.output) not in values
        and all(keys.data(name) in values for name in node.inputs)
    ]
    if not candidates:
        return outcome
    extra = [keys.claim(n.name, a) for n in candidates for a in range(2, MAX_ATTEMPTS_TOTAL + 1)]
    for node in candidates:
        if node.map_over is not None:
            items = values[keys.data(node.map_over)]
            count = len(items) if isinstance(items, list) else 0
            extra += [keys.item(node.name, i) for i in range(count)]
            extra += [keys.step(node.name, i) for i in range(count)]
    values.update(await storage.get_many(extra))
    for node in candidates:
        await _consider(storage, spec, node, values, outcome, now=now, force=force)
    return outcome


async def _consider(
    storage: BaseStorageAdapter,
    spec: RunSpec,
    node: SpecNode,
    values: dict[str, Any],
    outcome: Redrive,
    *,
    now: float,
    force: bool,
) -> None:
    keys = RunKeys(spec.pipeline_id)
    lease = spec.lease_seconds
    attempt = max(a for a in range(1, MAX_ATTEMPTS_TOTAL + 1) if keys.claim(node.name, a) in values)
    claim = values[keys.claim(node.name, attempt)]
    sent = values.get(keys.sent(node.name))
    elements: list[int] | None = None
    if node.map_over is None:
        step = values.get(keys.step(node.name))
        alive = (
            _running(step, now, lease)
            if force
            else now - last_sign_of_life(claim, sent, step) < lease
        )
        if alive:
            return
    elif isinstance(items := values[keys.data(node.map_over)], list):
        # (A non-list input is re-sent whole: the sender fails the node with the reason.)
        count = len(items)
        missing = [i for i in range(count) if keys.item(node.name, i) not in values]
        if not missing:
            results = [values[keys.item(node.name, i)] for i in range(count)]
            outcome.assembled.append((node, results))
            return
        elements = [
            i
            for i in missing
            if not (
                _running(values.get(keys.step(node.name, i)), now, lease)
                if force
                else now - last_sign_of_life(claim, sent, values.get(keys.step(node.name, i)))
                < lease
            )
        ]
        if not elements:
            return
    if attempt >= MAX_ATTEMPTS_TOTAL or (not force and attempt >= spec.max_attempts):
        outcome.lost.append((node, attempt))
        return
    record = {"at": now, "task_id": node.task_id, "attempt": attempt + 1}
    if await storage.add(keys.claim(node.name, attempt + 1), record, spec.ttl_seconds):
        kwargs = {name: values[keys.data(name)] for name in node.inputs}
        outcome.steps.append(
            ClaimedStep(
                spec=spec, node=node, kwargs=kwargs, attempt=attempt + 1, elements=elements
            ),
        )
