"""The progress line: drawn only on a terminal, never in piped output."""

from __future__ import annotations

import io
import os
import pty
import select
import subprocess
import sys
from pathlib import Path

from taskiq_flow.config import TaskiqFlowConfig
from taskiq_flow.factory._progress import Progress


class TerminalText(io.StringIO):
    """Text that says it is a terminal, like a real TTY stream does."""

    def isatty(self) -> bool:
        return True


def test_bar_on_a_terminal() -> None:
    stream = TerminalText()
    progress = Progress("running", 4, stream=stream)
    for _ in range(4):
        progress.advance()
    progress.close()
    out = stream.getvalue()
    assert "running [" in out
    assert "4/4" in out
    assert "#" * 30 in out  # full bar at the end
    assert out.endswith("\r\x1b[K")  # the line is erased, leaving the terminal clean


def test_nothing_when_piped_or_disabled() -> None:
    piped = io.StringIO()
    progress = Progress("running", 3, stream=piped)
    progress.advance(3)
    progress.close()
    assert piped.getvalue() == ""
    assert not progress.enabled
    off = TerminalText()
    Progress("running", 3, stream=off, enabled=False).advance(3)
    assert off.getvalue() == ""


async def test_spinner_ticks_while_awaiting() -> None:
    import asyncio

    stream = TerminalText()
    async with Progress("cleaning up", stream=stream).ticking():
        await asyncio.sleep(0.35)
    out = stream.getvalue()
    assert out.count("cleaning up") >= 3
    assert out.endswith("\r\x1b[K")


def test_demo_draws_a_bar_on_a_real_terminal(tmp_path: Path) -> None:
    """stderr on a pseudo-terminal: the bar is drawn there, stdout stays clean text."""
    script = Path(sys.executable).parent / "taskiq-flow"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKIQ_FLOW_")}
    for item in TaskiqFlowConfig.settings():
        env.pop(item["env_var"], None)
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            [str(script), "demo", "--tasks", "60", "--distinct", "6", "--work-ms", "20"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=follower,
            text=True,
        )
        os.close(follower)
        follower = -1
        drawn = b""
        while True:
            ready, _, _ = select.select([leader], [], [], 30)
            if not ready:
                break
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            drawn += chunk
        stdout, _ = proc.communicate(timeout=30)
    finally:
        os.close(leader)
        if follower != -1:
            os.close(follower)
    assert proc.returncode == 0
    assert b"running [" in drawn
    assert b"/60" in drawn
    assert "executions run      6 of 60 tasks" in stdout
    assert "\r" not in stdout
