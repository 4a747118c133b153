"""SQLite failures name the file and the cause; the guide's spellings of a location work.

Real files only: a missing directory, a read-only one, a file that is not a database, a
file another connection locks, a full file system (a 64 KiB tmpfs, where mounting is
allowed).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from taskiq_flow.storage import (
    SQLiteStorageAdapter,
    StorageConfigError,
    StorageConnectionError,
    StorageError,
)

as_root = os.geteuid() == 0 if hasattr(os, "geteuid") else False


async def _error_of(adapter: SQLiteStorageAdapter) -> str:
    try:
        with pytest.raises(StorageError) as caught:
            await adapter.set("k", "v" * 2000)
        return str(caught.value)
    finally:
        await adapter.close()


async def test_missing_directory_is_named_and_not_created(tmp_path: Path) -> None:
    path = tmp_path / "no-such-dir" / "store.sqlite3"
    message = await _error_of(SQLiteStorageAdapter(path))
    assert str(path) in message
    assert f"the directory {tmp_path / 'no-such-dir'} does not exist" in message
    assert not (tmp_path / "no-such-dir").exists()  # decided: never created for you


@pytest.mark.skipif(as_root, reason="root reads and writes whatever the mode says")
async def test_read_only_directory_says_permission_denied(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        message = await _error_of(SQLiteStorageAdapter(folder / "store.sqlite3"))
    finally:
        folder.chmod(0o700)
    assert str(folder / "store.sqlite3") in message
    assert "permission denied" in message


@pytest.mark.skipif(as_root, reason="root reads and writes whatever the mode says")
async def test_unreadable_file_says_permission_denied(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    await SQLiteStorageAdapter(path).close()
    adapter = SQLiteStorageAdapter(path)
    await adapter.set("k", 1)
    await adapter.close()
    path.chmod(0o000)
    try:
        message = await _error_of(SQLiteStorageAdapter(path))
    finally:
        path.chmod(0o600)
    assert str(path) in message
    assert "permission denied" in message


async def test_a_directory_in_place_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    path.mkdir()
    message = await _error_of(SQLiteStorageAdapter(path))
    assert f"{path} is a directory" in message


async def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"these are my notes, not a database\n" * 200)
    message = await _error_of(SQLiteStorageAdapter(path))
    assert str(path) in message
    assert "is not a SQLite database" in message


async def test_locked_by_another_connection(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    adapter = SQLiteStorageAdapter(path, busy_timeout=0.2)
    await adapter.set("first", 1)  # the file exists, in WAL mode
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StorageConnectionError) as caught:
            await adapter.set("second", 2)
    finally:
        other.execute("ROLLBACK")
        other.close()
        await adapter.close()
    message = str(caught.value)
    assert str(path) in message
    assert "another connection or process holds a lock" in message


@pytest.fixture
def tiny_filesystem(tmp_path: Path):
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


async def test_disk_full(tiny_filesystem: Path) -> None:
    path = tiny_filesystem / "store.sqlite3"
    adapter = SQLiteStorageAdapter(path)
    with pytest.raises(StorageError) as caught:  # noqa: PT012 - fill until it fails
        for n in range(1000):
            await adapter.set(f"k{n}", os.urandom(4000))
    await adapter.close()
    message = str(caught.value)
    assert str(path) in message
    assert "no space left" in message


@pytest.mark.parametrize(
    "spelling",
    ["sqlite+aiosqlite:///{path}", "sqlite:///{path}", "{path}"],
)
async def test_location_spellings(tmp_path: Path, spelling: str) -> None:
    path = tmp_path / "store.sqlite3"
    adapter = SQLiteStorageAdapter(spelling.format(path=path))
    assert adapter.path == str(path)
    await adapter.set("k", {"v": 1})
    await adapter.close()
    again = SQLiteStorageAdapter(db_url=f"sqlite+aiosqlite:///{path}")  # the earlier keyword
    assert await again.get("k") == {"v": 1}
    await again.close()


def test_path_and_db_url_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(StorageConfigError, match="not both"):
        SQLiteStorageAdapter(tmp_path / "a.db", db_url=str(tmp_path / "b.db"))
    with pytest.raises(StorageConfigError, match="busy_timeout"):
        SQLiteStorageAdapter(":memory:", busy_timeout=-1)
