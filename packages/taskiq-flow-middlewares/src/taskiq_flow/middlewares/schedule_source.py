"""``StorageScheduleSource``: taskiq's schedule source over any taskiq-flow storage adapter.

Each schedule is one key, ``{prefix}{schedule_id}`` (``schedule:`` by default), holding
``ScheduledTask.model_dump(mode="json")``: a plain dict, stored without TTL, readable by
any tool that speaks the storage adapter (no pickle). ``get_schedules`` walks the prefix
with ``iter_keys`` and reads the values in batches with ``get_many``, so memory stays
bounded by the schedules themselves.

What the scheduler keeps doing when something is wrong:

* A stored value that is not a schedule (undecodable bytes, another shape) is skipped
  with a warning naming its key; every other schedule still runs.
* A storage outage in ``get_schedules``: taskiq's scheduler loop catches any exception
  of a source, logs it and uses *no* schedules of that source until the next update,
  forgetting their last-run times (an interval schedule then fires at once when it comes
  back, a cron one may fire twice in a minute). So this source does not raise then: it
  logs a warning and returns the schedules of its last successful read. Only when it has
  never read successfully does it raise (the loop logs it and retries at its next update).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError
from taskiq import ScheduledTask, ScheduleSource
from taskiq.exceptions import ScheduledTaskCancelledError

from taskiq_flow.middlewares.errors import MiddlewareConfigError, MiddlewareConfigTypeError
from taskiq_flow.middlewares.storage import check_storage_arguments
from taskiq_flow.storage import (
    BaseStorageAdapter,
    StorageCorruptError,
    StorageError,
    StorageSerializationError,
)
from taskiq_flow.storage.glob import escape_glob

__all__ = ["StorageScheduleSource"]

logger = logging.getLogger("taskiq_flow.middlewares")

_BATCH = 100
"""Keys read per ``get_many`` round trip."""


class StorageScheduleSource(ScheduleSource):
    """A taskiq schedule source keeping schedules in a taskiq-flow storage adapter.

    ``TaskiqScheduler(broker, sources=[StorageScheduleSource(storage)])`` for
    ``taskiq scheduler``; ``task.kicker().schedule_by_cron(source, ...)``,
    ``schedule_by_interval`` and ``schedule_by_time`` add schedules from any process
    sharing the store, ``delete_schedule`` (or ``CreatedSchedule.unschedule()``) removes
    them. A one-off ``time`` schedule is deleted once it has been sent.

    Args:
        storage: any :class:`~taskiq_flow.storage.BaseStorageAdapter` (memory, Redis,
            SQLite); may be shared with ``StorageResultBackend``/``StorageMiddleware``.
            Closed by ``shutdown()`` (every adapter reconnects if used again).
        prefix: the key prefix of schedules: a schedule lives at ``{prefix}{schedule_id}``.
            Keep it apart from other keys of the store: everything under it is read as
            a schedule.

    Raises:
        MiddlewareConfigError: ``storage`` is ``None`` or ``prefix`` is empty.
        MiddlewareConfigTypeError: ``storage`` is not a ``BaseStorageAdapter`` or
            ``prefix`` is not a ``str``.
    """

    def __init__(self, storage: BaseStorageAdapter, *, prefix: str = "schedule:") -> None:
        if storage is None:
            raise MiddlewareConfigError(name="storage", expected="a BaseStorageAdapter", got="None")
        check_storage_arguments(storage, None)
        _check_prefix(prefix)
        self.storage = storage
        self.prefix = prefix
        # The schedules of the last successful read, served while the storage is down.
        self._last_read: list[ScheduledTask] | None = None
        # One-off schedules sent whose key could not be deleted yet (storage outage).
        self._sent_once: set[str] = set()
        # Invalid entries already warned about (key -> reason): warned once, not per read.
        self._reported: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"StorageScheduleSource({self.storage!r}, prefix={self.prefix!r})"

    def schedule_key(self, schedule_id: str) -> str:
        """The storage key of a schedule: ``{prefix}{schedule_id}``."""
        return f"{self.prefix}{schedule_id}"

    # -- taskiq's ScheduleSource ------------------------------------------------------------

    async def shutdown(self) -> None:
        """Close the storage adapter (it reconnects if used again)."""
        try:
            await self.storage.close()
        except StorageError:
            logger.warning("StorageScheduleSource: closing the storage failed.", exc_info=True)

    async def add_schedule(self, schedule: ScheduledTask) -> None:
        """Store ``schedule`` under ``{prefix}{schedule_id}``, replacing one with that id.

        Raises:
            StorageError: the storage refused the write (unreachable, ...).
        """
        await self.storage.set(
            self.schedule_key(schedule.schedule_id), schedule.model_dump(mode="json")
        )
        # A new schedule under the id of a sent one-off whose deletion is pending.
        self._sent_once.discard(schedule.schedule_id)

    async def delete_schedule(self, schedule_id: str) -> None:
        """Remove the schedule ``schedule_id`` (nothing happens if there is none).

        Raises:
            StorageError: the storage is unreachable; the schedule is still there.
        """
        await self.storage.delete(self.schedule_key(schedule_id))
        self._sent_once.discard(schedule_id)
        self._forget(schedule_id)

    async def get_schedules(self) -> list[ScheduledTask]:
        """Every valid schedule under the prefix; invalid ones are skipped with a warning.

        While the storage is unreachable this returns the schedules of the last
        successful read (with a warning), so the scheduler keeps firing them.

        Raises:
            StorageError: the storage is unreachable and no read has succeeded yet.
        """
        try:
            if self._sent_once:
                await self.storage.delete_many([self.schedule_key(i) for i in self._sent_once])
                self._sent_once.clear()
            schedules = await self._read_all()
        except StorageError as exc:
            if self._last_read is None:
                raise
            logger.warning(
                "StorageScheduleSource: cannot read schedules (%s: %s); "
                "keeping the %d read last time.",
                type(exc).__name__,
                exc,
                len(self._last_read),
            )
            return list(self._last_read)
        self._last_read = schedules
        return list(schedules)

    async def pre_send(self, task: ScheduledTask) -> None:
        """Cancel the send of a schedule deleted since the scheduler last read them.

        Raises:
            ScheduledTaskCancelledError: the schedule's key is gone. While the storage
                is unreachable nothing is cancelled.
        """
        try:
            present = await self.storage.exists(self.schedule_key(task.schedule_id))
        except StorageError:
            return
        if not present:
            self._forget(task.schedule_id)
            raise ScheduledTaskCancelledError

    async def post_send(self, task: ScheduledTask) -> None:
        """Delete a one-off (``time``) schedule once it has been sent.

        If the storage is unreachable the deletion is retried at the next
        ``get_schedules``; meanwhile the schedule is not served again.
        """
        if task.time is None:
            return
        try:
            await self.storage.delete(self.schedule_key(task.schedule_id))
        except StorageError as exc:
            logger.warning(
                "StorageScheduleSource: cannot delete the sent one-off schedule %s (%s); "
                "retrying at the next read.",
                self.schedule_key(task.schedule_id),
                exc,
            )
            self._sent_once.add(task.schedule_id)
        self._forget(task.schedule_id)

    # -- reading ---------------------------------------------------------------------------

    async def _read_all(self) -> list[ScheduledTask]:
        schedules: list[ScheduledTask] = []
        invalid: dict[str, str] = {}
        seen: set[str] = set()  # Redis SCAN may yield a key twice
        batch: list[str] = []
        async for key in self.storage.iter_keys(escape_glob(self.prefix) + "*"):
            if key in seen:
                continue
            seen.add(key)
            batch.append(key)
            if len(batch) >= _BATCH:
                schedules.extend(await self._read_batch(batch, invalid))
                batch = []
        if batch:
            schedules.extend(await self._read_batch(batch, invalid))
        self._reported = invalid
        return schedules

    async def _read_batch(self, keys: list[str], invalid: dict[str, str]) -> list[ScheduledTask]:
        try:
            values = await self.storage.get_many(keys)
        except (StorageCorruptError, StorageSerializationError):
            # One bad value fails the whole batch: read this batch key by key.
            values = await self._read_one_by_one(keys, invalid)
        schedules = []
        for key, value in values.items():
            schedule = self._parse(key, value, invalid)
            if schedule is not None:
                schedules.append(schedule)
        return schedules

    async def _read_one_by_one(
        self, keys: Iterable[str], invalid: dict[str, str]
    ) -> dict[str, Any]:
        values: dict[str, Any] = {}
        missing = object()
        for key in keys:
            try:
                value = await self.storage.get(key, missing)
            except (StorageCorruptError, StorageSerializationError) as exc:
                self._skip(key, str(exc), invalid)
                continue
            if value is not missing:
                values[key] = value
        return values

    def _parse(self, key: str, value: Any, invalid: dict[str, str]) -> ScheduledTask | None:
        try:
            schedule = ScheduledTask.model_validate(value)
        except ValidationError as exc:
            self._skip(key, f"not a ScheduledTask ({_summary(exc)})", invalid)
            return None
        except (ValueError, TypeError) as exc:
            self._skip(key, f"not a ScheduledTask ({exc})", invalid)
            return None
        schedule_id = key[len(self.prefix) :]
        if schedule.schedule_id != schedule_id:
            # The key is what delete_schedule and post_send remove: it names the schedule.
            logger.warning(
                "StorageScheduleSource: schedule at %s says schedule_id=%r; using %r.",
                key,
                schedule.schedule_id,
                schedule_id,
            )
            schedule = schedule.model_copy(update={"schedule_id": schedule_id})
        return schedule

    def _forget(self, schedule_id: str) -> None:
        if self._last_read is not None:
            self._last_read = [s for s in self._last_read if s.schedule_id != schedule_id]

    def _skip(self, key: str, reason: str, invalid: dict[str, str]) -> None:
        # A warning the first time; at every later read (once a minute by default) the
        # same entry only logs at debug level, until it changes or is fixed.
        invalid[key] = reason
        level = logging.DEBUG if self._reported.get(key) == reason else logging.WARNING
        logger.log(
            level, "StorageScheduleSource: skipping the invalid schedule at %s: %s", key, reason
        )


def _summary(exc: ValidationError) -> str:
    """Pydantic's errors on one line: ``task_name: Field required; ...``."""
    errors = exc.errors(include_url=False, include_input=False)
    parts = [f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in errors[:4]]
    if len(errors) > 4:
        parts.append(f"{len(errors) - 4} more")
    return "; ".join(parts)


def _check_prefix(prefix: object) -> None:
    if not isinstance(prefix, str):
        raise MiddlewareConfigTypeError(
            name="prefix", expected="a non-empty str", got=type(prefix).__qualname__
        )
    if not prefix:
        raise MiddlewareConfigError(name="prefix", expected="a non-empty str", got="''")
    try:
        prefix.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MiddlewareConfigError(
            name="prefix", expected="a str encodable as UTF-8", got=repr(prefix)
        ) from exc
