"""A run's state in storage, and the one algorithm that advances it.

Everything lives under ``pipeline:{pipeline_id}:`` with the run's TTL:

- ``spec``: the ``RunSpec`` (nodes, inputs, task ids);
- ``data:{name}``: each given input and each node's output;
- ``claim:{node}``: who sent the node (exactly one sender per node); a re-drive of a
  node whose lease lapsed takes ``claim:{node}:{attempt}`` (2, 3, ...), also by ``add``;
- ``sent:{node}`` / ``step:{node}``: when it was sent / started, heartbeat, finished
  (``step:{node}:{i}`` and ``item:{node}:{i}`` per element of a ``map_over`` node);
- ``failed``: the first final error (node, task id, error type and message);
- ``cancelled``: the run was cancelled; nothing is claimed after it;
- ``done``: written once every output is present.

One key lives outside that prefix: ``pipeline-active:{pipeline_id}``, the run's entry in
the index of running runs (written with the spec, dropped when the run ends; see
``sweeper.py``). Its own prefix keeps ``pipeline:*`` globs (``pipeline list``) clean.

Each is written with ``add`` (first write wins). ``advance`` reads every ``data:*``,
``claim:*`` and ``failed`` in one ``get_many``; a ready node (all its inputs present)
not yet claimed is claimed with ``add``, and only the winner sends it. Because a
finishing step writes its output *before* it reads, of two steps that finish together
at least one sees the other's output (a linearizable store), so no ready node is
missed; because claims are ``add``, none is sent twice. A process that won claims reads
``cancelled`` once more before sending: a claim won after the cancel is never sent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from taskiq_flow.middlewares.pipeline.graph import RunSpec, SpecNode
from taskiq_flow.storage import BaseStorageAdapter, StorageError

__all__ = [
    "ACTIVE_PREFIX",
    "Advance",
    "ClaimedStep",
    "RunKeys",
    "advance",
    "failure_record",
    "read_run_state",
]

# Keys of the index of running runs: ``{ACTIVE_PREFIX}{pipeline_id}``.
ACTIVE_PREFIX = "pipeline-active:"


class RunKeys:
    """The storage keys of one run."""

    def __init__(self, pipeline_id: str) -> None:
        self.prefix = f"pipeline:{pipeline_id}:"
        self.spec = self.prefix + "spec"
        self.failed = self.prefix + "failed"
        self.done = self.prefix + "done"
        self.cancelled = self.prefix + "cancelled"
        # The run's entry in the index of running runs (outside ``prefix`` on purpose).
        self.active = ACTIVE_PREFIX + pipeline_id

    def data(self, name: str) -> str:
        """Key of the value called ``name`` (an input or an output)."""
        return f"{self.prefix}data:{name}"

    def claim(self, node: str, attempt: int = 1) -> str:
        """Key of the claim on ``node`` for ``attempt`` (1: the first send)."""
        suffix = "" if attempt == 1 else f":{attempt}"
        return f"{self.prefix}claim:{node}{suffix}"

    def sent(self, node: str) -> str:
        """Key of the latest send of ``node`` (time and attempt)."""
        return f"{self.prefix}sent:{node}"

    def step(self, node: str, element: int | None = None) -> str:
        """Key of the execution marker of ``node`` (or of one element of it)."""
        suffix = "" if element is None else f":{element}"
        return f"{self.prefix}step:{node}{suffix}"

    def item(self, node: str, element: int) -> str:
        """Key of the result of element ``element`` of a ``map_over`` node."""
        return f"{self.prefix}item:{node}:{element}"

    def state_keys(self) -> list[str]:
        """The keys that decide a run's state (see :func:`read_run_state`)."""
        return [self.done, self.cancelled, self.failed]


def read_run_state(keys: RunKeys, values: dict[str, Any]) -> str:
    """``done``, ``cancelled``, ``failed`` or ``running``, from a read of ``state_keys``.

    ``done`` wins (every output exists); a cancel is refused once a run has failed, so
    a ``failed`` record next to ``cancelled`` is a step that failed after the cancel.
    """
    for state, key in (("done", keys.done), ("cancelled", keys.cancelled)):
        if key in values:
            return state
    return "failed" if keys.failed in values else "running"


@dataclass
class ClaimedStep:
    """A node this process won the claim for, with the keyword arguments to send."""

    spec: RunSpec
    node: SpecNode
    kwargs: dict[str, Any]
    attempt: int = 1
    # For a ``map_over`` node: the element indices to send (``None``: all of them).
    elements: list[int] | None = None


@dataclass
class Advance:
    """What one ``advance`` found: steps to send and how the claims went."""

    steps: list[ClaimedStep] = field(default_factory=list)
    claims_won: int = 0
    # Claims lost to a concurrent advancer after our read showed the node unclaimed.
    claims_lost: int = 0
    # Nodes the finished step feeds that were ready but already claimed (or even done)
    # by another advancer when read: each would have been a duplicate send without claims.
    claims_taken: int = 0
    failed: bool = False
    cancelled: bool = False
    finished: bool = False
    # Whether this call's ``add(done)`` was the one that marked the run done.
    marked_done: bool = False
    # A storage error that cut the claiming short; ``steps`` still holds the claims won
    # before it (they must be sent), and advancing again is safe.
    error: StorageError | None = None


def failure_record(
    node: SpecNode,
    error_type: str,
    error_message: str,
    element: int | None = None,
) -> dict[str, Any]:
    """The value stored under ``failed``."""
    return {
        "node": node.name,
        "task_id": node.task_id if element is None else node.element_task_id(element),
        "error_type": error_type,
        "error_message": error_message,
        "element": element,
        "failed_at": time.time(),
    }


async def advance(
    storage: BaseStorageAdapter,
    spec: RunSpec,
    finished: SpecNode | None = None,
) -> Advance:
    """Claim every ready, unclaimed node of the run; mark it done when all outputs exist.

    ``finished`` is the step whose output was just written (``None`` for the producer).

    Raises:
        StorageError: the read failed (nothing was claimed). A failure after some claims
            were won is returned in ``Advance.error`` instead, with those claims.
    """
    keys = RunKeys(spec.pipeline_id)
    data_keys = {name: keys.data(name) for name in spec.data_names}
    claim_keys = {node.name: keys.claim(node.name) for node in spec.nodes}
    values = await storage.get_many(
        [*data_keys.values(), *claim_keys.values(), keys.failed, keys.cancelled],
    )
    outcome = Advance()
    if keys.failed in values or keys.cancelled in values:
        outcome.failed = keys.failed in values
        outcome.cancelled = keys.cancelled in values
        return outcome
    present = {name for name, key in data_keys.items() if key in values}
    try:
        for node in spec.nodes:
            if not all(name in present for name in node.inputs):
                continue
            if node.output in present or claim_keys[node.name] in values:
                if finished is not None and finished.output in node.inputs:
                    outcome.claims_taken += 1
                continue
            claim = {"at": time.time(), "task_id": node.task_id}
            if await storage.add(claim_keys[node.name], claim, spec.ttl_seconds):
                outcome.claims_won += 1
                kwargs = {name: values[data_keys[name]] for name in node.inputs}
                outcome.steps.append(ClaimedStep(spec=spec, node=node, kwargs=kwargs))
            else:
                outcome.claims_lost += 1
        if all(output in present for output in spec.outputs):
            outcome.finished = True
            outcome.marked_done = await storage.add(
                keys.done,
                {"finished_at": time.time()},
                spec.ttl_seconds,
            )
        if outcome.steps and await storage.exists(keys.cancelled):
            # Cancelled after our read: claims won after the cancel are never sent.
            outcome.steps.clear()
            outcome.cancelled = True
    except StorageError as exc:
        outcome.error = exc
    return outcome
