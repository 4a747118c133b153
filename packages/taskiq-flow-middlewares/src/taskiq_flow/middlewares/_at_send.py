"""Answer at send: a call already cached, or in flight elsewhere, never reaches the broker.

taskiq gives a middleware no way to cancel a send: ``AsyncKicker.kiq`` runs every
``pre_send``, then ``broker.kick(formatter.dumps(message))``, every ``post_send``, and
returns ``AsyncTaskiqTask(task_id, broker.result_backend)``, whose ``wait_result`` polls
that backend. So :class:`SendGate` does two things:

- ``pre_send`` (``before_send``) computes the key the worker would use (the
  middleware's own ``_decide`` on the wire form of the arguments) and asks the cache
  once (:meth:`~taskiq_flow.cache.BaseCacheAdapter.lookup` with ``claim=True``). What to
  do is left in a context variable for the ``kick`` that follows in the same ``kiq``.
- On ``set_broker`` the middleware replaces its broker's ``kick`` with a gate (an
  instance attribute wrapping the original bound method). The gate sends what it was
  not told to hold; for an answered call it sends nothing and instead runs, in this
  process, what a worker would after the function: every other middleware's
  ``post_execute``, ``result_backend.set_result(task_id, result)``, every
  ``post_save`` (so StorageMiddleware records the hit and PipelineMiddleware advances a
  run). How the returned ``AsyncTaskiqTask`` then finds the result, whatever the
  broker's result backend: see :mod:`taskiq_flow.middlewares._answers`.

Outcomes of the lookup:

- fresh hit: answered before ``kiq`` returns (``wait_result`` finds it on its first check);
- stale (stale-while-revalidate): answered with the stale value; the producer that won
  the entry's lease sends one refresh under a new task id (the lease passed along);
- in flight (another process holds the lease): held; one watcher per key in this
  process waits for the holder's release (the Redis cache's push wake-up, bounded by
  its poll interval) and answers every held call from the committed value; if the lease
  lapses instead (holder died), the watcher claims it and sends one held message (so
  across producers one message per lapse), the rest keep waiting on that one;
- miss: this producer took the lease; the message carries it (label ``cache_lease``) and
  the worker adopts it, so identical calls sent meanwhile anywhere join instead of queueing;
- anything unusual (cache down, arguments it cannot encode, a corrupt entry): the
  message is sent as if the gate were not there.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from taskiq import TaskiqMessage
from taskiq.abc.broker import AsyncBroker
from taskiq.labels import LabelType
from taskiq.message import BrokerMessage

from taskiq_flow.middlewares import _codec, _labels
from taskiq_flow.middlewares._answers import Answers
from taskiq_flow.middlewares._wire import probe_message
from taskiq_flow.middlewares._wrapping import CacheCall

if TYPE_CHECKING:
    from taskiq_flow.middlewares.cache import CacheMiddleware

__all__ = ["SendGate"]

logger = logging.getLogger("taskiq_flow.middlewares")

_Kick = Callable[[BrokerMessage], Awaitable[Any]]
_GATE_MARK = "__taskiq_flow_send_gate__"
_RETRY_AFTER = 5.0
"""Seconds the gate stops asking a cache that failed at send (kiq must stay fast)."""
_REFRESHED_KEPT = 10_000
"""Keys whose one in-process refresh window is remembered at most (expired ones dropped)."""
_PIPELINE_LABELS = ("pipeline_id", "pipeline_node")


class _Held:
    """What ``pre_send`` decided for one message; picked up by the gated ``kick``."""

    __slots__ = ("action", "cached", "call", "holder", "task_id", "token")

    def __init__(  # noqa: PLR0917 - one record, built in one place
        self,
        task_id: str,
        action: str,
        call: CacheCall,
        cached: _codec.CachedValue | None = None,
        token: str | None = None,
        holder: str | None = None,
    ) -> None:
        self.task_id = task_id
        self.action = action
        self.call = call
        self.cached = cached
        self.token = token
        self.holder = holder


_ANSWER, _STALE, _JOIN, _CLAIMED = "answer", "stale", "join", "claimed"

# Set by pre_send, read by the kick of the same kiq (same task, same context).
_HELD: contextvars.ContextVar[_Held | None] = contextvars.ContextVar(
    "taskiq_flow_held_send", default=None
)


class _Watch:
    """The held calls of one key in this process, and the one task watching the key."""

    __slots__ = ("held", "holder", "task")

    def __init__(self, holder: str) -> None:
        self.holder = holder
        self.held: list[tuple[TaskiqMessage, BrokerMessage, CacheCall, _Kick]] = []
        self.task: asyncio.Task[None] | None = None


class SendGate:
    """CacheMiddleware's producer side (see the module docstring)."""

    def __init__(self, middleware: CacheMiddleware) -> None:
        self._mw = middleware
        self._watches: dict[str, _Watch] = {}
        self._down_until = 0.0
        self._refreshed: dict[str, float] = {}
        self._answers = Answers(middleware)

    # -- installation ----------------------------------------------------------------------

    def install(self, broker: AsyncBroker) -> None:
        """Put the gate in front of ``broker.kick`` (once per broker)."""
        current = broker.kick
        if getattr(current, _GATE_MARK, None) is self:
            return

        async def kick(message: BrokerMessage) -> None:
            held = _HELD.get()
            if held is None or held.task_id != message.task_id:
                await current(message)  # nothing decided for it: the usual send
                return
            await self._kick_held(held, message, current)

        setattr(kick, _GATE_MARK, self)
        # An instance attribute: kiq's ``self.broker.kick(...)`` finds it first.
        setattr(broker, "kick", kick)  # noqa: B010 - assigning a method on an instance

    # -- pre_send --------------------------------------------------------------------------

    async def before_send(self, message: TaskiqMessage) -> None:
        """Decide what the coming ``kick`` does with ``message``; never raises."""
        if _HELD.get() is not None:
            _HELD.set(None)
        if not self._may_answer(message):
            return
        if self._down_until and time.monotonic() < self._down_until:
            return
        mw = self._mw
        task = mw.broker.find_task(message.task_name)
        if task is None:
            return
        known = mw._known.get(message.task_name)
        if known is None or known[0] is not task or task.original_func is not known[1]:
            known = mw._learn(task)
        try:
            probe = probe_message(message, mw.broker.formatter)
        except Exception:  # kiq's own dumps reports what is wrong with this message
            return
        call = mw._decide(probe, known[3], count=False)
        if call is None:
            return
        try:
            found = await mw.cache.lookup(call.key, claim=True)
        except Exception:
            self._cache_failed(call.key)
            return
        self._plan(message, call, found)

    def _may_answer(self, message: TaskiqMessage) -> bool:
        """Whether the gate may answer ``message`` (not ``cache_at_send="false"``, no refresh).

        A refresh (``cache_refresh="true"``, ``TASKIQ_FLOW_CACHE_REFRESH``) must run: it
        is never answered, joined or claimed here.
        """
        if self._mw.refresh_all:
            return False
        labels = message.labels
        if not labels:
            return True
        if _labels.LABEL_CACHE_AT_SEND in labels and not _labels.parse_bool(
            message, _labels.LABEL_CACHE_AT_SEND, default=True
        ):
            return False
        return _labels.LABEL_CACHE_REFRESH not in labels or not _labels.parse_bool(
            message, _labels.LABEL_CACHE_REFRESH, default=False
        )

    def _plan(self, message: TaskiqMessage, call: CacheCall, found: Any) -> None:
        mw = self._mw
        if found.state in {"hit", "stale"}:
            try:
                cached = _codec.decode_payload(found.value)
            except ValueError:
                logger.warning("Corrupt cache entry under %s; sending the task.", call.key)
                if found.token is not None:
                    mw.cache.release_lease_soon(call.key, found.token)
                return
            action = _ANSWER if found.state == "hit" else _STALE
            _HELD.set(_Held(message.task_id, action, call, cached, token=found.token))
        elif found.state == "in_flight":
            mw._counters["joined_at_send"] += 1
            _HELD.set(_Held(message.task_id, _JOIN, call, holder=found.holder))
        elif found.token is not None:
            # Ours now: the worker adopts it; identical calls elsewhere join this one.
            mw._counters["claimed_at_send"] += 1
            _set_label(message, _labels.LABEL_CACHE_LEASE, found.token)
            _HELD.set(_Held(message.task_id, _CLAIMED, call, token=found.token))

    def _cache_failed(self, key: str) -> None:
        self._mw._counters["send_lookup_failures"] += 1
        self._down_until = time.monotonic() + _RETRY_AFTER
        logger.warning(
            "Cache unavailable at send (key %s): sending tasks normally for %.0f s.",
            key,
            _RETRY_AFTER,
            exc_info=True,
        )

    # -- kick ------------------------------------------------------------------------------

    async def _kick_held(self, held: _Held, wire: BrokerMessage, send: _Kick) -> None:
        """The gated ``broker.kick``: carry out what ``pre_send`` decided for ``wire``."""
        _HELD.set(None)
        if held.action == _CLAIMED:
            try:
                await send(wire)
            except BaseException:
                assert held.token is not None  # noqa: S101 - set with the action
                await self.release_quietly(held.call.key, held.token)
                raise
            return
        try:
            message = self._worker_view(wire)
        except Exception:
            await send(wire)
            return
        if held.action == _JOIN:
            self._join(held.call.key, held.holder or "", (message, wire, held.call, send))
            return
        assert held.cached is not None  # noqa: S101 - set with the action
        if not await self._answers.answer(message, held.call, held.cached):
            await send(wire)
        else:
            self._answered_at_send(message.task_name, held.call.key)
        if held.action == _STALE:
            await self._refresh(held, wire, send)

    def _worker_view(self, wire: BrokerMessage) -> TaskiqMessage:
        message = self._mw.broker.formatter.loads(wire.message)
        message.parse_labels()
        return message

    def _relabelled(self, wire: BrokerMessage, token: str, *, refresh: bool) -> BrokerMessage:
        formatter = self._mw.broker.formatter
        message = formatter.loads(wire.message)
        _set_label(message, _labels.LABEL_CACHE_LEASE, token)
        if refresh:
            # Its own id: the answered task's result stays, the refresh writes another;
            # and no pipeline label, so it cannot advance a run a second time.
            message.task_id = self._mw.broker.id_generator()
            for name in _PIPELINE_LABELS:
                message.labels.pop(name, None)
        return formatter.dumps(message)

    async def _refresh(self, held: _Held, wire: BrokerMessage, send: _Kick) -> None:
        key = held.call.key
        if held.token is None:
            if self._mw.cache.shares_leases:
                return  # another producer won the refresh
            # No cross-process lease (one process): at most one refresh per key at once.
            now = time.monotonic()
            if self._refreshed.get(key, 0.0) > now:
                return
            if len(self._refreshed) >= _REFRESHED_KEPT:
                # Bounded: forget the refreshes whose window is over.
                self._refreshed = {k: t for k, t in self._refreshed.items() if t > now}
            self._refreshed[key] = now + _RETRY_AFTER
        try:
            await send(self._relabelled(wire, held.token or "", refresh=True))
            self._mw._counters["refreshes_sent"] += 1
        except Exception:
            logger.warning("Could not send the refresh of %s.", key, exc_info=True)
            if held.token is not None:
                await self.release_quietly(key, held.token)

    # -- joining a call in flight ----------------------------------------------------------

    def _join(
        self, key: str, holder: str, item: tuple[TaskiqMessage, BrokerMessage, CacheCall, _Kick]
    ) -> None:
        watch = self._watches.get(key)
        if watch is None:
            watch = self._watches[key] = _Watch(holder)
            watch.task = asyncio.create_task(self._watch(key, watch))
        watch.held.append(item)

    async def _watch(self, key: str, watch: _Watch) -> None:
        cache = self._mw.cache
        try:
            while watch.held:
                await cache.wait_for_release(key, watch.holder, 60.0)
                found = await cache.lookup(key, claim=True)
                if found.state in {"hit", "stale"}:
                    if found.token is not None:
                        await self.release_quietly(key, found.token)
                    await self._answer_held(key, watch, found.value)
                    break
                if found.state == "in_flight":
                    watch.holder = found.holder or ""
                    continue
                if found.token is None:
                    break  # no lease to claim (in-process cache, corrupt entry): send all
                # The holder is gone (lapsed) or failed: this process sends one of the
                # held calls under its new lease; the others wait for that one.
                message, wire, _, send = watch.held.pop(0)
                try:
                    await send(self._relabelled(wire, found.token, refresh=False))
                except Exception:
                    await self.release_quietly(key, found.token)
                    watch.held.insert(0, (message, wire, _, send))
                    raise
                self._mw._counters["sent_after_join"] += 1
                watch.holder = found.token
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.warning(
                "Waiting at send for %s failed; sending the held tasks.", key, exc_info=True
            )
        finally:
            if self._watches.get(key) is watch:
                del self._watches[key]
        await self._send_held(watch)

    async def _answer_held(self, key: str, watch: _Watch, payload: Any) -> None:
        try:
            cached = _codec.decode_payload(payload)
        except ValueError:
            logger.warning("Corrupt cache entry under %s; sending the held tasks.", key)
            return
        while watch.held:
            message, wire, call, send = watch.held.pop(0)
            if not await self._answers.answer(message, call, cached):
                await _send_quietly(send, wire)
            else:
                self._answered_at_send(message.task_name, call.key)

    def _answered_at_send(self, task_name: str, key: str) -> None:
        """Count a call answered at ``kiq()``: a hit, in Prometheus and the cluster stats."""
        mw = self._mw
        if mw._metrics is not None:
            mw._metrics.cache_request(task_name, "at_send", key)
        if mw._shared is not None:
            mw._shared.add(task_name, "hits")

    async def _send_held(self, watch: _Watch) -> None:
        while watch.held:
            _, wire, _, send = watch.held.pop(0)
            await _send_quietly(send, wire)

    # -- lifecycle -------------------------------------------------------------------------

    async def release_quietly(self, key: str, token: str) -> None:
        """Give back a lease taken at send; a failure only logs (the lease will lapse)."""
        try:
            await self._mw.cache.release_lease(key, token)
        except Exception as exc:
            logger.warning("Could not release the cache lease on %s (it will lapse): %s", key, exc)

    async def close(self) -> None:
        """Finish the backend writes; stop watching; send every call still held."""
        await self._answers.close()
        watches = list(self._watches.values())
        self._watches.clear()
        for watch in watches:
            if watch.task is not None and not watch.task.done():
                watch.task.cancel()
                await asyncio.gather(watch.task, return_exceptions=True)
            await self._send_held(watch)


def _set_label(message: TaskiqMessage, name: str, value: str) -> None:
    message.labels[name] = value
    if message.labels_types is None:
        message.labels_types = {}
    message.labels_types[name] = LabelType.STR.value


async def _send_quietly(send: _Kick, wire: BrokerMessage) -> None:
    try:
        await send(wire)
    except Exception:
        logger.exception("Could not send held task %s.", wire.task_id)
