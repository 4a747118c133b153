"""The run-level half of ``PipelineMiddleware``: start, advance, watch, cancel, resume.

``PipelineControl`` holds the storage, the counters and the spec cache, and every
operation on a whole run; ``PipelineMiddleware`` (``middleware.py``) adds the taskiq
hooks and the sending. ``watch`` is what keeps a run from getting stuck: it claims
what is ready and re-drives what lapsed (``lease.py``); every worker's sweeper
(``sweeper.py``) calls it on every running run, ``DataflowRun.wait_result`` on the run
it waits for, and ``resume`` re-drives with ``force``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import numbers
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from taskiq import TaskiqMiddleware

from taskiq_flow.middlewares import _metrics
from taskiq_flow.middlewares.errors import MiddlewareConfigError
from taskiq_flow.middlewares.pipeline.errors import (
    PipelineRunNotFoundError,
    PipelineRunStateError,
)
from taskiq_flow.middlewares.pipeline.graph import RunSpec, SpecNode
from taskiq_flow.middlewares.pipeline.lease import MAX_ATTEMPTS_TOTAL, Redrive, find_lapsed
from taskiq_flow.middlewares.pipeline.state import (
    Advance,
    ClaimedStep,
    RunKeys,
    advance,
    failure_record,
    read_run_state,
)
from taskiq_flow.middlewares.pipeline.sweeper import (
    RunSweeper,
    SweepInterval,
    resolve_sweep_interval,
)
from taskiq_flow.middlewares.storage import (
    StorageMiddleware,
    check_number,
    check_storage_arguments,
)
from taskiq_flow.storage import (
    BaseStorageAdapter,
    InMemoryStorageAdapter,
    StorageConnectionError,
    StorageError,
)
from taskiq_flow.storage.kit.ratelog import OutageLog

__all__ = ["PipelineControl", "retrying"]

logger = logging.getLogger("taskiq_flow.pipeline")

# Pauses between attempts when the storage is unreachable (then the error is logged).
_BACKOFF = (0.05, 0.2, 0.8)

_T = TypeVar("_T")

_COUNTERS = (
    "steps_advanced",
    "steps_failed",
    "steps_sent",
    "messages_sent",
    "elements_done",
    "steps_redriven",
    "steps_lost",
    "claims_won",
    "claims_lost",
    "claims_taken",
    "runs_started",
    "runs_done",
    "runs_cancelled",
    "runs_resumed",
    "sweeps",
    "runs_swept",
    "errors",
)


async def retrying(what: str, operation: Callable[[], Awaitable[_T]], outage: OutageLog) -> _T:
    """Run an idempotent storage operation, retrying connection errors a few times.

    Each failed attempt is reported through ``outage`` (rate-limited). A retry that
    succeeds ends the outage (one "recovered" line); a first attempt that succeeds
    proves nothing (``operation`` may not have needed the storage: a cached spec).
    """
    retried = False
    for pause in (*_BACKOFF, None):
        try:
            result = await operation()
        except StorageConnectionError as exc:
            if pause is None:
                raise
            outage.failure("could not %s (%s); retrying in %.2fs", what, exc, pause)
            retried = True
            await asyncio.sleep(pause)
        else:
            if retried and outage.failing:
                outage.success()
            return result
    raise AssertionError  # pragma: no cover - the last attempt returns or raises


def _check_lease(lease_seconds: object, max_attempts: object) -> None:
    check_number("lease_seconds", lease_seconds)
    if not lease_seconds > 0:  # type: ignore[operator]  # NaN too
        raise MiddlewareConfigError(
            name="lease_seconds", expected="> 0 (seconds)", got=repr(lease_seconds)
        )
    if (
        isinstance(max_attempts, bool)
        or not isinstance(max_attempts, numbers.Integral)
        or not 1 <= int(max_attempts) <= MAX_ATTEMPTS_TOTAL
    ):
        raise MiddlewareConfigError(
            name="max_attempts",
            expected=f"a whole number in 1..{MAX_ATTEMPTS_TOTAL}",
            got=repr(max_attempts),
        )


class PipelineControl(TaskiqMiddleware):
    """Run state and run-level operations; see :class:`PipelineMiddleware` for the args."""

    def __init__(
        self,
        storage: BaseStorageAdapter | None = None,
        *,
        ttl_seconds: int | None = None,
        spec_cache_size: int = 1024,
        lease_seconds: float = 60.0,
        max_attempts: int = 5,
        sweep_interval: SweepInterval = "auto",
        metrics: bool = True,
        error_log_interval: float = 60.0,
    ) -> None:
        super().__init__()
        check_storage_arguments(storage, ttl_seconds)
        check_number("spec_cache_size", spec_cache_size)
        check_number("error_log_interval", error_log_interval)
        _check_lease(lease_seconds, max_attempts)
        # Every storage failure of this middleware (saving run state, markers, retries)
        # is reported here: the first at once, then one line per interval, then one
        # "recovered" line; the sweeper keeps its own (see sweeper.py).
        self.outage = OutageLog(
            logger, "pipeline storage", interval=float(error_log_interval), level=logging.WARNING
        )
        self.sweep_interval = resolve_sweep_interval(sweep_interval, float(lease_seconds))
        self._sweeper = RunSweeper(self, self.sweep_interval, log_every=self.outage.interval)
        self.ttl_seconds = ttl_seconds
        self.lease_seconds = float(lease_seconds)
        self.max_attempts = int(max_attempts)
        self._storage = storage
        self._specs: collections.OrderedDict[str, RunSpec] = collections.OrderedDict()
        self._spec_cache_size = max(1, spec_cache_size)
        self._counters = dict.fromkeys(_COUNTERS, 0)
        self._metrics = _metrics.recorder() if metrics else None
        self._beats: dict[str, asyncio.Task[None]] = {}
        self._started: dict[str, float] = {}

    @property
    def storage(self) -> BaseStorageAdapter:
        """The adapter holding run state (resolved on first use, see the class docs)."""
        if self._storage is None:
            self._storage = self._find_storage()
        return self._storage

    def _find_storage(self) -> BaseStorageAdapter:
        broker = getattr(self, "broker", None)
        for middleware in getattr(broker, "middlewares", ()):
            if isinstance(middleware, StorageMiddleware):
                return middleware.storage
        logger.warning(
            "PipelineMiddleware has no storage and the broker has no StorageMiddleware: "
            "run state is kept in this process only (multi-worker runs will not advance).",
        )
        return InMemoryStorageAdapter()

    def get_stats(self) -> dict[str, int]:
        """Counters of this process (a dict of ints).

        ``steps_advanced`` / ``steps_failed``: step results handled; ``steps_sent``:
        claimed nodes sent (``messages_sent`` counts each ``map_over`` element);
        ``steps_redriven``: re-sends of lapsed steps; ``steps_lost``: nodes given up on;
        ``claims_won``: claims this process took; ``claims_lost``: claims it tried and
        lost to a concurrent advancer (a race settled by ``add``); ``claims_taken``:
        nodes a finished step feeds that it found ready but already claimed (a duplicate
        trigger avoided); ``runs_started`` / ``runs_done`` / ``runs_cancelled`` /
        ``runs_resumed``; ``sweeps`` / ``runs_swept``: sweeper passes and the running
        runs they watched; ``errors``: problems logged instead of raised.
        """
        return dict(self._counters)

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the counter ``name`` (see :meth:`get_stats`)."""
        self._counters[name] += n

    def storage_ok(self) -> None:
        """The storage answered: end an outage under way (one "recovered" line)."""
        if self.outage.failing:
            self.outage.success()

    async def _dispatch(self, steps: Iterable[ClaimedStep], *, nested: bool) -> None:
        """Send claimed steps (``PipelineMiddleware`` implements it)."""
        raise NotImplementedError

    # -- whole runs ----------------------------------------------------------------------

    async def load_spec(self, pipeline_id: str) -> RunSpec:
        """The stored spec of a run.

        Raises:
            PipelineRunNotFoundError: no stored run has this id.
        """
        spec = await self._spec(pipeline_id)
        if spec is None:
            raise PipelineRunNotFoundError(pipeline_id=pipeline_id)
        return spec

    async def run_state(self, spec: RunSpec) -> str:
        """``running``, ``done``, ``failed`` or ``cancelled``."""
        keys = RunKeys(spec.pipeline_id)
        return read_run_state(keys, await self.storage.get_many(keys.state_keys()))

    async def start_run(self, spec: RunSpec, inputs: dict[str, Any]) -> bool:
        """Reserve the run's id, store its inputs and send its first nodes.

        Returns ``False`` (and writes nothing) when the id is already taken.

        Raises:
            StorageSerializationError: an input cannot be stored (the id is released).
            StorageError: the storage failed (after bounded retries).
        """
        storage = self.storage
        keys = RunKeys(spec.pipeline_id)
        if not await storage.add(keys.spec, spec, spec.ttl_seconds):
            return False
        items = {keys.data(name): value for name, value in inputs.items()}
        try:
            # With the inputs: the run's entry in the index of running runs (the sweeper).
            await storage.set_many(
                {**items, keys.active: {"at": spec.created_at}}, spec.ttl_seconds
            )
        except StorageError:
            await storage.delete_many([keys.spec, keys.active])
            raise
        self._remember(spec)
        self._counters["runs_started"] += 1
        if self._metrics is not None:
            self._metrics.pipeline_run("started")
        await self._advance(spec, nested=False)
        return True

    async def watch(self, spec: RunSpec) -> None:
        """Claim what is ready, re-drive steps whose lease lapsed, give up on lost ones."""
        await self._advance(spec, nested=False)
        await self._redrive(spec, await find_lapsed(self.storage, spec))

    async def cancel(self, pipeline_id: str) -> bool:
        """Cancel a running run: nothing more is sent; results in flight are still kept.

        Returns:
            Whether this call cancelled it (``False``: it was cancelled already).

        Raises:
            PipelineRunNotFoundError: no such run.
            PipelineRunStateError: the run is already done or failed.
        """
        spec = await self.load_spec(pipeline_id)
        state = await self.run_state(spec)
        if state == "cancelled":
            return False
        if state != "running":
            raise PipelineRunStateError(pipeline_id=pipeline_id, action="cancel", state=state)
        keys = RunKeys(pipeline_id)
        won = await self.storage.add(keys.cancelled, {"at": time.time()}, spec.ttl_seconds)
        self._counters["runs_cancelled"] += int(won)
        if won and self._metrics is not None:
            self._metrics.pipeline_run("cancelled")
        if won:
            await self.unindex(spec)
        return won

    async def resume(self, pipeline_id: str) -> RunSpec:
        """Re-drive a failed, cancelled or stuck run; finished steps are not run again.

        Clears the failure (or the cancel), then sends every ready node that has no
        output and that no worker is running right now: the failed step, steps whose
        worker died, and the nodes the failure had kept from being claimed.

        Raises:
            PipelineRunNotFoundError: no such run.
            PipelineRunStateError: the run is done.
        """
        spec = await self.load_spec(pipeline_id)
        state = await self.run_state(spec)
        if state == "done":
            raise PipelineRunStateError(pipeline_id=pipeline_id, action="resume", state=state)
        keys = RunKeys(pipeline_id)
        await self.storage.delete_many([keys.failed, keys.cancelled])
        await self.storage.set(keys.active, {"at": time.time()}, spec.ttl_seconds)
        self._counters["runs_resumed"] += 1
        if self._metrics is not None:
            self._metrics.pipeline_run("resumed")
        # Lapsed first: the claims advance is about to take are fresh, not lapsed.
        await self._redrive(spec, await find_lapsed(self.storage, spec, force=True))
        await self._advance(spec, nested=False)
        return spec

    async def _redrive(self, spec: RunSpec, found: Redrive) -> None:
        for node, attempts in found.lost:
            self._counters["steps_lost"] += 1
            message = (
                f"sent {attempts} times and never finished (its worker died or its message "
                f"was lost, each time for over {spec.lease_seconds:g}s); giving up"
            )
            await self._fail(spec, node, "PipelineStepLost", message)
        for node, results in found.assembled:
            key = RunKeys(spec.pipeline_id).data(node.output)
            await self.storage.add(key, results, spec.ttl_seconds)
            await self._advance(spec, nested=False, finished=node)
        if found.steps:
            await self._dispatch(found.steps, nested=False)

    # -- advancing -----------------------------------------------------------------------

    async def _advance(
        self,
        spec: RunSpec,
        *,
        nested: bool,
        finished: SpecNode | None = None,
    ) -> None:
        """Run ``advance`` and send what it claimed; retry it on connection errors."""
        for pause in (*_BACKOFF, None):
            error: StorageError | None
            try:
                outcome = await advance(self.storage, spec, finished)
            except StorageConnectionError as exc:
                error = exc
            else:
                if outcome.error is None:
                    self.storage_ok()
                self._count(outcome)
                # Claims won before an error must be sent whatever happens next.
                await self._dispatch(outcome.steps, nested=nested)
                if outcome.marked_done:
                    await self.unindex(spec, final=True)
                error = outcome.error
                if error is None:
                    return
            if pause is None or not isinstance(error, StorageConnectionError):
                raise error
            self.outage.failure(
                "run %s: storage unreachable while advancing (%s); retrying in %.2fs",
                spec.pipeline_id,
                error,
                pause,
            )
            await asyncio.sleep(pause)

    async def _fail(
        self,
        spec: RunSpec,
        node: SpecNode,
        error_type: str,
        message: str,
        element: int | None = None,
    ) -> None:
        self._counters["steps_failed"] += 1
        record = failure_record(node, error_type, message, element)
        key = RunKeys(spec.pipeline_id).failed
        failed_run = await retrying(
            "record a failure", lambda: self.storage.add(key, record, spec.ttl_seconds), self.outage
        )
        if self._metrics is not None:
            self._metrics.pipeline_step("lost" if error_type == "PipelineStepLost" else "failed")
            if failed_run:
                self._metrics.pipeline_run("failed")
        if failed_run:
            await self.unindex(spec)

    async def unindex(self, spec: RunSpec, *, final: bool = False) -> None:
        """Drop a run that ended from the index of running runs (best effort).

        Unless the end is ``final`` (done), the state is read again afterwards: a
        ``resume`` that cleared the failure (or cancel) meanwhile and re-indexed the run
        before this delete gets its entry back. A failed delete only costs the sweeper
        one more look at the run, which drops it then.
        """
        keys = RunKeys(spec.pipeline_id)
        try:
            await self.storage.delete(keys.active)
            if not final and await self.run_state(spec) == "running":
                await self.storage.set(keys.active, {"at": time.time()}, spec.ttl_seconds)
        except StorageError as exc:
            logger.debug("pipeline %s: index entry kept (%s)", spec.pipeline_id, exc)

    def _count(self, outcome: Advance) -> None:
        self._counters["claims_won"] += outcome.claims_won
        self._counters["claims_lost"] += outcome.claims_lost
        self._counters["claims_taken"] += outcome.claims_taken
        if outcome.marked_done:
            self._counters["runs_done"] += 1
            if self._metrics is not None:
                self._metrics.pipeline_run("done")

    def _remember(self, spec: RunSpec) -> None:
        self._specs[spec.pipeline_id] = spec
        self._specs.move_to_end(spec.pipeline_id)
        while len(self._specs) > self._spec_cache_size:
            self._specs.popitem(last=False)

    async def _spec(self, pipeline_id: str) -> RunSpec | None:
        spec = self._specs.get(pipeline_id)
        if spec is None:
            spec = await self.storage.get(RunKeys(pipeline_id).spec, type=RunSpec)
            if spec is None:
                return None
            self._remember(spec)
        return spec
