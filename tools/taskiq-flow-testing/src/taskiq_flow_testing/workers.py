"""Real ``taskiq worker`` processes for integration tests.

Each worker runs in its own process group: Redis stream/list broker workers are known
not to exit on SIGTERM while idle, so stopping means SIGTERM to the group, a grace
period, then SIGKILL to the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType


class WorkerProcess:
    """One ``taskiq worker MODULE:BROKER`` process group."""

    def __init__(
        self,
        target: str,
        *,
        app_dir: Path,
        env: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
        log_path: Path | None = None,
    ) -> None:
        self.target = target
        self.app_dir = app_dir
        self.env = {**os.environ, **(env or {})}
        self.env["PYTHONPATH"] = os.pathsep.join(
            [str(app_dir), *filter(None, [os.environ.get("PYTHONPATH")])],
        )
        self.extra_args = list(extra_args)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: object = None

    def start(self) -> WorkerProcess:
        """Start the worker (one worker process, no reload)."""
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self._log = log
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "taskiq",
                "worker",
                self.target,
                "--workers",
                "1",
                "--log-level",
                "WARNING",
                *self.extra_args,
            ],
            cwd=self.app_dir,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    @property
    def alive(self) -> bool:
        """Whether the worker's main process still runs."""
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the worker's whole process group."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM the group, wait ``grace`` seconds, then SIGKILL it."""
        if self.proc is None:
            return
        self.kill(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and self.proc.poll() is None:
            time.sleep(0.05)
        self.kill(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        if self._log is not None and hasattr(self._log, "close"):
            self._log.close()
        self.proc = None

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


async def wait_workers_up(
    count: Callable[[], Awaitable[int]],
    workers: Sequence[WorkerProcess],
    *,
    within: float = 90.0,
) -> None:
    """Wait until ``count()`` reaches ``len(workers)``; fail at once if one of them dies.

    ``count`` reads what the workers' ``WORKER_STARTUP`` handlers signalled (an ``INCR``
    of a key of the test's, say). Kick only after it: on a loaded machine a worker can
    take longer to start than a test's wait for its first result.
    """
    async with asyncio.timeout(within):
        while await count() < len(workers):
            dead = [w for w in workers if not w.alive]
            if dead:
                logs = "".join(w.log_path.read_text(errors="replace") for w in dead if w.log_path)
                msg = f"{len(dead)} worker(s) died at startup:\n{logs[-3000:]}"
                raise AssertionError(msg)
            await asyncio.sleep(0.05)


def _group_members(pgid: int) -> Iterator[Path]:
    """The ``/proc/PID`` directories of the processes in the process group ``pgid``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            # Fields after the command name (which may hold spaces) start at ")".
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[2]) == pgid:
                yield entry
        except (OSError, ValueError, IndexError):
            continue


def group_rss_kib(pgid: int) -> int:
    """Resident memory (KiB) of every process in the process group ``pgid``."""
    total = 0
    for entry in _group_members(pgid):
        try:
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total


def group_cpu_seconds(pgid: int) -> float:
    """CPU time (seconds) used so far by the live processes of the process group ``pgid``.

    ``utime + stime`` of ``/proc/PID/stat``: every thread of each process, the threads
    that ended included (a per-thread ``schedstat`` sum would lose those), in clock ticks
    (10 ms at the usual 100 Hz): diff it over work of a second or more.
    """
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in _group_members(pgid):
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, ValueError, IndexError):
            continue
    return total / tick
