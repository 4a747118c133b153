"""Reference middleware pairs for scripts/bench/middlewares.py. Not shipped, not for use.

They put the shipped middlewares' all-miss cost in context, measured in the same run:

* ``floor``: the least a cache + storage pair of middlewares can do inside taskiq: wrap
  the function, digest the arguments, one dict lookup, one dict store of the encoded
  value, one dict store of an encoded record. No LRU bound, no TTL, no single flight, no
  statistics, no validation.
* ``lean``: the work the shipped pair does on an all-miss call of an async task through
  in-memory adapters -- label checks, a per-task lookup, the bound-argument digest, a
  single-use decision, the in-process single flight, an LRU- and TTL-bounded cache, hit
  and miss counters, the record with its ISO timestamp in an LRU-bounded store -- but
  flattened into one wrapper and one hook, with no adapter, lock or codec layers and no
  other path (no Redis, no sync tasks, no stale entries, no errors, no retry buffer).
  It answers "what if every layer were inlined by hand?".
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import heapq
import operator
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from taskiq import InMemoryBroker, TaskiqMessage, TaskiqMiddleware, TaskiqResult
from taskiq.exceptions import NoResultError

from taskiq_flow.middlewares.storage import utc_now_iso

_KEYS = msgspec.msgpack.Encoder(order="deterministic")
_VALUES = msgspec.msgpack.Encoder()
_JSON = msgspec.json.Encoder()
_OUR_LABELS = frozenset({"cache", "cache_ttl", "cache_errors", "cache_key"})


class _Value(msgspec.Struct, omit_defaults=True):
    value: Any = None


# -- floor ---------------------------------------------------------------------------------

_FLOOR: contextvars.ContextVar[tuple[str, dict[str, bytes]] | None] = contextvars.ContextVar(
    "floor", default=None
)


class _FloorCache(TaskiqMiddleware):
    def __init__(self) -> None:
        super().__init__()
        self.entries: dict[str, bytes] = {}

    async def pre_send(self, message: TaskiqMessage) -> TaskiqMessage:
        return message  # the shipped CacheMiddleware needs this hook too (kiq(labels=...))

    async def pre_execute(self, message: TaskiqMessage) -> TaskiqMessage:
        digest = hashlib.blake2b(_KEYS.encode(message.args), digest_size=16).hexdigest()
        _FLOOR.set((f"{message.task_name}:{digest}", self.entries))
        return message


def _floor_wrap(task_name: str, func: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        found = _FLOOR.get()
        if found is None:
            return await func(*args, **kwargs)
        key, entries = found
        cached = entries.get(key)
        if cached is not None:
            return msgspec.msgpack.decode(cached)
        value = await func(*args, **kwargs)
        entries[key] = _VALUES.encode(value)
        return value

    return wrapper


class _FloorStorage(TaskiqMiddleware):
    def __init__(self) -> None:
        super().__init__()
        self.records: dict[str, bytes] = {}

    async def post_execute(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> None:
        self.records[f"task:{message.task_id}"] = _VALUES.encode(
            {
                "task_id": message.task_id,
                "pipeline_id": None,
                "task_name": message.task_name,
                "is_err": result.is_err,
                "return_value": _JSON.encode(result.return_value).decode(),
                "error": None,
                "execution_time": result.execution_time,
                "finished_at": time.time(),
            }
        )


# -- lean ----------------------------------------------------------------------------------


class _Decision:
    __slots__ = ("hit", "key", "message", "middleware", "taken", "ttl")

    def __init__(self, middleware: _LeanCache, message: TaskiqMessage, key: str, ttl: int):
        self.middleware = middleware
        self.message = message
        self.key = key
        self.ttl = ttl
        self.taken = False
        self.hit = False


_LEAN: contextvars.ContextVar[_Decision | None] = contextvars.ContextVar("lean", default=None)


class _LeanCache(TaskiqMiddleware):
    def __init__(self, max_entries: int) -> None:
        super().__init__()
        self.entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self.expiries: list[tuple[float, str]] = []
        self.flights: dict[str, object] = {}
        self.max_entries = max_entries
        self.counters = {"hits": 0, "misses": 0, "executions": 0, "bypassed": 0}
        self.known: dict[str, Any] = {}
        self.enabled = True
        self.default_ttl = 3600

    async def pre_send(self, message: TaskiqMessage) -> TaskiqMessage:
        return message

    async def pre_execute(self, message: TaskiqMessage) -> TaskiqMessage:
        labels = message.labels
        task = self.broker.find_task(message.task_name)
        if self.known.get(message.task_name) is not task:
            self.known[message.task_name] = task
        if "cache_hit" in labels:
            del labels["cache_hit"]
        if (labels and not _OUR_LABELS.isdisjoint(labels)) or not self.enabled:
            self.counters["bypassed"] += 1
            _LEAN.set(None)
            return message
        digest = hashlib.blake2b(_KEYS.encode(message.args), digest_size=16).hexdigest()
        _LEAN.set(_Decision(self, message, f"{message.task_name}:{digest}", self.default_ttl))
        return message


def _lean_wrap(task_name: str, func: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        call = _LEAN.get()
        if (
            call is None
            or call.taken
            or call.message.task_name != task_name
            or len(args) != len(call.message.args)
            or not all(map(operator.is_, args, call.message.args))
        ):
            return await func(*args, **kwargs)
        call.taken = True
        cache, key = call.middleware, call.key
        entries = cache.entries
        item = entries.get(key)
        if item is not None and time.monotonic() < item[1]:
            entries.move_to_end(key)
            cache.counters["hits"] += 1
            call.hit = True
            call.message.labels["cache_hit"] = "true"
            return msgspec.msgpack.decode(item[0], type=_Value).value
        cache.counters["misses"] += 1
        cache.flights[key] = None
        try:
            cache.counters["executions"] += 1
            value = await func(*args, **kwargs)
            payload = _VALUES.encode(_Value(value=value))
            if key in entries:
                del entries[key]
            now = time.monotonic()
            expires_at = now + call.ttl
            entries[key] = (payload, expires_at)
            heap = cache.expiries
            heapq.heappush(heap, (expires_at, key))
            if heap[0][0] <= now or len(heap) > 2 * len(entries) + 64:
                pass  # the shipped adapter sweeps here; never due in this benchmark
            if len(entries) > cache.max_entries:
                while len(entries) > cache.max_entries:
                    entries.popitem(last=False)
        finally:
            cache.flights.pop(key, None)
        return value

    return wrapper


class _LeanStorage(TaskiqMiddleware):
    def __init__(self, max_entries: int) -> None:
        super().__init__()
        self.data: OrderedDict[str, tuple[bytes, float, float | None]] = OrderedDict()
        self.max_entries = max_entries
        self.buffer: dict[str, Any] = {}
        self.counters = {"records_written": 0}
        self.enabled = True

    async def post_execute(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> None:
        if not self.enabled:
            return
        if result.is_err and isinstance(result.error, NoResultError):
            return
        pipeline_id = message.labels.get("pipeline_id")
        call = _LEAN.get()
        cached = call is not None and call.hit and call.message.task_id == message.task_id
        if cached:
            result.labels["cache_hit"] = "true"
        elif "cache_hit" in result.labels:
            del result.labels["cache_hit"]
        if cached:
            return
        key = "task:" + message.task_id
        record = {
            "task_id": message.task_id,
            "pipeline_id": pipeline_id,
            "task_name": message.task_name,
            "is_err": bool(result.is_err),
            "return_value": _JSON.encode(result.return_value).decode(),
            "error": None,
            "execution_time": float(result.execution_time),
            "finished_at": utc_now_iso(),  # the shipped helper
        }
        if self.buffer:
            return
        if not key.isascii():
            return
        blob = _VALUES.encode(record)
        data = self.data
        if key in data:
            del data[key]
        data[key] = (blob, time.time(), None)
        if len(data) > self.max_entries:
            while len(data) > self.max_entries:
                data.popitem(last=False)
        self.counters["records_written"] += 1


def install(broker: InMemoryBroker, kind: str, max_entries: int) -> None:
    """Add the ``floor`` or ``lean`` pair to ``broker`` and wrap its registered tasks."""
    if kind == "floor":
        broker.add_middlewares(_FloorCache(), _FloorStorage())
        wrap = _floor_wrap
    else:
        broker.add_middlewares(_LeanCache(max_entries), _LeanStorage(max_entries))
        wrap = _lean_wrap
    for task in broker.get_all_tasks().values():
        task.original_func = wrap(task.task_name, task.original_func)
