"""docs/monitoring.md: every metric in its table, every PromQL query parsed and checked.

The metric names come from a real scrape of prometheus-client's default registry (an
HTTP GET of ``start_http_server``), the label names from the registered metrics. Each
query of the page (and of middlewares.md's Monitoring section) must parse as PromQL
(``promql-parser``, a port of Prometheus's own parser) and name only metrics the scrape
serves and labels those metrics have.
"""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import promql_parser
import pytest
from prometheus_client import REGISTRY, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from taskiq_flow.middlewares import CacheMiddleware
from taskiq_flow.middlewares._metrics import CACHE_RESULTS, STORAGE_RESULTS

DOCS = Path(__file__).parents[3] / "docs"

# Label values a query may select (the rest are free: task names).
KNOWN_VALUES = {
    ("taskiq_flow_cache_requests", "result"): set(CACHE_RESULTS),
    ("taskiq_flow_storage_writes", "result"): set(STORAGE_RESULTS),
    ("taskiq_flow_pipeline_runs", "state"): {"started", "done", "failed", "cancelled", "resumed"},
    ("taskiq_flow_pipeline_steps", "result"): {"ok", "failed", "lost"},
}
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


def doc(name: str) -> str:
    path = DOCS / name
    if not path.exists():
        pytest.skip("docs/ is not part of this checkout")
    return path.read_text(encoding="utf-8")


def queries(text: str) -> list[str]:
    """Each query of the ```promql blocks: lines up to a blank or comment line."""
    found = []
    for block in re.findall(r"```promql\n(.*?)```", text, flags=re.DOTALL):
        current: list[str] = []
        for line in [*block.splitlines(), ""]:
            if not line.strip() or line.lstrip().startswith("#"):
                if current:
                    found.append("\n".join(current))
                current = []
            elif line.startswith(" ") and current:
                current.append(line)  # a continuation of the query above
            else:
                if current:
                    found.append("\n".join(current))
                current = [line]
    return found


@pytest.fixture(scope="module")
def served() -> dict[str, tuple[str, frozenset[str]]]:
    """``{sample name: (family name, label names)}`` of our metrics, from a real scrape."""
    CacheMiddleware()  # the metrics exist once a middleware was built
    server, thread = start_http_server(0, addr="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        body = urllib.request.urlopen(url, timeout=5).read().decode()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    collectors = REGISTRY._names_to_collectors  # the registered objects: their label names
    names: dict[str, tuple[str, frozenset[str]]] = {}
    for family in text_string_to_metric_families(body):
        if not family.name.startswith("taskiq_flow_") or family.name.endswith("_created"):
            continue  # *_created: the creation time prometheus-client adds to counters
        labels = frozenset(collectors[family.name]._labelnames)
        for suffix in SUFFIXES[family.type]:
            extra = {"le"} if suffix == "_bucket" else set()
            names[family.name + suffix] = (family.name, labels | extra)
    return names


def selectors(expr: object) -> tuple[list[object], list[list[str]]]:
    """The vector selectors of ``expr``, and the label lists of its ``by``/``without``."""
    found: list[object] = []
    groupings: list[list[str]] = []

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            groupings.append(list(node.modifier.labels))

    promql_parser.walk(expr, pre_visit=visit)
    return found, groupings


def check_query(query: str, served: dict[str, tuple[str, frozenset[str]]]) -> set[str]:
    """Parse ``query`` and check its names; the families it reads."""
    expr = promql_parser.parse(query)  # ValueError on a syntax error
    found, groupings = selectors(expr)
    assert found, f"no metric in {query!r}"
    families, allowed = set(), set()
    for selector in found:
        name = selector.name
        assert name in served, f"{name!r} is not served (query {query!r})"
        family, labels = served[name]
        families.add(family)
        allowed |= labels
        for matcher in selector.matchers.matchers:
            assert matcher.name in labels, f"{name} has no label {matcher.name!r}"
            known = KNOWN_VALUES.get((family, matcher.name))
            if known is not None:
                values = set(matcher.value.split("|"))
                assert values <= known, f"{name}{{{matcher.name}}}: {values - known}"
    for labels in groupings:
        assert set(labels) <= allowed, f"grouping by {labels} in {query!r}"
    return families


def test_the_page_has_queries_and_they_parse(served) -> None:
    found = queries(doc("monitoring.md"))
    assert len(found) >= 15
    for query in found:
        check_query(query, served)


def test_every_metric_has_a_row_and_a_query(served) -> None:
    text = doc("monitoring.md")
    registered = {family for family, _ in served.values()}
    in_table = {
        re.sub(r"_total$", "", name)
        for name in re.findall(r"^\| `(taskiq_flow_\w+)`", text, flags=re.MULTILINE)
    }
    assert in_table == registered
    queried = set().union(*(check_query(q, served) for q in queries(text)))
    assert queried == registered


def test_middlewares_page_queries_parse_too(served) -> None:
    text = doc("middlewares.md").split("## Monitoring", 1)[1]
    found = queries(text)
    assert found
    for query in found:
        check_query(query, served)


@pytest.mark.parametrize(
    "query",
    [
        "sum(rate(taskiq_flow_cache_requests_total[5m])",  # unbalanced
        "rate(taskiq_flow_cache_requests_total[5 minutes])",  # not a duration
        "sum by (task_name) rate(taskiq_flow_cache_requests_total[5m])",  # no parentheses
    ],
)
def test_the_parser_refuses_broken_queries(query: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the parser's only error type
        promql_parser.parse(query)


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("rate(taskiq_flow_cache_request_total[5m])", "not served"),
        ('rate(taskiq_flow_cache_requests_total{outcome="hit"}[5m])', "no label"),
        ('rate(taskiq_flow_cache_requests_total{result="hits"}[5m])', "hits"),
        ("sum by (key) (rate(taskiq_flow_cache_requests_total[5m]))", "grouping"),
    ],
)
def test_the_check_catches_wrong_names(served, query: str, problem: str) -> None:
    with pytest.raises(AssertionError, match=problem):
        check_query(query, served)
