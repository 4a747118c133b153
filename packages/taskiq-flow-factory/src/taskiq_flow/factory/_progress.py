"""A dependency-free progress line on stderr, drawn only when stderr is a terminal."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from typing import TextIO

__all__ = ["Progress"]

_BAR_WIDTH = 30
_REFRESH_SECONDS = 0.1
_SPINNER = "|/-\\"


class Progress:
    """A bar (``total`` known) or a spinner with elapsed time (``total=None``).

    Disabled (every method a no-op) unless ``enabled`` and the stream is a TTY, so
    piped output and ``--json`` stay clean.
    """

    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        stream: TextIO | None = None,
        enabled: bool = True,
    ) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self._stream = stream if stream is not None else sys.stderr
        self._enabled = enabled and self._stream.isatty()
        self._started = time.perf_counter()
        self._last_draw = 0.0
        self._ticks = 0

    @property
    def enabled(self) -> bool:
        """Whether anything is drawn."""
        return self._enabled

    def advance(self, count: int = 1) -> None:
        """Count ``count`` more units done and redraw (at most ten times a second)."""
        self.done += count
        now = time.perf_counter()
        if now - self._last_draw >= _REFRESH_SECONDS or self.done == self.total:
            self._draw(now)

    def _draw(self, now: float) -> None:
        if not self._enabled:
            return
        self._last_draw = now
        elapsed = now - self._started
        if self.total:
            filled = min(_BAR_WIDTH, _BAR_WIDTH * self.done // self.total)
            bar = "#" * filled + "." * (_BAR_WIDTH - filled)
            line = f"{self.label} [{bar}] {self.done}/{self.total} {elapsed:5.1f}s"
        else:
            self._ticks += 1
            spin = _SPINNER[self._ticks % len(_SPINNER)]
            counted = f" {self.done}" if self.done else ""
            line = f"{self.label} {spin}{counted} {elapsed:5.1f}s"
        self._stream.write("\r" + line + "\x1b[K")
        self._stream.flush()

    def close(self) -> None:
        """Erase the line, leaving the terminal as it was."""
        if self._enabled:
            self._stream.write("\r\x1b[K")
            self._stream.flush()

    @contextlib.asynccontextmanager
    async def ticking(self) -> AsyncIterator[Progress]:
        """Redraw on a timer while the body awaits something with no progress of its own."""

        async def tick() -> None:
            while True:
                self._draw(time.perf_counter())
                await asyncio.sleep(_REFRESH_SECONDS)

        ticker = asyncio.create_task(tick()) if self._enabled else None
        try:
            yield self
        finally:
            if ticker is not None:
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker
            self.close()
