"""The sweeper: every worker re-drives the running runs, whether or not anyone waits.

A lapsed step is re-sent by whoever *watches* its run (``PipelineControl.watch``:
claim what is ready, re-drive what lapsed). ``DataflowRun.wait_result`` watches the run
it waits for; the sweeper makes every worker process watch every running run, so a
run nobody waits for still finishes after its worker died.

Which runs are running comes from a small index kept next to the run state: the key
``pipeline-active:{pipeline_id}`` is written with the run's inputs at ``kiq`` (and again
by ``resume``) and deleted when the run is marked done, fails or is cancelled. A sweep
iterates that prefix with ``iter_keys`` (bounded memory) and, for each run, reads its
state (dropping the entry of a run that ended or expired) and calls ``watch`` on it,
one run at a time, each bounded by the run's lease. A pass costs a few reads per
*running* run, however many finished runs the storage still keeps.

Several workers sweep the same runs concurrently; that is safe for the reason several
watchers are: a node is claimed with ``add claim:{node}`` and a lapsed one with
``add claim:{node}:{n+1}``, and only the process whose ``add`` succeeds sends it.

A sweep never breaks its worker: an error is logged through an
:class:`~taskiq_flow.storage.kit.ratelog.OutageLog` (the first at once, then at most one
line per interval with the count of those left out, then one "recovered" line after the
first clean pass) and the next sweep tries again. It stops, and is awaited,
before the broker's shutdown handlers and middlewares run (so before the storage is
closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from typing import TYPE_CHECKING, Literal

from taskiq import AsyncBroker, InMemoryBroker, TaskiqEvents, TaskiqState

from taskiq_flow.middlewares.errors import MiddlewareConfigError
from taskiq_flow.middlewares.pipeline.errors import PipelineRunNotFoundError
from taskiq_flow.middlewares.pipeline.state import ACTIVE_PREFIX, RunKeys
from taskiq_flow.middlewares.storage import check_number
from taskiq_flow.storage import StorageConnectionError
from taskiq_flow.storage.kit.ratelog import OutageLog

if TYPE_CHECKING:
    from taskiq_flow.middlewares.pipeline.control import PipelineControl

__all__ = ["RunSweeper", "SweepInterval", "resolve_sweep_interval"]

logger = logging.getLogger("taskiq_flow.pipeline")

SweepInterval = float | Literal["auto"] | None

# At most one warning per this many seconds about failing sweeps (the rest are counted),
# unless the middleware says otherwise (its error_log_interval).
LOG_EVERY = 60.0

_SHUTDOWN_EVENTS = (TaskiqEvents.CLIENT_SHUTDOWN, TaskiqEvents.WORKER_SHUTDOWN)


def resolve_sweep_interval(sweep_interval: object, lease_seconds: float) -> float | None:
    """Seconds between two sweeps (``None``: no sweeper) from ``sweep_interval``.

    Raises:
        MiddlewareConfigError: a negative or non-finite number.
        MiddlewareConfigTypeError: neither a number, ``"auto"`` nor ``None``.
    """
    if sweep_interval is None:
        return None
    if sweep_interval == "auto":
        return lease_seconds / 2
    check_number("sweep_interval", sweep_interval)
    seconds = float(sweep_interval)  # type: ignore[arg-type]  # a number (checked)
    if not (seconds >= 0 and math.isfinite(seconds)):  # NaN too
        raise MiddlewareConfigError(
            name="sweep_interval",
            expected='seconds >= 0 (0 or None: no sweeper), or "auto"',
            got=repr(sweep_interval),
        )
    return seconds or None


class RunSweeper:
    """Watches every running run of the storage every ``interval`` seconds (see above)."""

    def __init__(
        self, control: PipelineControl, interval: float | None, *, log_every: float = LOG_EVERY
    ) -> None:
        self.control = control
        self.interval = interval
        self._task: asyncio.Task[None] | None = None
        self._broker: AsyncBroker | None = None
        self.outage = OutageLog(
            logger, "pipeline sweeper", interval=log_every, level=logging.WARNING
        )

    @property
    def running(self) -> bool:
        """Whether the sweeper's background task is alive."""
        return self._task is not None and not self._task.done()

    def start(self, broker: AsyncBroker) -> None:
        """Start sweeping if ``broker`` is a worker's (or an ``InMemoryBroker``).

        Producers (``is_worker_process`` false) do not sweep; an ``InMemoryBroker`` is
        its own worker. Nothing happens when the interval is ``None`` or it runs already.
        """
        if self.interval is None or self.running:
            return
        if not (broker.is_worker_process or isinstance(broker, InMemoryBroker)):
            return
        self._broker = broker
        self._task = asyncio.create_task(self._loop(), name="taskiq-flow pipeline sweeper")
        # First of the shutdown handlers: stopped before anything closes the storage.
        for event in _SHUTDOWN_EVENTS:
            broker.event_handlers[event].insert(0, self._on_shutdown)

    async def stop(self) -> None:
        """Stop sweeping and wait until the sweep in progress, if any, is cancelled."""
        await self._cancel()
        broker, self._broker = self._broker, None
        if broker is not None:
            for event in _SHUTDOWN_EVENTS:
                with contextlib.suppress(ValueError):
                    broker.event_handlers[event].remove(self._on_shutdown)

    async def _on_shutdown(self, _state: TaskiqState) -> None:
        # The handler stays registered while the broker iterates its handlers (removing
        # it there would skip the next one); ``stop`` from the middleware removes it.
        await self._cancel()

    async def _cancel(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
            if not task.cancelled() and task.exception() is not None:  # pragma: no cover
                logger.error("pipeline sweeper ended", exc_info=task.exception())

    async def _loop(self) -> None:
        assert self.interval is not None  # noqa: S101 - started only with an interval
        while True:
            # Jitter, so that workers started together do not sweep in lockstep.
            await asyncio.sleep(self.interval * random.uniform(0.75, 1.0))  # noqa: S311
            failures = self.outage.failures
            try:
                await self.sweep()
            except Exception as exc:  # never break the worker: the next sweep tries again
                self._report("sweep failed", exc)
            else:
                if self.outage.failing and self.outage.failures == failures:
                    self.outage.success()  # a clean pass: the trouble is over

    async def sweep(self) -> int:
        """One pass over the running runs; how many were watched.

        Raises:
            StorageError: the index could not be read, or the storage is unreachable
                (the pass stops there). Other errors of one run are logged and skipped.
        """
        control = self.control
        keys = control.storage.iter_keys(ACTIVE_PREFIX + "*")
        watched = 0
        try:
            async for key in keys:
                pipeline_id = key[len(ACTIVE_PREFIX) :]
                try:
                    watched += await self._sweep_run(pipeline_id)
                except StorageConnectionError:
                    raise
                except TimeoutError as exc:
                    self._report(f"watching run {pipeline_id} took over its lease", exc)
                except Exception as exc:
                    self._report(f"could not watch run {pipeline_id}", exc)
        finally:
            close = getattr(keys, "aclose", None)
            if close is not None:
                await close()
        control.count("sweeps")
        control.count("runs_swept", watched)
        return watched

    async def _sweep_run(self, pipeline_id: str) -> bool:
        control = self.control
        try:
            spec = await control.load_spec(pipeline_id)
        except PipelineRunNotFoundError:  # expired: its index entry outlived it
            await control.storage.delete(RunKeys(pipeline_id).active)
            return False
        if await control.run_state(spec) != "running":  # ended; the entry was not dropped
            await control.unindex(spec)
            return False
        # A send that hangs must not hold up the other runs: cut it after a lease (the
        # claim it won lapses and is re-driven like any other).
        await asyncio.wait_for(control.watch(spec), spec.lease_seconds)
        return True

    def _report(self, what: str, exc: BaseException) -> None:
        self.control.count("errors")
        self.outage.failure(
            "%s (%s: %s); next sweep in %.3gs",
            what,
            type(exc).__qualname__,
            exc,
            self.interval,
        )
