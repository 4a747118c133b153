"""SQLite specifics: paths and URLs, several processes on one file, corruption, schema."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import textwrap
from pathlib import Path

import aiosqlite
import pytest

from taskiq_flow.storage import (
    InvalidStorageURLError,
    SQLiteStorageAdapter,
    StorageConnectionError,
    StorageCorruptError,
    StorageError,
)

WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from taskiq_flow.storage import SQLiteStorageAdapter

    async def main(path, name):
        async with SQLiteStorageAdapter(path) as storage:
            for i in range(1000):
                await storage.set(f"{name}:{i:04d}", {"writer": name, "i": i})
            wins = 0
            for i in range(200):
                wins += await storage.add(f"claim:{i:03d}", name)
            print(wins)

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


async def test_two_processes_write_one_file(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), name],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for name in ("p1", "p2")
    ]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()
    async with SQLiteStorageAdapter(path) as storage:
        keys = await storage.keys("p?:*")
        assert len(keys) == 2000
        values = await storage.get_many(keys)
        assert values["p1:0999"] == {"writer": "p1", "i": 999}
        assert values["p2:0000"] == {"writer": "p2", "i": 0}
        # add() is one statement: every claim has exactly one winner across processes.
        assert sum(int(out) for out, _ in outputs) == 200
        assert len(await storage.keys("claim:*")) == 200


async def test_built_inside_running_loop(tmp_path: Path) -> None:
    storage = SQLiteStorageAdapter(tmp_path / "loop.db")
    try:
        await asyncio.gather(*(storage.set(f"k{i}", i) for i in range(50)))
        assert len(await storage.keys()) == 50
    finally:
        await storage.close()


def test_built_outside_any_loop_then_used_in_one(tmp_path: Path) -> None:
    storage = SQLiteStorageAdapter(f"sqlite:///{tmp_path}/outside.db")

    async def use() -> object:
        try:
            await storage.set("k", 1)
            return await storage.get("k")
        finally:
            await storage.close()

    assert asyncio.run(use()) == 1


async def test_reconnects_after_close(tmp_path: Path) -> None:
    storage = SQLiteStorageAdapter(tmp_path / "again.db")
    await storage.set("k", 1)
    await storage.close()
    assert await storage.get("k") == 1
    await storage.close()


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (":memory:", ":memory:"),
        ("sqlite://", ":memory:"),
        ("sqlite:///:memory:", ":memory:"),
        ("sqlite:///relative.db", "relative.db"),
        ("sqlite:////abs/path.db", "/abs/path.db"),
        (Path("some/file.db"), "some/file.db"),
        ("plain.db", "plain.db"),
    ],
)
def test_paths_and_urls(given: str | Path, expected: str) -> None:
    assert SQLiteStorageAdapter(given).path == expected


@pytest.mark.parametrize(
    "bad",
    ["", "postgres://host/db", "sqlite://host/db.db", "sqlite:/x.db", "sqlite:///x.db?mode=ro"],
)
def test_bad_paths(bad: str) -> None:
    with pytest.raises(InvalidStorageURLError) as info:
        SQLiteStorageAdapter(bad)
    assert isinstance(info.value, ValueError)


async def test_relative_url_is_relative_to_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    async with SQLiteStorageAdapter("sqlite:///rel.db") as storage:
        await storage.set("k", 1)
    assert (tmp_path / "rel.db").exists()


async def test_unopenable_file_is_a_connection_error(tmp_path: Path) -> None:
    storage = SQLiteStorageAdapter(tmp_path / "missing-dir" / "x.db")
    with pytest.raises(StorageConnectionError, match="connect"):
        await storage.set("k", 1)
    await storage.close()


async def test_not_a_database_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not sqlite" * 100)
    storage = SQLiteStorageAdapter(path)
    with pytest.raises(StorageError):
        await storage.get("k")
    await storage.close()


async def test_corrupt_bytes_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.db"
    async with SQLiteStorageAdapter(path) as storage:
        await storage.set_many({"bad": 1, "text": 2, "good": 3})
        async with aiosqlite.connect(path) as raw:
            await raw.execute(
                "UPDATE taskiq_flow_storage SET value = ? WHERE key = 'bad'", (b"\xc1",)
            )
            await raw.execute("UPDATE taskiq_flow_storage SET value = 'txt' WHERE key = 'text'")
            await raw.commit()
        for key in ("bad", "text"):
            with pytest.raises(StorageCorruptError, match=f"'{key}'") as info:
                await storage.get(key)
            assert info.value.key == key
            with pytest.raises(StorageCorruptError, match=f"'{key}'"):
                await storage.get_many(["good", key])
            with pytest.raises(StorageCorruptError, match=f"'{key}'"):
                await storage.get_entry(key)
        assert await storage.get("good") == 3
        assert await storage.delete("bad")  # a corrupt entry can still be removed


async def test_wal_and_cleanup_indexes(tmp_path: Path) -> None:
    path = tmp_path / "schema.db"
    async with SQLiteStorageAdapter(path) as storage:
        await storage.set("k", 1)
        async with aiosqlite.connect(path) as raw:
            (mode,) = next(iter(await raw.execute_fetchall("PRAGMA journal_mode")))
            assert mode == "wal"
            plan = " ".join(
                str(row[-1])
                for row in await raw.execute_fetchall(
                    "EXPLAIN QUERY PLAN DELETE FROM taskiq_flow_storage"
                    " WHERE expires_at <= ? OR created_at <= ?",
                    (1.0, 1.0),
                )
            )
            assert "taskiq_flow_storage_expires_at" in plan
            assert "taskiq_flow_storage_created_at" in plan


async def test_table_survives_sql_in_keys(tmp_path: Path) -> None:
    async with SQLiteStorageAdapter(tmp_path / "inj.db") as storage:
        await storage.set("x'); DROP TABLE taskiq_flow_storage; --", 1)
        assert await storage.keys("*DROP TABLE*") == ["x'); DROP TABLE taskiq_flow_storage; --"]
        await storage.cleanup(ttl_seconds=1)
        assert await storage.exists("x'); DROP TABLE taskiq_flow_storage; --")


async def test_many_connections_open_a_new_file_at_once(tmp_path: Path) -> None:
    # Switching a new file to WAL takes an exclusive lock and SQLite reports "database
    # is locked" without waiting; adapters opening one file together must wait it out.
    for round_ in range(20):
        path = tmp_path / f"fresh{round_}.sqlite3"
        adapters = [SQLiteStorageAdapter(path) for _ in range(16)]
        try:
            results = await asyncio.gather(*(a.add("claim", i) for i, a in enumerate(adapters)))
            assert results.count(True) == 1
        finally:
            for adapter in adapters:
                await adapter.close()


def test_an_unclosed_adapter_does_not_keep_the_process_alive(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = (
        "import asyncio\n"
        "from taskiq_flow.storage import SQLiteStorageAdapter\n"
        "async def main():\n"
        f"    storage = SQLiteStorageAdapter({str(tmp_path / 'x.db')!r})\n"
        "    await storage.set('k', 1)\n"
        "asyncio.run(main())\n"
        "print('exiting', flush=True)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "exiting"


@pytest.mark.parametrize("operation", ["set_many", "delete_many"])
async def test_a_cancelled_batch_leaves_no_transaction_open(tmp_path: Path, operation: str) -> None:
    # Cancelling the await of a statement does not stop it: it still runs on aiosqlite's
    # thread. A BEGIN whose await was cancelled used to leave its transaction open, so
    # every later write of the adapter went into it, unseen by others and never
    # committed, and the next batch failed ("cannot start a transaction within a
    # transaction").
    path = tmp_path / "store.sqlite3"
    storage = SQLiteStorageAdapter(path)
    other = SQLiteStorageAdapter(path)
    items = {f"k{i:03d}": i for i in range(200)}

    def batch() -> asyncio.Task[object]:
        if operation == "set_many":
            return asyncio.create_task(storage.set_many(items))
        return asyncio.create_task(storage.delete_many(list(items)))

    async def assert_usable(round_: int) -> None:
        await storage.set("single", round_)
        assert await other.get("single") == round_
        await storage.set_many({"batch": round_, "k000": round_})
        assert await other.get_many(["batch", "k000"]) == {"batch": round_, "k000": round_}
        assert await storage.delete_many(["k000"]) == 1
        assert await other.get("k000") is None

    try:
        await storage.set_many(items)
        # Cancelled while BEGIN IMMEDIATE waits for another connection's write lock.
        blocker = await aiosqlite.connect(path, isolation_level=None)
        try:
            await blocker.execute("BEGIN IMMEDIATE")
            task = batch()
            await asyncio.sleep(0.05)
            assert not task.done()
            task.cancel()
            # The caller is released at once, not after the busy timeout: the rollback
            # waits for the BEGIN in the background, the adapter's lock held meanwhile.
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(task), 2.0)
            await blocker.execute("ROLLBACK")
        finally:
            await blocker.close()
        await assert_usable(-1)
        # Cancelled at whatever await each number of loop turns reaches: BEGIN, the
        # statements, COMMIT, or after the batch already finished.
        for turns in range(16):
            task = batch()
            for _ in range(turns):
                await asyncio.sleep(0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await assert_usable(turns)
    finally:
        await other.close()
        await storage.close()
