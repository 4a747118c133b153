"""The spool: append-only SQLite files, one owner each (flock), adopted once the owner dies."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from taskiq_flow.storage.kit.ratelog import OutageLog
from taskiq_flow.storage.kit.spool import SPOOL_SUPPORTED, Spool

pytestmark = pytest.mark.skipif(not SPOOL_SUPPORTED, reason="spools need fcntl.flock")

OWNER = textwrap.dedent(
    """
    import asyncio, sys, time
    from taskiq_flow.storage.kit.spool import Spool

    async def main():
        spool = await Spool.create(sys.argv[1], sys.argv[2], max_bytes=10**6)
        await spool.append({"a": 1, "b": {"x": [1, 2]}}, None)
        await spool.append({"c": "three"}, 60)
        print(spool.path, flush=True)
        time.sleep(60)  # holds the lock until killed

    asyncio.run(main())
    """
)


def _start_owner(directory: Path, store: str) -> tuple[subprocess.Popen[str], Path]:
    proc = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(directory), store],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line, "the owner process did not start"
    return proc, Path(line)


async def test_append_read_remove_and_release(tmp_path: Path) -> None:
    spool = await Spool.create(tmp_path / "new" / "dir", "store-a", max_bytes=10**6)
    assert spool.path.parent == tmp_path / "new" / "dir"  # directories created
    assert await spool.append({"k1": {"v": 1}, "k2": b"\x00bytes"}, 30)
    assert await spool.append({"k1": {"v": 2}}, None)
    assert spool.count == 3
    assert spool.size > 0
    items = await spool.head(2)
    assert [(i.key, i.value, i.ttl_seconds) for i in items] == [
        ("k1", {"v": 1}, 30),
        ("k2", b"\x00bytes", 30),
    ]
    await spool.remove_through(items[-1].seq)
    assert spool.count == 1
    assert [i.value for i in await spool.head(10)] == [{"v": 2}]
    await spool.release()
    # Not empty: the file stays for the next process, its lock released.
    assert spool.path.exists()
    adopted = await Spool.adopt(tmp_path / "new" / "dir", "store-a", max_bytes=10**6)
    assert [s.path for s in adopted] == [spool.path]
    assert adopted[0].count == 1
    await adopted[0].remove_through((await adopted[0].head(1))[0].seq)
    await adopted[0].release()
    assert list((tmp_path / "new" / "dir").iterdir()) == []  # empty: every file removed


async def test_a_live_owner_keeps_its_file_a_dead_one_gives_it_up(tmp_path: Path) -> None:
    proc, path = _start_owner(tmp_path, "store-a")
    try:
        assert await Spool.adopt(tmp_path, "store-a", max_bytes=10**6) == []
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()
    # The kernel released the dead owner's lock; another store's writer leaves it alone.
    assert await Spool.adopt(tmp_path, "store-b", max_bytes=10**6) == []
    adopted = await Spool.adopt(tmp_path, "store-a", max_bytes=10**6)
    assert [s.path for s in adopted] == [path]
    spool = adopted[0]
    items = await spool.head(10)
    assert [(i.key, i.value, i.ttl_seconds) for i in items] == [
        ("a", 1, None),
        ("b", {"x": [1, 2]}, None),
        ("c", "three", 60),
    ]
    # Owned now: nobody else can take it while we hold it.
    assert await Spool.adopt(tmp_path, "store-a", max_bytes=10**6) == []
    await spool.remove_through(items[-1].seq)
    await spool.release()
    assert not path.exists()


async def test_append_past_max_bytes_is_refused(tmp_path: Path) -> None:
    spool = await Spool.create(tmp_path, "s", max_bytes=200)
    assert await spool.append({"a": "x" * 100}, None)
    assert not await spool.append({"b": "y" * 100}, None)  # would exceed 200 bytes
    assert spool.count == 1
    await spool.remove_through((await spool.head(1))[0].seq)
    assert await spool.append({"b": "y" * 100}, None)  # room again once written
    await spool.release()


def test_outage_log_first_then_counted_then_recovered(caplog: pytest.LogCaptureFixture) -> None:
    log = OutageLog(logging.getLogger("test.outage"), "thing", interval=0.2)
    with caplog.at_level(logging.WARNING, logger="test.outage"):
        for n in range(50):
            log.failure("down (%d)", n)
        time.sleep(0.25)
        log.failure("down (%d)", 50)
        assert log.success("all good")
        assert not log.success()  # no outage under way: no line
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "taskiq-flow: thing failed: down (0)"
    assert lines[1] == "taskiq-flow: thing failed (50 failure(s) since the last report): down (50)"
    assert lines[2].startswith("taskiq-flow: thing recovered after 51 failure(s) over ")
    assert lines[2].endswith("; all good")
    assert len(lines) == 3
    assert log.failures == 51
    assert log.recoveries == 1
