"""The cache dance for one claimed call: CacheMiddleware's worker side.

The task's wrapper (see :mod:`taskiq_flow.middlewares._wrapping`) hands the call that
``pre_execute`` decided for to :meth:`Resolver.resolve`, which asks the cache adapter's
``get_or_create`` (or ``refresh``) and runs the real function (once across workers) on a
miss.

The middleware owns cache outages, not the lock: the adapter is asked with
``fallback_on_error=False``, so a backend failure (the read, the lease or the commit)
comes back here. The call then runs uncached (or, when only the write of its own result
failed, returns that result), counts once in ``cache_failures`` and is reported through
one :class:`~taskiq_flow.storage.kit.ratelog.OutageLog` per middleware: the first failure
at once, then one line per interval with a count, then one "recovered" line on the first
call the cache answers again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from taskiq_flow.cache import (
    CacheBackendError,
    CacheConnectionError,
    CacheError,
    CacheLockTimeout,
    CacheValueError,
)
from taskiq_flow.cache.stats import LOCK_WAIT
from taskiq_flow.middlewares import _codec, _invalidate, _labels, _metrics, _policy
from taskiq_flow.middlewares._wrapping import MISSING, CacheCall
from taskiq_flow.storage.kit.ratelog import OutageLog

if TYPE_CHECKING:
    from taskiq_flow.middlewares.cache import CacheMiddleware

__all__ = ["Resolver"]

logger = logging.getLogger("taskiq_flow.middlewares")

# What an unreachable or failing cache backend raises (the lock's own choice, too).
_OUTAGE = (CacheConnectionError, CacheBackendError)


class _Uncacheable(Exception):
    """The creator produced a value msgspec cannot encode: return it, cache nothing."""

    def __init__(self, value: Any, reason: str) -> None:
        super().__init__(reason)
        self.value = value


class _Declined(_Uncacheable):
    """``cache_if`` said no to the value: return it, cache nothing, warn nobody."""


class Resolver:
    """CacheMiddleware's worker side (see the module docstring).

    Args:
        middleware: the middleware whose cache, options and counters it uses.
        error_log_interval: at most one cache-outage line per this many seconds.

    Attributes:
        outage: the rate-limited log of cache backend failures.
        failing: whether ``outage`` saw a failure since the cache last answered (a plain
            attribute: the hit path checks it on every call).
    """

    __slots__ = ("_mw", "failing", "outage")

    def __init__(self, middleware: CacheMiddleware, error_log_interval: float) -> None:
        self._mw = middleware
        self.outage = OutageLog(
            logger, "cache backend", interval=error_log_interval, level=logging.WARNING
        )
        self.failing = False

    async def resolve(  # noqa: PLR0912, PLR0915, PLR0917 - the whole cache dance, one frame
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
        mw = self._mw
        counters = mw._counters
        # What this call's own execution produced, if the cache elected it as creator:
        # the caller gets the original object (or exception), not a decoded copy.
        produced: Any = MISSING
        failed: Exception | None = None

        async def creator() -> Any:
            nonlocal produced, failed
            counters["executions"] += 1
            if mw._metrics is not None:
                mw._metrics.cache_request(call.message.task_name, "miss", call.key)
            if mw._shared is not None:
                mw._shared.add(call.message.task_name, "misses")
            try:
                value = await (func(*args, **kwargs) if run is None else run())
            except Exception as exc:
                failed = exc
                if mw._metrics is not None:
                    mw._metrics.cache_creator_error(call.message.task_name)
                if not call.cache_errors:
                    raise
                return _policy.error_entry(call.message, exc, mw.errors_ttl)
            produced = value
            if mw.cache_if is not None and not _policy.keeps(mw.cache_if, value, call.key):
                raise _Declined(value, "cache_if")
            try:
                return _codec.encode_value_payload(value)
            except _codec.Unencodable as exc:
                raise _Uncacheable(value, str(exc)) from exc

        if _labels.LABEL_CACHE_TAGS in call.message.labels:  # recorded on a miss only
            creator = _invalidate.tagging(mw.cache, call, creator)
        while True:
            try:
                # stale_ttl left out: None means the adapter's own default_stale_ttl.
                # fallback_on_error=False: an outage comes back here (see the module doc).
                payload = await (
                    mw.cache.refresh(call.key, creator, call.ttl, fallback_on_error=False)
                    if refresh
                    else mw._get_or_create(
                        call.key,
                        creator,
                        call.ttl,
                        fallback_on_error=False,
                        lease_token=lease_token,
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
                counters["lock_timeouts"] += 1
                if mw._metrics is not None:
                    mw._metrics.cache_lock_timeout(call.message.task_name, call.key)
                if mw._shared is not None:
                    mw._shared.add(call.message.task_name, "lock_timeouts")
                logger.info(
                    "Task %s still waits for another worker computing %s.",
                    call.message.task_name,
                    call.key,
                )
            except _Declined as exc:
                counters["declined_results"] += 1
                self._answered()
                return exc.value
            except _Uncacheable as exc:
                mw._count_and_warn_once(
                    "uncacheable_results",
                    call.message.task_name,
                    "Task %s: its result cannot be encoded, so it is not cached (%s).",
                    exc,
                )
                self._answered()
                # A waiter in this process gets the creator's very object.
                return exc.value
            except CacheError as exc:
                if exc is failed:
                    raise  # the task's own CacheError, not the cache's: the task's error
                ran = failed is not None or produced is not MISSING
                if not ran and isinstance(exc, CacheValueError):
                    # The adapter refused the key or TTL before running anything: a
                    # property of this call, not an outage. Once per task, no traceback.
                    mw._count_and_warn_once(
                        "uncacheable_keys",
                        call.message.task_name,
                        "Task %s runs uncached: the cache refused its key or TTL (%s).",
                        exc,
                    )
                else:
                    self._cache_failed(call, exc, ran=ran)
                    if ran:
                        # Our own run finished; only the cache write failed.
                        if failed is not None:
                            raise failed from None
                        return produced
                counters["executions"] += 1
                return await (func(*args, **kwargs) if run is None else run())
        # Set only by a call that waited for another's run; a call whose own creator ran
        # did not wait (a wait then was the task body's own cache use).
        if LOCK_WAIT.get(0.0) and produced is MISSING and failed is None:
            _metrics.count_lock_wait(mw._metrics, mw._shared, call.message.task_name, call.key)
        if self.failing:
            self._answered()
        if failed is not None:
            raise failed
        if produced is not MISSING:
            return produced
        if lease_token is not None:
            # Answered without our creator (another run landed first): the lease the
            # producer handed over must not sit until it lapses.
            await mw._gate.release_quietly(call.key, lease_token)
        return await self._hit(call, payload, func, args, kwargs, run=run)

    def _cache_failed(self, call: CacheCall, exc: CacheError, *, ran: bool) -> None:
        """Count one call the cache failed (it runs, or ran, uncached); log at a rate."""
        mw = self._mw
        mw._counters["cache_failures"] += 1
        if mw._metrics is not None:
            mw._metrics.cache_request(call.message.task_name, "error")
        if mw._shared is not None:
            mw._shared.add(call.message.task_name, "uncached")
        if isinstance(exc, _OUTAGE):
            self.failing = True
            self.outage.failure(
                "%s (task %s %s)",
                exc,
                call.message.task_name,
                "ran, its result not cached" if ran else "runs uncached",
            )
        elif ran:
            logger.warning("Could not cache the result of %s.", call.key, exc_info=True)
        else:
            logger.warning(
                "Cache unavailable for task %s; running it uncached.",
                call.message.task_name,
                exc_info=True,
            )

    def _answered(self) -> None:
        """The cache answered a call: end an outage under way (one "recovered" line)."""
        if self.failing:
            self.failing = False
            self.outage.success()

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
        mw = self._mw
        try:
            cached = _codec.decode_payload(payload)
        except ValueError:
            logger.warning("Corrupt cache entry under %s; running the task.", call.key)
            mw._counters["executions"] += 1
            return await (func(*args, **kwargs) if run is None else run())
        mw._counters["hits"] += 1
        if mw._metrics is not None:
            mw._metrics.cache_request(call.message.task_name, "hit", call.key)
        if mw._shared is not None:
            mw._shared.add(call.message.task_name, "hits")
        call.hit = True
        call.message.labels[_labels.LABEL_CACHE_HIT] = "true"
        if cached.error is not None:
            raise _codec.rebuild_exception(cached.error)
        return cached.value
