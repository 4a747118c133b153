"""How CacheMiddleware gets between taskiq's receiver and a task function.

taskiq gives a middleware no way to skip a task: ``pre_execute`` can only return a
message, and the receiver then calls ``task.original_func``. So every task's
``original_func`` is wrapped (once, in place, keeping the signature for taskiq's
parameter parsing and dependency injection), and ``pre_execute`` hands each call its
cache decision (a :class:`CacheCall`) through the context variable :data:`CURRENT`:

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
import operator
import queue
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from taskiq import TaskiqMessage

__all__ = [
    "CURRENT",
    "MISSING",
    "CacheCall",
    "Resolve",
    "answered_from_cache",
    "is_wrapped",
    "make_wrapper",
    "original",
]

_WRAPPED_MARK = "__taskiq_flow_cache_wrapped__"
_ORIGINAL = "__taskiq_flow_original__"

MISSING: Any = object()
"""Stands for "no value" where ``None`` is a value."""


_Run = Callable[[], Awaitable[Any]]

# The middleware's cache dance for one claimed call (``CacheMiddleware._resolve``):
# (call, func, args, kwargs, run), ``run`` being how a sync task runs in its thread.
Resolve = Callable[
    ["CacheCall", Callable[..., Any], tuple[Any, ...], dict[str, Any], _Run | None],
    Coroutine[Any, Any, Any],
]


class CacheCall:
    """The cache decision for one message, handed from pre_execute to the wrapper."""

    __slots__ = ("cache_errors", "hit", "key", "loop", "message", "resolve", "taken", "ttl")

    def __init__(  # noqa: PLR0917 - built for every message; positional is the cheap call
        self,
        resolve: Resolve,
        message: TaskiqMessage,
        key: str,
        ttl: int,
        cache_errors: bool,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.resolve = resolve
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
                if kwargs.get(name, MISSING) is not value:
                    return False
        self.taken = True
        return True


# Set by pre_execute in the receiver's context; never cleared: the next message
# overwrites it, ``take`` lets only the message's own call use it (once), and a worker
# runs each message in a task of its own (a copied context).
CURRENT: contextvars.ContextVar[CacheCall | None] = contextvars.ContextVar(
    "taskiq_flow_cache_call",
    default=None,
)


def answered_from_cache(message: TaskiqMessage) -> bool:
    """Whether CacheMiddleware answered ``message`` from the cache in this process.

    Asked by StorageMiddleware in ``post_execute`` (same context as ``pre_execute``).
    A ``cache_hit`` label alone is no proof: a sender can set any label.
    """
    call = CURRENT.get()
    # By task id, not identity: a middleware's pre_execute may return a copied message.
    return call is not None and call.hit and call.message.task_id == message.task_id


def original(func: Callable[..., Any]) -> Callable[..., Any]:
    """The task function itself, behind our wrapper if ``func`` is one."""
    return getattr(func, _ORIGINAL, func)


def is_wrapped(func: Callable[..., Any]) -> bool:
    """Whether ``func`` is already a wrapper made by :func:`make_wrapper`."""
    return bool(getattr(func, _WRAPPED_MARK, False))


def make_wrapper(task_name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap task ``func`` so that the call its message was decided for asks the cache."""
    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            call = CURRENT.get()
            if call is None or not call.take(task_name, args, kwargs):
                return await func(*args, **kwargs)
            return await call.resolve(call, func, args, kwargs, None)

        wrapper: Callable[..., Any] = async_wrapper
    else:

        @functools.wraps(func)
        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            call = CURRENT.get()
            if call is None or not call.take(task_name, args, kwargs):
                return func(*args, **kwargs)
            return _run_sync_call(call, func, args, kwargs)

        wrapper = sync_wrapper
    setattr(wrapper, _WRAPPED_MARK, True)
    setattr(wrapper, _ORIGINAL, func)
    return wrapper


def _run_sync_call(
    call: CacheCall,
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

    outer = asyncio.run_coroutine_threadsafe(call.resolve(call, func, args, kwargs, run), loop)
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
