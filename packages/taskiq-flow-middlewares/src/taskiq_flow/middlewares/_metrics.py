"""Prometheus metrics and OpenTelemetry span attributes of the middlewares (both optional).

Every metric is defined here, once per process, in prometheus-client's default registry
(so taskiq's ``PrometheusMiddleware`` server serves them, multiprocess mode included).
The middlewares hold a :class:`Recorder` (or ``None``, which costs them one attribute
check per hook): :func:`recorder` returns ``None`` when neither prometheus-client nor
opentelemetry-api is installed, and nothing of either is imported before it is called.

Labels are bounded: task names and a fixed set of outcomes, never keys or arguments.
"""

from __future__ import annotations

import importlib
import weakref
from typing import Any

from taskiq_flow.middlewares.errors import MiddlewareConfigError

__all__ = ["CACHE_RESULTS", "STORAGE_RESULTS", "Recorder", "recorder"]

#: The values of ``taskiq_flow_cache_requests_total``'s ``result`` label.
CACHE_RESULTS = ("hit", "miss", "bypass", "error", "at_send")
#: The values of ``taskiq_flow_storage_writes_total``'s ``result`` label.
STORAGE_RESULTS = ("ok", "buffered", "spooled", "dropped")

_UNSET: Any = object()
_recorder: Any = _UNSET


def _optional(module: str) -> Any:
    """``module`` if it is installed (and not blocked), else ``None``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def _metric(prom: Any, kind: str, name: str, doc: str, labels: tuple[str, ...] = ()) -> Any:
    """Register ``name`` in the default registry, or reuse the same metric already there.

    A metric of that name registered by someone else with another type or other labels
    is a configuration error, reported as one (prometheus-client's own message names
    neither the metric's owner nor the fix).
    """
    kwargs: dict[str, Any] = {"labelnames": labels}
    if kind == "Gauge":
        kwargs["multiprocess_mode"] = "livesum"
    try:
        return getattr(prom, kind)(name, doc, **kwargs)
    except ValueError as exc:
        registered = getattr(prom.REGISTRY, "_names_to_collectors", {})
        existing = registered.get(name) or registered.get(f"{name}_total")
        if (
            type(existing).__name__ == kind
            and tuple(getattr(existing, "_labelnames", ())) == labels
        ):
            return existing
        raise MiddlewareConfigError(
            name="metrics",
            expected=(
                f"no other metric named {name!r} in the default Prometheus registry "
                "(or pass metrics=False)"
            ),
            got=str(exc),
        ) from exc


class Recorder:
    """The process's metrics (when prometheus-client is installed) and span hooks (OTel)."""

    def __init__(self, prom: Any, trace: Any) -> None:
        self.prometheus = prom is not None
        self._trace = trace
        self._children: dict[tuple[str, str], Any] = {}
        # Records each writer keeps for a retry: the gauge is their sum in this process.
        self._buffered: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        if prom is None:
            return
        task = ("task_name",)
        self.cache_requests = _metric(
            prom,
            "Counter",
            "taskiq_flow_cache_requests",
            "Task calls seen by CacheMiddleware, by how the cache answered them.",
            ("task_name", "result"),
        )
        self.cache_lock_timeouts = _metric(
            prom,
            "Counter",
            "taskiq_flow_cache_lock_timeouts",
            "Waits for another worker's run of the same call that hit max_wait.",
        )
        self.cache_creator_errors = _metric(
            prom,
            "Counter",
            "taskiq_flow_cache_creator_errors",
            "Cached task calls whose own run raised.",
            task,
        )
        self.pipeline_runs = _metric(
            prom,
            "Counter",
            "taskiq_flow_pipeline_runs",
            "Pipeline runs reaching a state (started, done, failed, cancelled, resumed).",
            ("state",),
        )
        self.pipeline_steps = _metric(
            prom,
            "Counter",
            "taskiq_flow_pipeline_steps",
            "Pipeline steps finished, by result (ok, failed, lost).",
            ("result",),
        )
        self.storage_writes = _metric(
            prom,
            "Counter",
            "taskiq_flow_storage_writes",
            "Records given to storage, by result (ok, buffered, spooled, dropped).",
            ("result",),
        )
        # A fixed label set: every child built once, here.
        self._storage_children = {r: self.storage_writes.labels(r) for r in STORAGE_RESULTS}
        self.storage_buffer_records = _metric(
            prom,
            "Gauge",
            "taskiq_flow_storage_buffer_records",
            "Records kept for a retry (spool and memory) because the store refused them.",
        )
        self.storage_write_seconds = _metric(
            prom,
            "Histogram",
            "taskiq_flow_storage_write_seconds",
            "Duration of the store calls writing records (failed ones included).",
        )

    # -- cache -----------------------------------------------------------------------------

    def cache_request(self, task_name: str, result: str, key: str | None = None) -> None:
        """Count one call of ``task_name`` answered as ``result``; tag the current span."""
        if self.prometheus:
            # labels() takes a lock and builds a tuple per call: keep each child.
            child = self._children.get((task_name, result))
            if child is None:
                child = self._children[task_name, result] = self.cache_requests.labels(
                    task_name, result
                )
            child.inc()
        if self._trace is not None and result in {"hit", "miss", "at_send"}:
            span = self._trace.get_current_span()
            if span.is_recording():
                span.set_attribute("taskiq_flow.cache.hit", result != "miss")
                if key is not None:
                    span.set_attribute("taskiq_flow.cache.key", key)

    def cache_lock_timeout(self, task_name: str, key: str) -> None:
        """Count a lock wait that hit ``max_wait``; add a span event."""
        if self.prometheus:
            self.cache_lock_timeouts.inc()
        if self._trace is not None:
            span = self._trace.get_current_span()
            if span.is_recording():
                span.add_event(
                    "taskiq_flow.cache.lock_wait",
                    {"taskiq_flow.cache.key": key, "taskiq_flow.task_name": task_name},
                )

    def cache_creator_error(self, task_name: str) -> None:
        """Count a cached call whose own run raised."""
        if self.prometheus:
            self.cache_creator_errors.labels(task_name).inc()

    # -- pipelines -------------------------------------------------------------------------

    def pipeline_run(self, state: str) -> None:
        """Count a run reaching ``state``."""
        if self.prometheus:
            self.pipeline_runs.labels(state).inc()

    def pipeline_step(self, result: str) -> None:
        """Count a step finishing as ``result``."""
        if self.prometheus:
            self.pipeline_steps.labels(result).inc()

    # -- storage ---------------------------------------------------------------------------

    def storage_write(self, result: str, count: int = 1) -> None:
        """Count ``count`` records written (``ok``), kept (``buffered``, ``spooled``), dropped."""
        if self.prometheus and count:
            self._storage_children[result].inc(count)

    def storage_written(self, seconds: float) -> None:
        """A task's record written by one store call of ``seconds``: the healthy path."""
        if self.prometheus:
            self.storage_write_seconds.observe(seconds)
            self._storage_children["ok"].inc()
        if self._trace is not None:
            span = self._trace.get_current_span()
            if span.is_recording():
                span.set_attribute("taskiq_flow.storage.written", True)

    def storage_write_time(self, seconds: float) -> None:
        """Observe one store call's duration."""
        if self.prometheus:
            self.storage_write_seconds.observe(seconds)

    def storage_buffered(self, writer: object, count: int) -> None:
        """Set ``writer``'s count of records kept for a retry; the gauge shows the sum."""
        if self.prometheus:
            self._buffered[writer] = count
            self.storage_buffer_records.set(sum(self._buffered.values()))

    def storage_record(self, *, written: bool) -> None:
        """Tag the current span: was the task's record written to the store now."""
        if self._trace is not None:
            span = self._trace.get_current_span()
            if span.is_recording():
                span.set_attribute("taskiq_flow.storage.written", written)

    def storage_failure(self, exc: BaseException, records: int) -> None:
        """Add a span event: a storage write failed (``records`` are kept for a retry)."""
        if self._trace is not None:
            span = self._trace.get_current_span()
            if span.is_recording():
                span.add_event(
                    "taskiq_flow.storage.failure",
                    {
                        "exception.type": type(exc).__name__,
                        "exception.message": str(exc),
                        "taskiq_flow.storage.buffered": records,
                    },
                )


def recorder() -> Recorder | None:
    """The process's :class:`Recorder`, built on first call; ``None`` without either extra."""
    global _recorder  # noqa: PLW0603 - one set of metrics per process
    if _recorder is _UNSET:
        prom = _optional("prometheus_client")
        otel = _optional("opentelemetry.trace")
        _recorder = None if prom is None and otel is None else Recorder(prom, otel)
    result: Recorder | None = _recorder
    return result
