"""Drawing a pipeline: Mermaid and Graphviz DOT text, and a terminal picture of a run.

Nodes are boxes labelled ``name -> output``; an edge goes from the producer of a value
to each node that consumes it, labelled with the value's name; values given to ``kiq``
are rounded boxes of their own. With node states (a run's status) each box also says
where the node is, and Mermaid colours it by state.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from taskiq_flow.middlewares.pipeline.graph import SpecNode
from taskiq_flow.middlewares.pipeline.status import NodeStatus, RunStatus

__all__ = ["levels", "render_run", "to_dot", "to_mermaid"]

_COLOURS = {
    "pending": "#eeeeee",
    "claimed": "#fff3c4",
    "sent": "#fff3c4",
    "running": "#bbdefb",
    "done": "#c8e6c9",
    "failed": "#ffcdd2",
    "cancelled": "#d7ccc8",
}


def _edges(nodes: Sequence[SpecNode]) -> tuple[list[tuple[str, str, str]], list[str]]:
    """(producer, consumer, value) edges and the values no node produces (the inputs)."""
    producers = {node.output: node.name for node in nodes}
    edges: list[tuple[str, str, str]] = []
    given: list[str] = []
    for node in nodes:
        for name in node.inputs:
            if name in producers:
                edges.append((producers[name], node.name, name))
            else:
                if name not in given:
                    given.append(name)
                edges.append((f"input:{name}", node.name, name))
    return edges, given


def levels(nodes: Sequence[SpecNode]) -> dict[str, int]:
    """Each node's depth: 0 for nodes fed only by inputs, else 1 + its deepest producer."""
    producers = {node.output: node for node in nodes}
    depth: dict[str, int] = {}

    def level(node: SpecNode) -> int:
        if node.name not in depth:
            depth[node.name] = 0  # a guard; graphs are validated acyclic
            feeds = [producers[name] for name in node.inputs if name in producers]
            depth[node.name] = 1 + max((level(f) for f in feeds), default=-1)
        return depth[node.name]

    for node in nodes:
        level(node)
    return depth


def _label(node: SpecNode, state: str | None) -> str:
    fan = f" [map over {node.map_over}]" if node.map_over else ""
    suffix = f" ({state})" if state else ""
    return f"{node.name} -> {node.output}{fan}{suffix}"


def _ident(name: str) -> str:
    return name.replace(":", "__")


def to_mermaid(nodes: Sequence[SpecNode], states: Mapping[str, str] | None = None) -> str:
    """A Mermaid ``flowchart`` of the pipeline (with node states when given)."""
    edges, given = _edges(nodes)
    lines = ["flowchart TD"]
    lines += [f'    {_ident("input:" + name)}(["{name}"])' for name in given]
    for node in nodes:
        state = (states or {}).get(node.name)
        lines.append(f'    {node.name}["{_label(node, state)}"]')
    lines += [f"    {_ident(src)} -->|{value}| {dst}" for src, dst, value in edges]
    if states:
        used = sorted(set(states.values()) & set(_COLOURS))
        lines += [f"    classDef {state} fill:{_COLOURS[state]}" for state in used]
        lines += [f"    class {name} {state}" for name, state in states.items() if state in used]
    return "\n".join(lines) + "\n"


def to_dot(nodes: Sequence[SpecNode], states: Mapping[str, str] | None = None) -> str:
    """A Graphviz ``digraph`` of the pipeline (with node states when given)."""
    edges, given = _edges(nodes)
    lines = ["digraph pipeline {", "    rankdir=TB;", "    node [shape=box];"]
    lines += [f'    "input:{name}" [label="{name}", shape=ellipse];' for name in given]
    for node in nodes:
        state = (states or {}).get(node.name)
        colour = f', style=filled, fillcolor="{_COLOURS[state]}"' if state in _COLOURS else ""
        lines.append(f'    "{node.name}" [label="{_label(node, state)}"{colour}];')
    lines += [f'    "{src}" -> "{dst}" [label="{value}"];' for src, dst, value in edges]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _moment(stamp: float | None) -> str:
    return "-" if stamp is None else time.strftime("%H:%M:%S", time.localtime(stamp))


def _took(node: NodeStatus) -> str:
    if node.started_at is None or node.finished_at is None:
        return "-"
    return f"{max(node.finished_at - node.started_at, 0.0):.3f}s"


def render_run(status: RunStatus, nodes: Sequence[SpecNode]) -> str:
    """The run as text for a terminal: a header, then the DAG level by level."""
    elapsed = (status.finished_at or time.time()) - status.created_at
    stalled = " (stalled: lost work is re-sent by a waiting wait_result or a resume)"
    lines = [
        f"pipeline {status.pipeline_id}: {status.state}{stalled if status.stalled else ''}",
        f"started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(status.created_at))}, "
        f"{elapsed:.3f}s {'so far' if status.state == 'running' else 'in all'}",
    ]
    depth = levels(nodes)
    by_name = {node.name: node for node in status.nodes}
    rows = [("", "node", "state", "sent", "started", "took", "from")]
    for level in range(max(depth.values(), default=-1) + 1):
        for spec_node in nodes:
            if depth[spec_node.name] != level:
                continue
            node = by_name[spec_node.name]
            state = node.state + (" !" if node.stalled else "")
            if node.elements is not None:
                state += f" {node.elements_done}/{node.elements}"
            if node.attempts > 1:
                state += f" x{node.attempts}"
            arrow = "*" if level == 0 else "\u2514\u2500>"
            rows.append(
                (
                    "  " * level + arrow,
                    f"{node.name} -> {node.output}",
                    state,
                    _moment(node.sent_at),
                    _moment(node.started_at),
                    _took(node),
                    ", ".join(node.inputs) or "-",
                ),
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    if status.failure:
        failure = status.failure
        where = f"node {failure.get('node')}"
        if failure.get("element") is not None:
            where += f" element {failure.get('element')}"
        lines.append(
            f"failed at {where}: {failure.get('error_type')}: {failure.get('error_message')}",
        )
    return "\n".join(lines) + "\n"
