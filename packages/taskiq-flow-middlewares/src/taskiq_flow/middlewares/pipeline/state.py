"""A run's state in storage, and the one algorithm that advances it.

Everything lives under ``pipeline:{pipeline_id}:`` with the run's TTL:

- ``spec``: the ``RunSpec`` (nodes, inputs, task ids);
- ``data:{name}``: each given input and each node's output;
- ``claim:{node}``: who sent the node (exactly one sender per node);
- ``failed``: the first final error (node, task id, error type and message);
- ``done``: written once every output is present.

Each is written with ``add`` (first write wins). ``advance`` reads every ``data:*``,
``claim:*`` and ``failed`` in one ``get_many``; a ready node (all its inputs present)
not yet claimed is claimed with ``add``, and only the winner sends it. Because a
finishing step writes its output *before* it reads, of two steps that finish together
at least one sees the other's output (a linearizable store), so no ready node is
missed; because claims are ``add``, none is sent twice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from taskiq_flow.middlewares.pipeline.graph import RunSpec, SpecNode
from taskiq_flow.storage import BaseStorageAdapter, StorageError

__all__ = ["Advance", "ClaimedStep", "RunKeys", "advance", "failure_record"]


class RunKeys:
    """The storage keys of one run."""

    def __init__(self, pipeline_id: str) -> None:
        self.prefix = f"pipeline:{pipeline_id}:"
        self.spec = self.prefix + "spec"
        self.failed = self.prefix + "failed"
        self.done = self.prefix + "done"

    def data(self, name: str) -> str:
        """Key of the value called ``name`` (an input or an output)."""
        return f"{self.prefix}data:{name}"

    def claim(self, node: str) -> str:
        """Key of the claim on ``node``."""
        return f"{self.prefix}claim:{node}"


@dataclass
class ClaimedStep:
    """A node this process won the claim for, with the keyword arguments to send."""

    spec: RunSpec
    node: SpecNode
    kwargs: dict[str, Any]


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
    finished: bool = False
    # Whether this call's ``add(done)`` was the one that marked the run done.
    marked_done: bool = False
    # A storage error that cut the claiming short; ``steps`` still holds the claims won
    # before it (they must be sent), and advancing again is safe.
    error: StorageError | None = None


def failure_record(node: SpecNode, error_type: str, error_message: str) -> dict[str, Any]:
    """The value stored under ``failed``."""
    return {
        "node": node.name,
        "task_id": node.task_id,
        "error_type": error_type,
        "error_message": error_message,
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
    values = await storage.get_many([*data_keys.values(), *claim_keys.values(), keys.failed])
    outcome = Advance()
    if keys.failed in values:
        outcome.failed = True
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
    except StorageError as exc:
        outcome.error = exc
    return outcome
