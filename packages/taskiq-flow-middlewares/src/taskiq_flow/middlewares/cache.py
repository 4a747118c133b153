"""CacheMiddleware: answer a repeated task call from the cache, without calling the function.

``pre_execute`` decides, per message, whether and under which key its call uses the
cache; the task's wrapper (see :mod:`taskiq_flow.middlewares._wrapping`) hands the
claimed call to :meth:`CacheMiddleware._resolve`, which asks the cache adapter's
``get_or_create`` and runs the real function (once across workers) on a miss.

On the producer, ``pre_send`` makes the same decision and asks the cache first: a call
already cached or in flight is answered at ``kiq()`` and never sent (see
:mod:`taskiq_flow.middlewares._at_send`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from taskiq import TaskiqMessage, TaskiqMiddleware
from taskiq.abc.broker import AsyncBroker

from taskiq_flow.cache import (
    BaseCacheAdapter,
    CacheError,
    CacheKeyError,
    CacheLockTimeout,
    CacheValueError,
    InMemoryCacheAdapter,
)
from taskiq_flow.middlewares import (
    _codec,
    _labels,
    _metrics,
    _policy,
    _versions,
)
from taskiq_flow.middlewares._at_send import SendGate
from taskiq_flow.middlewares._keys import call_key
from taskiq_flow.middlewares._wrapping import (
    CURRENT,
    MISSING,
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


class _Uncacheable(Exception):
    """The creator produced a value msgspec cannot encode: return it, cache nothing."""

    def __init__(self, value: Any, reason: str) -> None:
        super().__init__(reason)
        self.value = value


class _Declined(_Uncacheable):
    """``cache_if`` said no to the value: return it, cache nothing, warn nobody."""


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

    Labels (at declaration, with ``kicker().with_labels(...)``, or
    ``task.kiq(..., labels={...})``): ``cache_ttl``, ``cache_errors``, ``cache``
    (``"false"`` = bypass), ``cache_key`` (an explicit key), ``cache_version``, ``cache_refresh``,
    ``cache_errors_ttl``, ``cache_at_send``
    (``"false"`` = always send). Results answered from the cache carry the label
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
        # Bound once, handed to every decision (a bound method per message costs more).
        self._resolve_call = self._resolve
        self._refresh_call = functools.partial(self._resolve, refresh=True)
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

    # -- statistics --------------------------------------------------------------------

    def get_stats(self) -> dict[str, Any]:
        """The cache's statistics plus this middleware's own counters."""
        stats = dict(self.cache.get_stats())
        stats["middleware"] = dict(self._counters)
        return stats

    # -- internals ---------------------------------------------------------------------

    def _decide(
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
                resolve = functools.partial(self._resolve, lease_token=str(lease))
            refresh = _labels.parse_bool(message, _labels.LABEL_CACHE_REFRESH, default=refresh)
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

    async def _resolve(  # noqa: PLR0912, PLR0915, PLR0917 - the whole cache dance, one frame
        self,
        call: CacheCall,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        run: Callable[[], Awaitable[Any]] | None = None,
        lease_token: str | None = None,
        refresh: bool = False,
    ) -> Any:
        """Answer ``call`` from the cache, or run it (once across workers) and cache it.

        ``run`` runs the function where it must run (a sync task: in its thread);
        ``None`` awaits ``func(*args, **kwargs)`` right here (an async task).
        ``lease_token``: the lease its producer claimed at send, adopted here.
        ``refresh``: run it and overwrite the entry even if fresh (``cache_refresh``).
        """
        # What this call's own execution produced, if the cache elected it as creator:
        # the caller gets the original object (or exception), not a decoded copy.
        produced: Any = MISSING
        failed: Exception | None = None

        async def creator() -> Any:
            nonlocal produced, failed
            self._counters["executions"] += 1
            if self._metrics is not None:
                self._metrics.cache_request(call.message.task_name, "miss", call.key)
            try:
                value = await (func(*args, **kwargs) if run is None else run())
            except Exception as exc:
                failed = exc
                if self._metrics is not None:
                    self._metrics.cache_creator_error(call.message.task_name)
                if not call.cache_errors:
                    raise
                return _policy.error_entry(call.message, exc, self.errors_ttl)
            produced = value
            if self.cache_if is not None and not _policy.keeps(self.cache_if, value, call.key):
                raise _Declined(value, "cache_if")
            try:
                return _codec.encode_value_payload(value)
            except _codec.Unencodable as exc:
                raise _Uncacheable(value, str(exc)) from exc

        while True:
            try:
                # stale_ttl left out: None means the adapter's own default_stale_ttl.
                payload = await (
                    self.cache.refresh(call.key, creator, call.ttl, fallback_on_error=True)
                    if refresh
                    else self._get_or_create(
                        call.key, creator, call.ttl, fallback_on_error=True, lease_token=lease_token
                    )
                )
                break
            except CacheLockTimeout:
                if failed is not None or produced is not MISSING:
                    # Our creator ran: this is the task's own exception (it uses a cache
                    # itself), not our wait. It is the task's error, as any other.
                    raise
                # Another worker is still creating this very result (its lease is being
                # renewed, or we would have taken over): running it here too is exactly
                # what the lock is for. Keep waiting; taskiq's timeout label bounds it.
                self._counters["lock_timeouts"] += 1
                if self._metrics is not None:
                    self._metrics.cache_lock_timeout(call.message.task_name, call.key)
                logger.info(
                    "Task %s still waits for another worker computing %s.",
                    call.message.task_name,
                    call.key,
                )
            except _Declined as exc:
                self._counters["declined_results"] += 1
                return exc.value
            except _Uncacheable as exc:
                self._count_and_warn_once(
                    "uncacheable_results",
                    call.message.task_name,
                    "Task %s: its result cannot be encoded, so it is not cached (%s).",
                    exc,
                )
                # A waiter in this process gets the creator's very object.
                return exc.value
            except CacheError as exc:
                if exc is failed:
                    raise  # the task's own CacheError, not the cache's: the task's error
                if failed is None and produced is MISSING and isinstance(exc, CacheValueError):
                    # The adapter refused the key or TTL before running anything: a
                    # property of this call, not an outage. Once per task, no traceback.
                    self._count_and_warn_once(
                        "uncacheable_keys",
                        call.message.task_name,
                        "Task %s runs uncached: the cache refused its key or TTL (%s).",
                        exc,
                    )
                else:
                    self._counters["cache_failures"] += 1
                    if self._metrics is not None:
                        self._metrics.cache_request(call.message.task_name, "error")
                    if failed is not None or produced is not MISSING:
                        # Our own run finished; only the cache write failed.
                        logger.warning("Could not cache the result of %s.", call.key, exc_info=True)
                        if failed is not None:
                            raise failed from None
                        return produced
                    logger.warning(
                        "Cache unavailable for task %s; running it uncached.",
                        call.message.task_name,
                        exc_info=True,
                    )
                self._counters["executions"] += 1
                return await (func(*args, **kwargs) if run is None else run())
        if failed is not None:
            raise failed
        if produced is not MISSING:
            return produced
        if lease_token is not None:
            # Answered without our creator (another run landed first): the lease the
            # producer handed over must not sit until it lapses.
            await self._gate.release_quietly(call.key, lease_token)
        return await self._hit(call, payload, func, args, kwargs, run=run)

    async def _hit(
        self,
        call: CacheCall,
        payload: Any,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        run: Callable[[], Awaitable[Any]] | None,
    ) -> Any:
        try:
            cached = _codec.decode_payload(payload)
        except ValueError:
            logger.warning("Corrupt cache entry under %s; running the task.", call.key)
            self._counters["executions"] += 1
            return await (func(*args, **kwargs) if run is None else run())
        self._counters["hits"] += 1
        if self._metrics is not None:
            self._metrics.cache_request(call.message.task_name, "hit", call.key)
        call.hit = True
        call.message.labels[_labels.LABEL_CACHE_HIT] = "true"
        if cached.error is not None:
            raise _codec.rebuild_exception(cached.error)
        return cached.value
