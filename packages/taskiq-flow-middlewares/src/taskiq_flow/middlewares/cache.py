"""CacheMiddleware: answer a repeated task call from the cache, without calling the function.

taskiq gives a middleware no way to skip a task: ``pre_execute`` can only return a
message, and the receiver then calls ``task.original_func``. So this middleware wraps
``original_func`` of every task it sees (once, in place, keeping the signature for
taskiq's parameter parsing and dependency injection) and hands each call its cache
decision through a context variable set in ``pre_execute``:

- async tasks: the wrapper is a coroutine function that asks the cache, which runs the
  real function under the dogpile lock on a miss;
- sync tasks: the wrapper stays a plain function, so taskiq still runs it in the worker's
  executor; from that thread it asks the cache on the event loop, and when the cache
  elects this call as the creator, the real function runs right here in the thread.

A direct call of the function outside a worker (no message in context) goes straight to
the original.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import operator
import queue
from collections.abc import Awaitable, Callable
from typing import Any

from taskiq import TaskiqMessage, TaskiqMiddleware
from taskiq.abc.broker import AsyncBroker

from taskiq_flow.cache import BaseCacheAdapter, CacheError, CacheLockTimeout, InMemoryCacheAdapter
from taskiq_flow.middlewares import _codec, _labels

__all__ = ["CacheMiddleware"]

logger = logging.getLogger("taskiq_flow.middlewares")

_WRAPPED_MARK = "__taskiq_flow_cache_wrapped__"


class _Call:
    """The cache decision for one message, handed from pre_execute to the wrapper."""

    __slots__ = ("cache_errors", "hit", "key", "loop", "message", "middleware", "taken", "ttl")

    def __init__(  # noqa: PLR0917 - built for every message; positional is the cheap call
        self,
        middleware: CacheMiddleware,
        message: TaskiqMessage,
        key: str,
        ttl: int,
        cache_errors: bool,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.middleware = middleware
        self.message = message
        self.key = key
        self.ttl = ttl
        self.cache_errors = cache_errors
        self.loop = loop
        self.taken = False
        self.hit = False

    def take(self, task_name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        """Claim this decision for the one call it was made for.

        The receiver calls the function with the message's own argument objects; any
        other call (a direct or recursive call, or one after a failed dependency left
        this decision unused) runs uncached.
        """
        message = self.message
        if self.taken or message.task_name != task_name:
            return False
        sent = message.args
        if len(args) != len(sent) or not all(map(operator.is_, args, sent)):
            return False
        if message.kwargs:
            for name, value in message.kwargs.items():
                if kwargs.get(name, _MISSING) is not value:
                    return False
        self.taken = True
        return True


_MISSING = object()

# Set by pre_execute in the receiver's context; never cleared: the next message
# overwrites it, ``take`` lets only the message's own call use it (once), and a worker
# runs each message in a task of its own (a copied context).
_CURRENT: contextvars.ContextVar[_Call | None] = contextvars.ContextVar(
    "taskiq_flow_cache_call",
    default=None,
)


def answered_from_cache(message: TaskiqMessage) -> bool:
    """Whether CacheMiddleware answered ``message`` from the cache in this process.

    Asked by StorageMiddleware in ``post_execute`` (same context as ``pre_execute``).
    A ``cache_hit`` label alone is no proof: a sender can set any label.
    """
    call = _CURRENT.get()
    # By task id, not identity: a middleware's pre_execute may return a copied message.
    return call is not None and call.hit and call.message.task_id == message.task_id


class _Uncacheable(Exception):
    """The creator produced a value msgspec cannot encode: return it, cache nothing."""

    def __init__(self, value: Any, reason: str) -> None:
        super().__init__(reason)
        self.value = value


class CacheMiddleware(TaskiqMiddleware):
    """Cache task results so that a repeated call is answered without running the task.

    Args:
        cache: the cache adapter; ``None`` means a new :class:`InMemoryCacheAdapter`.
        default_ttl: seconds a result stays cached, unless the ``cache_ttl`` label says
            otherwise (``0`` = do not cache).
        enabled: ``False`` turns the middleware into a no-op.
        cache_errors: cache task errors by default (the ``cache_errors`` label overrides).

    Labels (at declaration, with ``kicker().with_labels(...)``, or
    ``task.kiq(..., labels={...})``): ``cache_ttl``, ``cache_errors``, ``cache``
    (``"false"`` = bypass), ``cache_key`` (an explicit key). Results answered from the
    cache carry the label ``cache_hit="true"``.
    """

    def __init__(
        self,
        cache: BaseCacheAdapter | None = None,
        default_ttl: int = 3600,
        enabled: bool = True,
        *,
        cache_errors: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(default_ttl, bool) or not isinstance(default_ttl, int) or default_ttl < 0:
            msg = f"default_ttl must be a whole number of seconds >= 0, got {default_ttl!r}"
            raise ValueError(msg)
        if cache is not None and not isinstance(cache, BaseCacheAdapter):
            msg = f"cache must be a BaseCacheAdapter, got {type(cache).__qualname__}"
            raise TypeError(msg)
        self.cache = cache if cache is not None else InMemoryCacheAdapter()
        self.default_ttl = default_ttl
        self.enabled = enabled
        self.cache_errors = cache_errors
        self._counters = {
            "hits": 0,
            "executions": 0,
            "bypassed": 0,
            "uncacheable_args": 0,
            "uncacheable_results": 0,
            "cache_failures": 0,
            "lock_timeouts": 0,
        }
        self._warned_tasks: set[str] = set()
        # task name -> (task, its wrapper, the original function, its argument binder)
        self._known: dict[str, tuple[Any, Callable[..., Any], Callable[..., Any], Any]] = {}

    @property
    def cache(self) -> BaseCacheAdapter:
        """The cache adapter results are kept in."""
        return self._cache

    @cache.setter
    def cache(self, cache: BaseCacheAdapter) -> None:
        self._cache = cache
        self._get_or_create = _cache_entry_point(cache)

    # -- taskiq hooks ----------------------------------------------------------------

    def set_broker(self, broker: AsyncBroker) -> None:
        """Remember the broker and wrap the tasks it already knows."""
        super().set_broker(broker)
        for task in broker.get_all_tasks().values():
            self._wrap(task)

    def startup(self) -> None:
        """Wrap tasks registered after the middleware was added."""
        for task in self.broker.get_all_tasks().values():
            self._wrap(task)

    # pre_send and pre_execute are coroutines although they never await: taskiq's
    # maybe_awaitable recognises a coroutine at once, while a plain return value costs
    # it an ABC isinstance check (measured: ~0.5 us per hook per message).

    async def pre_send(self, message: TaskiqMessage) -> TaskiqMessage:
        """Bring ``kiq(..., labels={...})`` into the message's labels before it leaves."""
        if "labels" not in message.kwargs:
            return message
        task = self.broker.find_task(message.task_name)
        func = _original(task.original_func) if task is not None else None
        _labels.lift_labels_kwarg(message, func, wire_format=True)
        return message

    async def pre_execute(self, message: TaskiqMessage) -> TaskiqMessage:
        """Decide how this message uses the cache; make sure its task is wrapped."""
        labels = message.labels
        task_name = message.task_name
        task = self.broker.find_task(task_name)
        known = self._known.get(task_name)
        if known is None or known[0] is not task or task.original_func is not known[1]:
            if task is None:
                _CURRENT.set(None)
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
        _CURRENT.set(decision)
        return message

    async def shutdown(self) -> None:
        """Close the cache adapter."""
        await self.cache.close()

    # -- statistics --------------------------------------------------------------------

    def get_stats(self) -> dict[str, Any]:
        """The cache's statistics plus this middleware's own counters."""
        stats = dict(self.cache.get_stats())
        stats["middleware"] = dict(self._counters)
        return stats

    # -- internals ---------------------------------------------------------------------

    def _decide(self, message: TaskiqMessage, binder: _codec.Binder) -> _Call | None:
        """The decision for ``message``, or ``None`` when it runs uncached."""
        if not self.enabled:
            return None
        ttl, cache_errors = self.default_ttl, self.cache_errors
        explicit = None
        labels = message.labels
        # Most messages carry none of our labels: the defaults and the digest key.
        if labels and not _labels.OUR_LABELS.isdisjoint(labels):
            if not _labels.parse_bool(message, _labels.LABEL_CACHE, default=True):
                return None
            ttl = _labels.parse_ttl(message, self.default_ttl)
            cache_errors = _labels.parse_bool(
                message, _labels.LABEL_CACHE_ERRORS, default=self.cache_errors
            )
            explicit = labels.get(_labels.LABEL_CACHE_KEY)
        if ttl == 0:
            return None
        if explicit is not None and str(explicit):
            key = f"{message.task_name}:key:{explicit}"
        else:
            try:
                digest = binder.digest(message.args, message.kwargs)
            except _codec.Unencodable as exc:
                self._counters["uncacheable_args"] += 1
                self._warn_once(
                    message.task_name,
                    "Task %s runs uncached: its arguments cannot be encoded (%s).",
                    exc,
                )
                return None
            key = f"{message.task_name}:{digest}"
        return _Call(self, message, key, ttl, cache_errors, asyncio.get_running_loop())

    def _warn_once(self, task_name: str, template: str, detail: object) -> None:
        if task_name in self._warned_tasks:
            return
        self._warned_tasks.add(task_name)
        logger.warning(template, task_name, detail)

    def _wrap(self, task: Any) -> None:
        func = task.original_func
        if getattr(func, _WRAPPED_MARK, False):
            return
        task.original_func = _make_wrapper(task.task_name, func)

    def _learn(self, task: Any) -> tuple[Any, Callable[..., Any], Callable[..., Any], Any]:
        """Wrap ``task`` if needed and remember what each of its messages needs."""
        self._wrap(task)
        wrapper = task.original_func
        func = _original(wrapper)
        known = (task, wrapper, func, _codec.binder(func))
        self._known[task.task_name] = known
        return known

    async def _resolve(
        self,
        call: _Call,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        run: Callable[[], Awaitable[Any]] | None = None,
    ) -> Any:
        """Answer ``call`` from the cache, or run it (once across workers) and cache it.

        ``run`` runs the function where it must run (a sync task: in its thread);
        ``None`` awaits ``func(*args, **kwargs)`` right here (an async task).
        """
        # What this call's own execution produced, if the cache elected it as creator:
        # the caller gets the original object (or exception), not a decoded copy.
        produced: Any = _MISSING
        failed: Exception | None = None

        async def creator() -> bytes:
            nonlocal produced, failed
            self._counters["executions"] += 1
            try:
                value = await (func(*args, **kwargs) if run is None else run())
            except Exception as exc:
                failed = exc
                if not call.cache_errors:
                    raise
                return _codec.encode_error_payload(exc)
            produced = value
            try:
                return _codec.encode_value_payload(value)
            except _codec.Unencodable as exc:
                raise _Uncacheable(value, str(exc)) from exc

        while True:
            try:
                payload = await self._get_or_create(
                    call.key, creator, call.ttl, self._cache.default_stale_ttl, True
                )
                break
            except CacheLockTimeout:
                # Another worker is still creating this very result (its lease is being
                # renewed, or we would have taken over): running it here too is exactly
                # what the lock is for. Keep waiting; taskiq's timeout label bounds it.
                self._counters["lock_timeouts"] += 1
                logger.info(
                    "Task %s still waits for another worker computing %s.",
                    call.message.task_name,
                    call.key,
                )
            except _Uncacheable as exc:
                self._counters["uncacheable_results"] += 1
                self._warn_once(
                    call.message.task_name,
                    "Task %s: its result cannot be encoded, so it is not cached (%s).",
                    exc,
                )
                # A waiter in this process gets the creator's very object.
                return exc.value
            except CacheError:
                self._counters["cache_failures"] += 1
                if failed is not None:
                    # Our own run finished; only the cache write failed.
                    logger.warning("Could not cache the result of %s.", call.key, exc_info=True)
                    raise failed from None
                if produced is not _MISSING:
                    logger.warning("Could not cache the result of %s.", call.key, exc_info=True)
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
        if produced is not _MISSING:
            return produced
        return await self._hit(call, payload, func, args, kwargs, run=run)

    async def _hit(
        self,
        call: _Call,
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
        call.hit = True
        call.message.labels[_labels.LABEL_CACHE_HIT] = "true"
        if cached.error is not None:
            raise _codec.rebuild_exception(cached.error)
        return cached.value


_EntryPoint = Callable[[str, Callable[[], Awaitable[bytes]], int, int | None, bool], Awaitable[Any]]


def _cache_entry_point(cache: BaseCacheAdapter) -> _EntryPoint:
    """``cache.get_or_create`` taking (key, creator, ttl, stale_ttl, fallback) positionally.

    The middleware has already validated key and TTL, so an adapter that keeps the base
    class's ``get_or_create`` is entered straight at its dogpile lock; one that
    overrides it is called through its override.
    """
    if type(cache).get_or_create is BaseCacheAdapter.get_or_create:
        return cache._lock.get_or_create

    def through(
        key: str,
        creator: Callable[[], Awaitable[bytes]],
        ttl: int,
        stale_ttl: int | None,
        fallback: bool,
    ) -> Awaitable[Any]:
        return cache.get_or_create(
            key, creator, ttl_seconds=ttl, stale_ttl=stale_ttl, fallback_on_error=fallback
        )

    return through


def _original(func: Callable[..., Any]) -> Callable[..., Any]:
    return getattr(func, "__taskiq_flow_original__", func)


def _make_wrapper(task_name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            call = _CURRENT.get()
            if call is None or not call.take(task_name, args, kwargs):
                return await func(*args, **kwargs)
            return await call.middleware._resolve(call, func, args, kwargs)

        wrapper: Callable[..., Any] = async_wrapper
    else:

        @functools.wraps(func)
        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            call = _CURRENT.get()
            if call is None or not call.take(task_name, args, kwargs):
                return func(*args, **kwargs)
            return _run_sync_call(call, func, args, kwargs)

        wrapper = sync_wrapper
    setattr(wrapper, _WRAPPED_MARK, True)
    setattr(wrapper, "__taskiq_flow_original__", func)  # noqa: B010
    return wrapper


def _run_sync_call(
    call: _Call,
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """Run a sync task's cache dance from its executor thread.

    The cache lives on the event loop; the function must run here, in the worker's
    thread. When the cache elects this call to create the value, the loop asks this
    thread to run the function and waits for the answer.
    """
    loop = call.loop
    if _in_loop_thread(loop):
        # Called on the loop itself (no executor): nothing may block here.
        return func(*args, **kwargs)
    inbox: queue.SimpleQueue[tuple[str, asyncio.Future[Any] | None]] = queue.SimpleQueue()

    async def run() -> Any:
        answer: asyncio.Future[Any] = loop.create_future()
        inbox.put(("run", answer))
        return await answer

    outer = asyncio.run_coroutine_threadsafe(
        call.middleware._resolve(call, func, args, kwargs, run), loop
    )
    outer.add_done_callback(lambda _: inbox.put(("done", None)))
    while True:
        kind, answer = inbox.get()
        if kind == "done" or answer is None:
            return outer.result()
        try:
            produced = func(*args, **kwargs)
        except BaseException as exc:
            loop.call_soon_threadsafe(_settle, answer, None, exc)
        else:
            loop.call_soon_threadsafe(_settle, answer, produced, None)


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


def _in_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
