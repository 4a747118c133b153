"""Prometheus metrics and OpenTelemetry span attributes of the middlewares (both optional).

Every metric is defined here, once per process, in prometheus-client's default registry
(so taskiq's ``PrometheusMiddleware`` server serves them, multiprocess mode included).
The middlewares hold a :class:`Recorder` (or ``None``, which costs them one attribute
check per hook): :func:`recorder` returns ``None`` when neither prometheus-client nor
opentelemetry-api is installed, and nothing of either is imported before it is called.

Labels are bounded: task names and a fixed set of outcomes, never keys or arguments.
"""

from __future__ import annotations

import asyncio
import atexit
import importlib
import logging
import weakref
from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from taskiq_flow.cache.stats import LOCK_WAIT
from taskiq_flow.middlewares.errors import MiddlewareConfigError
from taskiq_flow.storage.kit.ratelog import OutageLog

if TYPE_CHECKING:
    from taskiq_flow.cache.shared_stats import SharedStats

__all__ = ["CACHE_RESULTS", "STORAGE_RESULTS", "Recorder", "count_lock_wait", "recorder"]

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


#: Buckets of ``taskiq_flow_cache_lock_wait_seconds``: from a coalesced wake-up (ms) to
#: the adapters' default ``max_wait`` (60 s).
LOCK_WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _metric(
    prom: Any,
    kind: str,
    name: str,
    doc: str,
    labels: tuple[str, ...] = (),
    *,
    buckets: tuple[float, ...] | None = None,
) -> Any:
    """Register ``name`` in the default registry, or reuse the same metric already there.

    A metric of that name registered by someone else with another type or other labels
    is a configuration error, reported as one (prometheus-client's own message names
    neither the metric's owner nor the fix).
    """
    kwargs: dict[str, Any] = {"labelnames": labels}
    if kind == "Gauge":
        kwargs["multiprocess_mode"] = "livesum"
    if buckets is not None:
        kwargs["buckets"] = buckets
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


def _incrementer(child: Any) -> Callable[[float], None]:
    """``child.inc`` without prometheus-client's per-call checks: its value's own ``inc``.

    The checks (not a labelled parent, no negative amount) hold by construction here, and
    the value's ``inc`` takes the same lock (or writes the same multiprocess file). A
    prometheus-client without that value object gets the public method.
    """
    inc = getattr(getattr(child, "_value", None), "inc", None)
    return inc if callable(inc) else child.inc  # type: ignore[no-any-return]


def _batch_observer(histogram: Any) -> Callable[[Sequence[float]], None]:
    """Observe many amounts at once: one update of the sum and of each bucket hit.

    Falls back to ``histogram.observe`` per amount if its internals are not as expected.
    """
    bounds = getattr(histogram, "_upper_bounds", None)
    add: Any = getattr(getattr(histogram, "_sum", None), "inc", None)
    counts: list[Any] = [getattr(b, "inc", None) for b in getattr(histogram, "_buckets", ())]
    if not bounds or len(counts) != len(bounds) or not all(map(callable, [add, *counts])):

        def each(amounts: Sequence[float]) -> None:
            for amount in amounts:
                histogram.observe(amount)

        return each

    def observe_all(amounts: Sequence[float]) -> None:
        add(sum(amounts))
        # The first bucket whose upper bound holds each amount (the last one is +Inf).
        for bucket, hits in Counter(bisect_left(bounds, a) for a in amounts).items():
            counts[bucket](hits)

    return observe_all


#: Longest a hot-path event waits before it reaches prometheus-client (seconds).
FLUSH_INTERVAL = 0.5
#: Events past which they are pushed at once, whatever the timer (bounds the memory).
MAX_PENDING = 4096

logger = logging.getLogger("taskiq_flow.middlewares")

# asyncio's own C accessor: the running loop or None, without raising (the hot path).
_running_loop = asyncio._get_running_loop


def _flushing_collect(metric: Any, flush: Callable[[], None]) -> None:
    """Make every collection of ``metric`` push the pending events first.

    Set on the metric object itself, so any registry's collection, a filtered one
    (``restricted_registry``, ``?name[]=`` scrapes) included, sees every event recorded
    before it. (A multiprocess scrape reads the files instead: see :meth:`Recorder.flush`.)
    """
    collect = metric.collect

    def flushed_collect() -> Any:
        flush()
        return collect()

    metric.collect = flushed_collect


def _span_context(trace: Any) -> tuple[Callable[[], Any], str]:
    """How to read the current span with no Python call: ``(read_context, key)``.

    ``read_context().get(key)`` is the span of the current context, or ``None`` when there
    is none (no tracing middleware around the task: the common case, which then costs two
    C calls). It reads the API's own context variable when its runtime context keeps one
    (the default, ``contextvars``), else ``opentelemetry.context.get_current()``; an API
    without the span key it uses gets a reader calling ``trace.get_current_span``.
    """
    key = getattr(importlib.import_module("opentelemetry.trace.propagation"), "_SPAN_KEY", None)
    if not isinstance(key, str):
        own = "taskiq_flow.span"
        return (lambda: {own: trace.get_current_span()}), own
    context = importlib.import_module("opentelemetry.context")
    variable = getattr(getattr(context, "_RUNTIME_CONTEXT", None), "_current_context", None)
    read: Callable[[], Any] = (
        variable.get if isinstance(variable, ContextVar) else context.get_current
    )
    return read, key


class Recorder:
    """The process's metrics (when prometheus-client is installed) and span hooks (OTel)."""

    def __init__(self, prom: Any, trace: Any) -> None:
        self.prometheus = prom is not None
        self._trace = trace
        # Read only when trace is not None (each hook checks that first).
        self._span_context: Callable[[], Any]
        self._span_key: str
        self._span_context, self._span_key = _span_context(trace) if trace else (dict, "")
        self._children: dict[tuple[str, str], Any] = {}
        # Records each writer keeps for a retry: the gauge is their sum in this process.
        self._buffered: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        # The hot path's events, pushed by flush(): the incrementer of the answer's child
        # per cache answer, a float (the store call's seconds) per record written.
        # A deque: append and popleft are atomic, so any thread may record and any may
        # flush, each event taken exactly once, with no lock for the event loop to block on.
        self._events: deque[Any] = deque()
        # The loop whose timer will flush what is pending (None: no timer armed).
        self._armed: asyncio.AbstractEventLoop | None = None
        self._flush_failures = OutageLog(logger, "pushing metrics to prometheus-client")
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
        self.cache_lock_wait_seconds = _metric(
            prom,
            "Histogram",
            "taskiq_flow_cache_lock_wait_seconds",
            "Time a cached call waited for another caller's run of the same call.",
            task,
            buckets=LOCK_WAIT_BUCKETS,
        )
        # task name -> its child's observe (see _batch_observer)
        self._lock_wait_children: dict[str, Callable[[Sequence[float]], None]] = {}
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
        self._count_written = _incrementer(self._storage_children["ok"])
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
        self._observe_writes = _batch_observer(self.storage_write_seconds)
        for batched in (self.cache_requests, self.storage_writes, self.storage_write_seconds):
            _flushing_collect(batched, self.flush)
        atexit.register(self.flush)  # the last events of a process whose loop is gone

    # -- batching --------------------------------------------------------------------------

    # A hot-path event is kept in self._events for the next flush(), by the hook itself:
    #     events.append(event); loop = _running_loop()
    #     if loop is None or loop is not self._armed or len(events) >= MAX_PENDING: _pending
    # Why: a prometheus-client update is a Python call taking a lock; a task's answer and
    # record made four of them, a few per cent of an in-memory task's cost. Here an event
    # is one deque.append (atomic, from any thread) and two C calls. Comparing
    # loops (not "the first pending event") re-arms a timer lost with a closed loop.

    def _pending(self, loop: asyncio.AbstractEventLoop | None, count: int) -> None:
        """Arm a flush on ``loop`` in FLUSH_INTERVAL (at once: no loop, or too many wait)."""
        if loop is None or count >= MAX_PENDING:
            self.flush()
            return
        self._armed = loop
        loop.call_later(FLUSH_INTERVAL, self._timer_flush, loop)

    def _timer_flush(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._armed is loop:
            self._armed = None  # the next event arms another timer
        self.flush()

    def flush(self) -> None:
        """Push the pending events to prometheus-client (any thread; idempotent).

        Called by a timer on the loop that recorded them (at most FLUSH_INTERVAL after the
        first), at once past MAX_PENDING events or with no running loop, before every
        collection of our batched metrics, and at the middlewares' shutdown; so a
        multiprocess scrape (another process reading the files) sees a worker's counts
        about FLUSH_INTERVAL late (later if its loop is blocked; a SIGKILLed worker loses
        its last FLUSH_INTERVAL). Never raises: a failed push is logged (rate-limited) and
        its events are dropped, as prometheus-client's own failed update would be.
        """
        events = self._events
        if not events:
            return
        answers: Counter[Callable[[float], None]] = Counter()
        writes: list[float] = []
        pop = events.popleft
        # Only what is pending now: appends made meanwhile wait for the next flush.
        for _ in range(len(events)):
            try:
                event = pop()
            except IndexError:  # another thread's flush took the rest
                break
            if callable(event):
                answers[event] += 1
            else:
                writes.append(event)
        try:
            for inc, hits in answers.items():
                inc(hits)
            if writes:
                self._observe_writes(writes)
                self._count_written(len(writes))
        except Exception as exc:  # e.g. the multiprocess directory is gone
            self._flush_failures.failure("%s: %s", type(exc).__name__, exc)
        else:
            if self._flush_failures.failing:
                self._flush_failures.success()

    # -- cache -----------------------------------------------------------------------------

    def cache_request(self, task_name: str, result: str, key: str | None = None) -> None:
        """Count one call of ``task_name`` answered as ``result``; tag the current span."""
        if self.prometheus:
            # The child's incrementer, not a new tuple: pending events allocate nothing
            # the garbage collector tracks.
            inc = self._children.get((task_name, result))
            if inc is None:
                inc = _incrementer(self.cache_requests.labels(task_name, result))
                self._children[task_name, result] = inc
            events = self._events
            events.append(inc)
            loop = _running_loop()
            if loop is None or loop is not self._armed or len(events) >= MAX_PENDING:
                self._pending(loop, len(events))
        if self._trace is not None and result in {"hit", "miss", "at_send"}:
            span = self._span_context().get(self._span_key)
            if span is not None and span.is_recording():
                span.set_attribute("taskiq_flow.cache.hit", result != "miss")
                if key is not None:
                    span.set_attribute("taskiq_flow.cache.key", key)

    def cache_lock_wait(self, task_name: str, key: str, seconds: float) -> None:
        """Observe a wait for another caller's run; tag the span and add an event."""
        if self.prometheus:
            observe = self._lock_wait_children.get(task_name)
            if observe is None:
                observe = _batch_observer(self.cache_lock_wait_seconds.labels(task_name))
                self._lock_wait_children[task_name] = observe
            observe((seconds,))
        if self._trace is not None:
            span = self._span_context().get(self._span_key)
            if span is not None and span.is_recording():
                waited_ms = seconds * 1000
                span.set_attribute("taskiq_flow.cache.lock_wait_ms", waited_ms)
                span.add_event(
                    "taskiq_flow.cache.lock_wait",
                    {
                        "taskiq_flow.cache.key": key,
                        "taskiq_flow.task_name": task_name,
                        "taskiq_flow.cache.lock_wait_ms": waited_ms,
                    },
                )

    def cache_lock_timeout(self, task_name: str, key: str) -> None:
        """Count a lock wait that hit ``max_wait`` (the wait goes on); add a span event."""
        if self.prometheus:
            self.cache_lock_timeouts.inc()
        if self._trace is not None:
            span = self._span_context().get(self._span_key)
            if span is not None and span.is_recording():
                span.add_event(
                    "taskiq_flow.cache.lock_timeout",
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
            events = self._events
            events.append(seconds)
            loop = _running_loop()
            if loop is None or loop is not self._armed or len(events) >= MAX_PENDING:
                self._pending(loop, len(events))
        if self._trace is not None:
            span = self._span_context().get(self._span_key)
            if span is not None and span.is_recording():
                span.set_attribute("taskiq_flow.storage.written", True)

    def storage_write_time(self, seconds: float) -> None:
        """Observe one store call's duration."""
        if self.prometheus:
            self._observe_writes((seconds,))

    def storage_buffered(self, writer: object, count: int) -> None:
        """Set ``writer``'s count of records kept for a retry; the gauge shows the sum."""
        if self.prometheus:
            self._buffered[writer] = count
            self.storage_buffer_records.set(sum(self._buffered.values()))

    def storage_record(self, *, written: bool) -> None:
        """Tag the current span: was the task's record written to the store now."""
        if self._trace is not None:
            span = self._span_context().get(self._span_key)
            if span is not None and span.is_recording():
                span.set_attribute("taskiq_flow.storage.written", written)

    def storage_failure(self, exc: BaseException, records: int) -> None:
        """Add a span event: a storage write failed (``records`` are kept for a retry)."""
        if self._trace is not None:
            span = self._span_context().get(self._span_key)
            if span is not None and span.is_recording():
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


def count_lock_wait(
    metrics: Recorder | None, shared: SharedStats | None, task_name: str, key: str
) -> None:
    """Record the wait the last ``get_or_create`` of this context noted, then reset it.

    The cache's lock sets :data:`~taskiq_flow.cache.stats.LOCK_WAIT` only on a call that
    waited for another caller's run: callers test ``LOCK_WAIT.get(0.0)`` first, so a call
    that did not wait costs one context-variable read.
    """
    seconds = LOCK_WAIT.get(0.0)
    LOCK_WAIT.set(0.0)
    if metrics is not None:
        metrics.cache_lock_wait(task_name, key, seconds)
    if shared is not None:
        shared.add(task_name, "lock_waits")
        shared.add(task_name, "lock_wait_ms", round(seconds * 1000))
