"""``OutageLog``: one way to report a repeated failure, for every taskiq-flow component.

A backend that is down fails on every call; logging each failure floods the log (one
line per task) and hides everything else. An ``OutageLog`` logs the **first** failure at
once, then at most **one line per interval** carrying how many failures it stood for,
then **one "recovered" line** when the first success follows. Storage writes, the
spool and (when they adopt it) the cache and the pipelines report outages through it,
so an outage reads the same wherever it happens.

Nothing here needs an event loop or a lock: the counters are plain attributes, safe
under asyncio (no ``await`` between reading and writing them).
"""

from __future__ import annotations

import logging
import time
from typing import Any

__all__ = ["OutageLog"]


class OutageLog:
    """Rate-limited logging of one kind of failure, with a recovery line.

    Args:
        logger: where the lines go.
        what: what fails, in a few words (``"storage write"``, ``"cache backend"``): the
            lines read ``taskiq-flow: {what} failed ...`` and ``taskiq-flow: {what}
            recovered ...``.
        interval: at most one failure line per this many seconds (the first is immediate).
        level: the level of failure lines (the recovery line is ``WARNING``).

    Attributes:
        failures: every failure counted since the object was made (a counter for stats).
        recoveries: how many outages ended.
    """

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        interval: float = 60.0,
        level: int = logging.ERROR,
    ) -> None:
        self.logger = logger
        self.what = what
        self.interval = interval
        self.level = level
        self.failures = 0
        self.recoveries = 0
        self._outage_started: float | None = None
        self._outage_failures = 0
        self._last_line = float("-inf")
        self._unreported = 0

    @property
    def failing(self) -> bool:
        """Whether a failure was seen since the last success."""
        return self._outage_started is not None

    def failure(self, detail: str, *args: Any) -> bool:
        """Count one failure; log it if it is the first, or the interval has passed.

        Args:
            detail: what happened (``%``-style format, with ``args``), e.g. the
                exception's message and where.
            args: arguments of ``detail``.

        Returns:
            Whether a line was written.
        """
        now = time.monotonic()
        self.failures += 1
        self._unreported += 1
        if self._outage_started is None:
            self._outage_started = now
            self._outage_failures = 0
        self._outage_failures += 1
        if now - self._last_line < self.interval:
            return False
        if self._unreported > 1:
            self.logger.log(
                self.level,
                "taskiq-flow: %s failed (%d failure(s) since the last report): " + detail,
                self.what,
                self._unreported,
                *args,
            )
        else:
            self.logger.log(self.level, "taskiq-flow: %s failed: " + detail, self.what, *args)
        self._last_line = now
        self._unreported = 0
        return True

    def success(self, detail: str = "", *args: Any) -> bool:
        """Note a success; if an outage was under way, log one line that it ended.

        Returns:
            Whether a recovery line was written.
        """
        started = self._outage_started
        if started is None:
            return False
        seconds = time.monotonic() - started
        suffix = ("; " + detail) if detail else ""
        self.logger.warning(
            "taskiq-flow: %s recovered after %d failure(s) over %.1f s" + suffix,
            self.what,
            self._outage_failures,
            seconds,
            *args,
        )
        self.recoveries += 1
        self._outage_started = None
        self._outage_failures = 0
        self._unreported = 0
        self._last_line = float("-inf")
        return True
