"""CacheMiddleware: answer a repeated task call from the cache, without calling the function.

``pre_execute`` decides, per message, whether and under which key its call uses the
cache; the task's wrapper (see :mod:`taskiq_flow.middlewares._wrapping`) hands the
claimed call to :meth:`~taskiq_flow.middlewares._resolve.Resolver.resolve`, which asks
the cache adapter's ``get_or_create`` and runs the real function (once across workers) on
a miss, and owns cache outages (counted, logged at a rate).

On the producer, ``pre_send`` makes the same decision and asks the cache first: a call
already cached or in flight is answered at ``kiq()`` and never sent (see
:mod:`taskiq_flow.middlewares._at_send`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any, Literal

from taskiq import TaskiqMessage, TaskiqMiddleware
from taskiq.abc.broker import AsyncBroker

from taskiq_flow.cache import (
    BaseCacheAdapter,
    CacheKeyError,
    CacheValueError,
    InMemoryCacheAdapter,
)
from taskiq_flow.middlewares import (
    _codec,
    _invalidate,
    _labels,
    _metrics,
    _policy,
    _versions,
)
from taskiq_flow.middlewares._at_send import SendGate
from taskiq_flow.middlewares._keys import call_key
from taskiq_flow.middlewares._resolve import Resolver
from taskiq_flow.middlewares._wrapping import (
    CURRENT,
    CacheCall,
    answered_from_cache,
    is_wrapped,
    make_wrapper,
    original,
)
from taskiq_flow.middlewares.errors import MiddlewareConfigError, MiddlewareConfigTypeError

# answered_from_cache lives with the wrapper; it stays importable from here, as before.
__all__ = ["CacheMiddleware", "answered_from_cache"]

logger = logging.getLogger("taskiq_flow.middlewares")


class CacheMiddleware(TaskiqMiddleware):
    """Cache task results so that a repeated call is answered without running the task.

    Args:
        cache: the cache adapter; ``None`` means a new :class:`InMemoryCacheAdapter`.
        default_ttl: seconds a result stays cached, unless the ``cache_ttl`` label says
            otherwise (``0`` = do not cache).
        enabled: ``False`` turns the middleware into a no-op.
        cache_errors: cache task errors by default (the ``cache_errors`` label overrides).
        answer_at_send: answer a call at ``kiq()`` when its result is cached, or join an
            identical call in flight, sending nothing to the broker (the
            ``cache_at_send="false"`` label turns it off per call). See
            ``docs/middlewares.md``, "Answered at send".
        metrics: export Prometheus metrics and OpenTelemetry span attributes when
            ``prometheus-client`` / ``opentelemetry-api`` are installed (the
            ``[prometheus]`` / ``[otel]`` extras); ``False`` turns both off. See
            ``docs/middlewares.md``, "Monitoring".
        cache_if: ``value -> bool``; a value it refuses is returned but not cached
            (default: every value is cached).
        errors_ttl: seconds a cached error stays (default: the call's TTL; the
            ``cache_errors_ttl`` label overrides).
        key_version: ``"source"`` puts a digest of each task's code (bytecode,
            constants, names, defaults, closure values) in its keys: a changed task
            misses, an unchanged one keeps its entries across restarts.
        error_log_interval: while the cache backend is down, at most one log line per
            this many seconds (the first failure at once, then a count per interval,
            then one "recovered" line); each call it fails counts in
            ``get_stats()["middleware"]["cache_failures"]``.

    Labels (at declaration, with ``kicker().with_labels(...)``, or
    ``task.kiq(..., labels={...})``): ``cache_ttl``, ``cache_errors``, ``cache``
    (``"false"`` = bypass), ``cache_key`` (an explicit key), ``cache_version``, ``cache_refresh``,
    ``cache_errors_ttl``, ``cache_tags`` (``"a,b"``: see :meth:`invalidate_tag`),
    ``cache_at_send`` (``"false"`` = always send). Results answered from the cache carry the label
    ``cache_hit="true"`` (and ``cache_answered="send"`` when answered at ``kiq()``).

    Raises:
        MiddlewareConfigError: a bad ``default_ttl`` (a ``ValueError``).
        MiddlewareConfigTypeError: ``cache`` is not a ``BaseCacheAdapter`` (a ``TypeError``).
    """

    def __init__(
        self,
        cache: BaseCacheAdapter | None = None,
        default_ttl: int = 3600,
        enabled: bool = True,
        *,
        cache_errors: bool = False,
        answer_at_send: bool = True,
        cache_if: Callable[[Any], bool] | None = None,
        errors_ttl: int | None = None,
        key_version: Literal["source"] | None = None,
        metrics: bool = True,
        error_log_interval: float = 60.0,
    ) -> None:
        super().__init__()
        if isinstance(default_ttl, bool) or not isinstance(default_ttl, int) or default_ttl < 0:
            raise MiddlewareConfigError(
                name="default_ttl",
                expected="a whole number of seconds >= 0",
                got=repr(default_ttl),
            )
        if cache is not None and not isinstance(cache, BaseCacheAdapter):
            raise MiddlewareConfigTypeError(
                name="cache", expected="a BaseCacheAdapter", got=type(cache).__qualname__
            )
        self.cache = cache if cache is not None else InMemoryCacheAdapter()
        self.default_ttl = default_ttl
        self.enabled = enabled
        self.cache_errors = cache_errors
        self.cache_if, self.errors_ttl = _policy.check_options(cache_if, errors_ttl)
        if key_version not in {None, "source"}:
            raise MiddlewareConfigError(
                name="key_version", expected="None or 'source'", got=repr(key_version)
            )
        self.key_version = key_version
        # task name -> its source version (key_version="source"), filled by _learn.
        self._sources: dict[str, str] = {}
        self.answer_at_send = answer_at_send
        # None (metrics off, or neither extra installed) costs each hook one check.
        self._metrics = _metrics.recorder() if metrics else None
        self._counters = {
            "hits": 0,
            "executions": 0,
            "bypassed": 0,
            "uncacheable_args": 0,
            "uncacheable_keys": 0,
            "uncacheable_results": 0,
            "declined_results": 0,
            "cache_failures": 0,
            "lock_timeouts": 0,
            "answered_at_send": 0,
            "joined_at_send": 0,
            "claimed_at_send": 0,
            "sent_after_join": 0,
            "refreshes_sent": 0,
            "send_lookup_failures": 0,
        }
        self._warned_tasks: set[str] = set()
        self._resolver = Resolver(self, error_log_interval)
        # Bound once, handed to every decision (a bound method per message costs more).
        self._resolve_call = self._resolver.resolve
        self._refresh_call = functools.partial(self._resolver.resolve, refresh=True)
        try:
            # TASKIQ_FLOW_CACHE_REFRESH=true: every call of this process refreshes.
            self.refresh_all = _labels.refresh_from_env()
        except ValueError as exc:
            raise MiddlewareConfigError(
                name=_labels.ENV_CACHE_REFRESH, expected="true or false", got=str(exc)
            ) from exc
        # task name -> (task, its wrapper, the original function, its argument binder)
        self._known: dict[str, tuple[Any, Callable[..., Any], Callable[..., Any], Any]] = {}
        self._gate = SendGate(self)

    @property
    def cache(self) -> BaseCacheAdapter:
        """The cache adapter results are kept in."""
        return self._cache

    @cache.setter
    def cache(self, cache: BaseCacheAdapter) -> None:
        self._cache = cache
        # Looked up once: every miss and every hit goes through it.
        self._get_or_create = cache.get_or_create
        # Per-task counts added up across workers (Redis); None: nothing to feed.
        self._shared = cache.shared_stats

    # -- taskiq hooks ----------------------------------------------------------------

    def set_broker(self, broker: AsyncBroker) -> None:
        """Remember the broker, wrap the tasks it knows and gate its ``kick``.

        The gate (see :mod:`taskiq_flow.middlewares._at_send`) is installed only with
        ``answer_at_send``: without it, the broker's ``kick`` is left untouched.
        """
        super().set_broker(broker)
        for task in broker.get_all_tasks().values():
            self._wrap(task)
        if self.answer_at_send:
            self._gate.install(broker)

    def startup(self) -> None:
        """Wrap tasks registered after the middleware was added."""
        for task in self.broker.get_all_tasks().values():
            self._wrap(task)

    # pre_send and pre_execute are coroutines although they never await: taskiq's
    # maybe_awaitable recognises a coroutine at once, while a plain return value costs
    # it an ABC isinstance check (measured: ~0.5 us per hook per message).

    async def pre_send(self, message: TaskiqMessage) -> TaskiqMessage:
        """Lift ``kiq(..., labels={...})`` into the labels; decide whether it is answered here.

        The decision (answer from the cache, join a call in flight, or send) is carried
        out by the gated ``kick`` that follows; it never raises because of the cache.
        """
        if "labels" in message.kwargs:
            task = self.broker.find_task(message.task_name)
            func = original(task.original_func) if task is not None else None
            _labels.lift_labels_kwarg(message, func, wire_format=True)
        if self.answer_at_send and self.enabled:
            await self._gate.before_send(message)
        return message

    async def pre_execute(self, message: TaskiqMessage) -> TaskiqMessage:
        """Decide how this message uses the cache; make sure its task is wrapped."""
        labels = message.labels
        task_name = message.task_name
        task = self.broker.find_task(task_name)
        known = self._known.get(task_name)
        if known is None or known[0] is not task or task.original_func is not known[1]:
            if task is None:
                CURRENT.set(None)
                return message
            known = self._learn(task)
        if message.kwargs and "labels" in message.kwargs:
            _labels.lift_labels_kwarg(message, known[2], wire_format=False)
        # Only this middleware may say a result came from the cache, never the sender
        # (after the lift: kiq(..., labels={"cache_hit": ...}) is the sender too).
        if _labels.LABEL_CACHE_HIT in labels:
            del labels[_labels.LABEL_CACHE_HIT]
        decision = self._decide(message, known[3])
        if decision is None:
            self._counters["bypassed"] += 1
            if self._metrics is not None:
                self._metrics.cache_request(task_name, "bypass")
        CURRENT.set(decision)
        return message

    async def shutdown(self) -> None:
        """Send what still waits on another process's call, then close the cache adapter."""
        await self._gate.close()
        await self.cache.close()
        if self._metrics is not None:
            self._metrics.flush()  # a multiprocess scrape reads what the worker counted

    # -- invalidation ------------------------------------------------------------------

    async def invalidate(self, task: Any, *args: Any, **kwargs: Any) -> bool:
        """Drop the cached result of ``task.kiq(*args, **kwargs)``; whether there was one.

        The key is :func:`~taskiq_flow.middlewares.cache_key_for`'s. A run of that call in
        flight stores nothing. Raises ``TypeError`` (not a task), ``CacheKeyError`` (no
        key for these arguments), ``CacheConnectionError`` (the cache is down).
        """
        return await _invalidate.invalidate_call(self.cache, task, *args, **kwargs)

    async def invalidate_task(self, task_or_name: Any) -> int:
        """Drop every cached result of one task (a task or its name); how many there were.

        Explicit ``cache_key`` keys included; other tasks' entries are never touched.
        """
        return await _invalidate.invalidate_task(self.cache, task_or_name)

    async def invalidate_tag(self, tag: str) -> int:
        """Drop every cached result whose call carried ``tag`` (``cache_tags``); how many.

        Raises ``CacheValueError`` (a bad tag) or ``CacheConnectionError``.
        """
        return await self.cache.invalidate_tag(tag)

    # -- statistics --------------------------------------------------------------------

    def get_stats(self) -> dict[str, Any]:
        """The cache's statistics plus this middleware's own counters."""
        stats = dict(self.cache.get_stats())
        stats["middleware"] = dict(self._counters)
        return stats

    # -- internals ---------------------------------------------------------------------

    def _decide(  # noqa: PLR0911 - one return per way a call runs uncached
        self, message: TaskiqMessage, binder: _codec.Binder, *, count: bool = True
    ) -> CacheCall | None:
        """The decision for ``message``, or ``None`` when it runs uncached.

        ``count=False`` (the producer's look before sending): warn, but leave the
        counters to the worker's own decision on the same message.
        """
        if not self.enabled:
            return None
        ttl, cache_errors = self.default_ttl, self.cache_errors
        resolve = self._resolve_call
        refresh = self.refresh_all
        labels = message.labels
        # Most messages carry none of our labels: the defaults and the digest key.
        if labels and not _labels.OUR_LABELS.isdisjoint(labels):
            if not _labels.parse_bool(message, _labels.LABEL_CACHE, default=True):
                return None
            ttl = _labels.parse_ttl(message, self.default_ttl)
            cache_errors = _labels.parse_bool(
                message, _labels.LABEL_CACHE_ERRORS, default=self.cache_errors
            )
            lease = labels.pop(_labels.LABEL_CACHE_LEASE, None)
            if lease is not None:
                # The producer claimed this call's lease at send: adopt it (no wait).
                resolve = functools.partial(self._resolve_call, lease_token=str(lease))
            refresh = _labels.parse_bool(message, _labels.LABEL_CACHE_REFRESH, default=refresh)
            if _labels.LABEL_CACHE_TAGS in labels:
                try:
                    _labels.parse_tags(labels[_labels.LABEL_CACHE_TAGS])
                except CacheValueError as problem:
                    self._count_and_warn_once(
                        "uncacheable_keys" if count else "",
                        message.task_name,
                        "Task %s runs uncached: its cache_tags label is unusable (%s).",
                        problem,
                    )
                    return None
        if ttl == 0:
            return None
        if refresh:
            resolve = self._refresh_call
        try:
            key = call_key(message, binder, self._sources.get(message.task_name))
        except CacheKeyError as problem:
            self._count_and_warn_once(
                "uncacheable_keys" if count else "",
                message.task_name,
                "Task %s runs uncached: its cache_key or cache_version label is unusable (%s).",
                problem,
            )
            return None
        except _codec.Unencodable as exc:
            self._count_and_warn_once(
                "uncacheable_args" if count else "",
                message.task_name,
                "Task %s runs uncached: its arguments cannot be encoded (%s).",
                exc,
            )
            return None
        loop = asyncio.get_running_loop()
        return CacheCall(resolve, message, key, ttl, cache_errors, loop)

    def _count_and_warn_once(
        self, counter: str, task_name: str, template: str, detail: object
    ) -> None:
        """Count a call that runs uncached (unless ``counter`` is ``""``); warn once per task."""
        if counter:
            self._counters[counter] += 1
        if task_name in self._warned_tasks:
            return
        self._warned_tasks.add(task_name)
        logger.warning(template, task_name, detail)

    def _wrap(self, task: Any) -> None:
        func = task.original_func
        if is_wrapped(func):
            return
        task.original_func = make_wrapper(task.task_name, func)

    def _learn(self, task: Any) -> tuple[Any, Callable[..., Any], Callable[..., Any], Any]:
        """Wrap ``task`` if needed and remember what each of its messages needs."""
        self._wrap(task)
        wrapper = task.original_func
        func = original(wrapper)
        known = (task, wrapper, func, _codec.binder(func))
        if self.key_version == "source":
            self._sources[task.task_name] = _versions.source_version(func)
        self._known[task.task_name] = known
        return known
