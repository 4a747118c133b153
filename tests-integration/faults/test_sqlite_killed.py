"""Processes writing to one SQLite store SIGKILLed mid-write, round after round.

Each round starts two writer processes (``apps/sqlite_writer.py``) on the same file; they
alternate single ``set`` calls and ``set_many`` batches and print an ack line after each
call returns. After a random number of acks, plus a random few milliseconds so that the
kill lands inside a batch, each is SIGKILLed. Then:

- the file opens and ``PRAGMA integrity_check`` says ``ok``;
- every acknowledged write is there, with its value;
- a batch is all or nothing (``set_many`` is one transaction): never a partial batch.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sqlite3
import sys
from pathlib import Path

from taskiq_flow.storage import SQLiteStorageAdapter

WRITER = Path(__file__).parent / "apps" / "sqlite_writer.py"
ROUNDS = 4
BATCH = 100


def _value(writer: str, i: int, j: int = 0) -> dict[str, object]:
    return {"w": writer, "i": i, "j": j, "pad": "x" * 200}


def _check_file(path: Path) -> tuple[str, set[str]]:
    conn = sqlite3.connect(path)
    try:
        (verdict,) = conn.execute("PRAGMA integrity_check").fetchone()
        keys = {row[0] for row in conn.execute("SELECT key FROM taskiq_flow_storage")}
    finally:
        conn.close()
    return verdict, keys


async def _run_and_kill(path: Path, writer: str, rng: random.Random) -> list[str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(WRITER),
        str(path),
        writer,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    acks: list[str] = []
    wanted = rng.randint(10, 60)
    try:
        async with asyncio.timeout(60):
            while len(acks) < wanted:
                line = await proc.stdout.readline()
                if not line:
                    err = await proc.stderr.read() if proc.stderr else b""
                    raise AssertionError(f"writer {writer} exited early: {err.decode()[-2000:]}")
                acks.append(line.decode().strip())
            await asyncio.sleep(rng.uniform(0, 0.03))
            proc.send_signal(signal.SIGKILL)
            # Whatever it printed before dying was acknowledged too.
            rest = await proc.stdout.read()
            acks.extend(line for line in rest.decode().splitlines() if line.strip())
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return acks


async def test_sqlite_writers_killed_mid_batch(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    rng = random.Random(20261127)
    acked_sets: list[str] = []
    acked_batches: list[str] = []
    for round_no in range(ROUNDS):
        writers = [f"r{round_no}w{n}" for n in range(2)]
        results = await asyncio.gather(*(_run_and_kill(path, w, rng) for w in writers))
        for acks in results:
            for ack in acks:
                _, kind, name, *_ = ack.split()
                (acked_sets if kind == "set" else acked_batches).append(name)

        verdict, keys = await asyncio.to_thread(_check_file, path)
        assert verdict == "ok"
        missing = [k for k in acked_sets if k not in keys]
        missing += [
            f"{b}:{j}" for b in acked_batches for j in range(BATCH) if f"{b}:{j}" not in keys
        ]
        assert not missing, f"acknowledged writes lost: {missing[:5]}"
        # All or nothing: any batch with one entry present has all of them.
        batches: dict[str, int] = {}
        for key in keys:
            if ":b" in key:
                prefix = key.rsplit(":", 1)[0]
                batches[prefix] = batches.get(prefix, 0) + 1
        partial = {b: n for b, n in batches.items() if n != BATCH}
        assert not partial, f"partial batches: {partial}"

    # The values read back through the adapter are the ones written.
    async with SQLiteStorageAdapter(path) as storage:
        wanted = acked_sets + [f"{b}:{j}" for b in acked_batches for j in (0, BATCH - 1)]
        values = await storage.get_many(wanted)
        for key in wanted:
            writer, rest = key.split(":", 1)
            i = int(rest.split(":")[0][1:])
            j = int(rest.split(":")[1]) if ":" in rest else 0
            assert values[key] == _value(writer, i, j)
        unacknowledged = len(keys) - len(acked_sets) - BATCH * len(acked_batches)
    figures = {
        "faults injected (writer SIGKILL)": ROUNDS * 2,
        "acknowledged sets": len(acked_sets),
        "acknowledged batches": len(acked_batches),
        "acknowledged entries": len(acked_sets) + BATCH * len(acked_batches),
        "entries committed but not yet acknowledged when killed": unacknowledged,
        "records lost": 0,
        "integrity_check": verdict,
    }
    print("\nFIGURES sqlite kill:", json.dumps(figures))
