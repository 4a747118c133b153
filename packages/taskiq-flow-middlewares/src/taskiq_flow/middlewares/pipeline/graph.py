"""The pipeline's graph (validated once) and a run's spec (what workers read).

A ``Graph`` is built from tasks and checked for duplicate names, duplicate outputs
and cycles. ``Graph.plan`` turns it plus one run's inputs into a ``RunSpec``: the
nodes with their task ids and the exact names each one waits for. The spec is stored
with the run, so a worker needs nothing but the run's id to advance it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from taskiq_flow.middlewares.pipeline.errors import PipelineDefinitionError
from taskiq_flow.middlewares.pipeline.task import PipelineTaskInfo

__all__ = [
    "MAX_MAP_ELEMENTS",
    "RESERVED_INPUTS",
    "Graph",
    "GraphNode",
    "RunSpec",
    "SpecNode",
    "check_map_input",
    "check_pipeline_id",
]

# Elements one ``map_over`` node may fan out to in one run: each is a message and a
# stored item, and the last element to finish reads all items once (cost ~ n^2 / 2 keys).
MAX_MAP_ELEMENTS = 1000

# Keyword arguments of kiq/kiq_dataflow themselves, so no input may carry these names.
RESERVED_INPUTS = frozenset({"pipeline_id", "timeout"})

# Ids become storage-key parts and glob patterns: no ':', no glob characters.
_PIPELINE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")


def check_pipeline_id(pipeline_id: object) -> str:
    """Return ``pipeline_id`` if it is usable in storage keys, else raise."""
    if not isinstance(pipeline_id, str) or not _PIPELINE_ID.fullmatch(pipeline_id):
        raise PipelineDefinitionError(
            reason=f"bad pipeline_id {pipeline_id!r}: use 1-128 characters from "
            "[A-Za-z0-9_.-], starting with a letter or digit",
        )
    return pipeline_id


def check_map_input(node: str, name: str, value: object) -> list[Any]:
    """Return ``value`` as the list a ``map_over`` node fans out over, else raise."""
    if not isinstance(value, list):
        raise PipelineDefinitionError(
            reason=f"node {node!r} maps over {name!r}, which must be a list, "
            f"got {type(value).__name__}",
        )
    if len(value) > MAX_MAP_ELEMENTS:
        raise PipelineDefinitionError(
            reason=f"node {node!r} maps over {len(value)} elements of {name!r}; "
            f"the limit is {MAX_MAP_ELEMENTS} per run",
        )
    return value


class SpecNode(msgspec.Struct, frozen=True, kw_only=True):
    """One node of a run: which task to send, under which id, fed by which names."""

    name: str
    task_name: str
    task_id: str
    output: str
    inputs: tuple[str, ...]
    retries: int = 0
    map_over: str | None = None

    def element_task_id(self, index: int) -> str:
        """The task id of element ``index`` of a ``map_over`` node (fixed, like the node's)."""
        return f"{self.task_id}-{index}"


class RunSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a worker needs to advance a run, stored at ``pipeline:{id}:spec``."""

    pipeline_id: str
    created_at: float
    ttl_seconds: int | None
    given: tuple[str, ...]
    nodes: tuple[SpecNode, ...]
    # A claimed, sent or running step with no sign of life for this long is re-driven
    # (see docs/pipelines.md, "No stuck runs"); at most ``max_attempts`` times per node.
    lease_seconds: float = 60.0
    max_attempts: int = 5

    @property
    def outputs(self) -> tuple[str, ...]:
        """Every node's output name, in node order."""
        return tuple(node.output for node in self.nodes)

    @property
    def data_names(self) -> tuple[str, ...]:
        """Every value of the run: the given inputs, then the outputs."""
        return self.given + self.outputs

    def node(self, name: str) -> SpecNode | None:
        """The node called ``name``, if any."""
        for node in self.nodes:
            if node.name == name:
                return node
        return None


@dataclass(frozen=True)
class GraphNode:
    """A validated node: its description and the task that runs it."""

    info: PipelineTaskInfo
    task_name: str


class Graph:
    """A validated DAG of pipeline nodes, connected by parameter names."""

    def __init__(self, nodes: Iterable[GraphNode]) -> None:
        self.nodes: tuple[GraphNode, ...] = tuple(nodes)
        if not self.nodes:
            raise PipelineDefinitionError(reason="a pipeline needs at least one task")
        self._check_unique()
        self.producers: dict[str, str] = {n.info.output: n.info.name for n in self.nodes}
        self._check_acyclic()
        consumed: set[str] = set()
        required: set[str] = set()
        for node in self.nodes:
            consumed.update(node.info.signature.required, node.info.signature.optional)
            required.update(node.info.signature.required)
        self.external_inputs = frozenset(consumed - set(self.producers))
        self.required_inputs = frozenset(required - set(self.producers))
        reserved = sorted(self.external_inputs & RESERVED_INPUTS)
        if reserved:
            raise PipelineDefinitionError(
                reason=f"input name(s) {reserved} are reserved by kiq(); rename the "
                "parameter(s) or feed them from another node",
            )

    def _check_unique(self) -> None:
        seen_names: dict[str, str] = {}
        seen_outputs: dict[str, str] = {}
        for node in self.nodes:
            name, output = node.info.name, node.info.output
            if name in seen_names:
                raise PipelineDefinitionError(
                    reason=f"duplicate node name {name!r} (tasks {seen_names[name]} and "
                    f"{node.task_name}); pass pipeline_task(name=...)",
                )
            seen_names[name] = node.task_name
            if output in seen_outputs:
                raise PipelineDefinitionError(
                    reason=f"duplicate output {output!r}: produced by nodes "
                    f"{seen_outputs[output]!r} and {name!r}",
                )
            seen_outputs[output] = name

    def _dependencies(self, node: GraphNode) -> set[str]:
        # Node names this node waits for (an optional input produced in the graph counts).
        signature = node.info.signature
        return {
            self.producers[item]
            for item in (*signature.required, *signature.optional)
            if item in self.producers
        }

    def _check_acyclic(self) -> None:
        waiting = {node.info.name: self._dependencies(node) for node in self.nodes}
        while waiting:
            ready = [name for name, deps in waiting.items() if not deps]
            if not ready:
                raise PipelineDefinitionError(
                    reason=f"cycle among nodes {sorted(waiting)}: each waits for another's output",
                )
            for name in ready:
                del waiting[name]
            for deps in waiting.values():
                deps.difference_update(ready)

    def plan(
        self,
        pipeline_id: str,
        inputs: Mapping[str, Any],
        *,
        new_task_id: Callable[[], str],
        created_at: float,
        ttl_seconds: int | None,
        lease_seconds: float = 60.0,
        max_attempts: int = 5,
    ) -> RunSpec:
        """Check one run's inputs and fix its task ids and per-node input names."""
        unknown = sorted(set(inputs) - self.external_inputs)
        if unknown:
            produced = [item for item in unknown if item in self.producers]
            detail = (
                f"; {produced} are produced by the pipeline and cannot be passed in"
                if produced
                else ""
            )
            raise PipelineDefinitionError(
                reason=f"unknown input(s) {unknown}{detail}; this pipeline takes "
                f"{sorted(self.external_inputs)}",
            )
        missing = sorted(self.required_inputs - set(inputs))
        if missing:
            raise PipelineDefinitionError(
                reason=f"missing input(s) {missing}: no node produces them and kiq() "
                "was not given them",
            )
        for node in self.nodes:
            item = node.info.map_over
            if item is not None and item in inputs:
                check_map_input(node.info.name, item, inputs[item])
        available = set(inputs) | set(self.producers)
        nodes = tuple(
            SpecNode(
                name=node.info.name,
                task_name=node.task_name,
                task_id=new_task_id(),
                output=node.info.output,
                inputs=tuple(
                    item
                    for item in (*node.info.signature.required, *node.info.signature.optional)
                    if item in available
                ),
                retries=node.info.retries,
                map_over=node.info.map_over,
            )
            for node in self.nodes
        )
        return RunSpec(
            pipeline_id=pipeline_id,
            created_at=created_at,
            ttl_seconds=ttl_seconds,
            given=tuple(sorted(inputs)),
            nodes=nodes,
            lease_seconds=lease_seconds,
            max_attempts=max_attempts,
        )
