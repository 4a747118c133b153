"""The SQLite adapter's plumbing: opening a connection, error mapping, glob key ranges.

Kept apart from :mod:`taskiq_flow.storage.sqlite` so that module reads as the adapter's
statements and methods only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import aiosqlite

from taskiq_flow.storage.errors import StorageConnectionError, StorageError
from taskiq_flow.storage.glob import compile_glob, literal_prefix

__all__ = [
    "BUSY_TIMEOUT_MS",
    "LIVE",
    "MapErrors",
    "explain",
    "key_query",
    "live_at",
    "open_connection",
    "rollback",
    "rollback_then_release",
]

BUSY_TIMEOUT_MS = 10_000
"""How long a statement waits for another connection's write lock before failing."""

LIVE = "(expires_at IS NULL OR expires_at > ?)"
"""SQL condition of a live row; its parameter is now (epoch seconds)."""


def _sql_glob(pattern: str, key: str) -> bool:
    return compile_glob(pattern)(key)


def _successor(prefix: str) -> str | None:
    """The least string greater than every string starting with ``prefix`` (None: none)."""
    chars = list(prefix)
    while chars:
        code = ord(chars[-1]) + 1
        if code == 0xD800:  # surrogates never occur in a stored (UTF-8) key
            code = 0xE000
        if code <= 0x10FFFF:
            chars[-1] = chr(code)
            return "".join(chars)
        chars.pop()
    return None


def key_query(pattern: str) -> tuple[str, list[Any]]:
    """WHERE clause and parameters selecting live keys that match ``pattern``."""
    clauses = [LIVE]
    params: list[Any] = [time.time()]
    stripped = pattern.rstrip("*")
    if not pattern:
        clauses.append("0")
    elif not set("*?[\\").intersection(pattern):
        clauses.append("key = ?")
        params.append(pattern)
    else:
        prefix = literal_prefix(pattern)
        if prefix:
            clauses.append("key >= ?")
            params.append(prefix)
            upper = _successor(prefix)
            if upper is not None:
                clauses.append("key < ?")
                params.append(upper)
        # "prefix*" is exactly the range; anything else needs Redis's matcher.
        if set("*?[\\").intersection(stripped):
            clauses.append("redis_glob(?, key)")
            params.append(pattern)
    return " AND ".join(clauses), params


async def _reap(conn: aiosqlite.Connection) -> None:
    """Wait for the worker thread of a connection whose connect failed.

    aiosqlite stops that thread itself but does not wait; its stop message would then
    be delivered to an event loop that may be closed by then. The thread is
    ``Connection._thread`` (aiosqlite >= 0.21) or the connection itself (older).
    """
    thread = getattr(conn, "_thread", conn)
    if isinstance(thread, threading.Thread) and thread.is_alive():
        await asyncio.to_thread(thread.join, 5.0)
    # Let the loop run the stop message's callback, queued by the finished thread.
    await asyncio.sleep(0)


async def rollback(conn: aiosqlite.Connection) -> None:
    """Roll back the open transaction, if any, keeping the original exception."""
    # The failure (or cancellation) may have come before BEGIN took effect or after
    # COMMIT already ran; a rollback with no transaction open must not replace the
    # original exception. aiosqlite queues the ROLLBACK on the connection's thread before
    # this coroutine first suspends, so it runs even if this await is cancelled in turn.
    with contextlib.suppress(sqlite3.Error):
        await conn.execute("ROLLBACK")


_ROLLBACKS: set[asyncio.Task[None]] = set()  # strong references until each is done


def rollback_then_release(conn: aiosqlite.Connection, lock: asyncio.Lock) -> None:
    """Roll back in the background, then release ``lock`` (held by the caller until then).

    For a transaction whose caller was cancelled: the ROLLBACK may have to wait behind a
    BEGIN still waiting for another connection's write lock (up to the busy timeout), and
    the cancelled caller must not wait with it. Holding ``lock`` until the rollback is
    done keeps every later statement of the adapter out of the abandoned transaction.
    """

    async def run() -> None:
        try:
            await rollback(conn)
        finally:
            lock.release()

    task = asyncio.get_running_loop().create_task(run())
    _ROLLBACKS.add(task)
    task.add_done_callback(_ROLLBACKS.discard)


def explain(exc: sqlite3.Error, path: str) -> str:  # noqa: PLR0911 - one answer per cause
    """SQLite's message about ``path``, with the cause spelled out where it can be told.

    SQLite says "unable to open database file" for a missing directory, a permission
    problem and a directory in the file's place alike; the file system tells them apart.
    """
    text = str(exc)
    low = text.lower()
    if path == ":memory:":
        return text
    where = os.path.abspath(path)
    parent = os.path.dirname(where)
    if "unable to open" in low or "readonly" in low or "read-only" in low:
        if not os.path.isdir(parent):
            return (
                f"{text}: the directory {parent} does not exist (create it first: "
                "the adapter does not create directories)"
            )
        if os.path.isdir(where):
            return f"{text}: {where} is a directory"
        if os.path.exists(where) and not os.access(where, os.R_OK | os.W_OK):
            return f"{text}: permission denied: cannot read and write {where}"
        if not os.access(parent, os.W_OK | os.X_OK):
            return (
                f"{text}: permission denied: cannot create files in {parent} (SQLite needs "
                "it writable for the database and its -wal/-shm files)"
            )
    if "not a database" in low or "malformed" in low:
        return f"{text}: {where} is not a SQLite database (or is damaged)"
    if "locked" in low or "busy" in low:
        return (
            f"{text}: another connection or process holds a lock on {where} "
            "(waited busy_timeout for it)"
        )
    if "disk is full" in low or "disk full" in low:
        return f"{text}: no space left for {where} (the disk or max_page_count is full)"
    return text


class MapErrors:
    """Map ``sqlite3`` errors to the storage error tree (a class: cheaper than a generator).

    With ``path``, the message names the database and, where it can, the cause.
    """

    __slots__ = ("operation", "path")

    def __init__(self, operation: str, path: str | None = None) -> None:
        self.operation = operation
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None or isinstance(exc, StorageError):
            return
        if isinstance(exc, sqlite3.Error):
            if self.path is None:
                msg = f"SQLite {self.operation} failed: {exc}"
            else:
                msg = f"SQLite {self.operation} failed on {self.path}: {explain(exc, self.path)}"
            if isinstance(exc, sqlite3.OperationalError):
                raise StorageConnectionError(msg) from exc
            raise StorageError(msg) from exc


def live_at(expires: object, now: float) -> bool:
    """Whether a deleted row was live; a corrupt expiry counts as not (it is gone now)."""
    if expires is None:
        return True
    return isinstance(expires, int | float) and not isinstance(expires, bool) and now < expires


async def _enable_wal(conn: aiosqlite.Connection, busy_timeout_ms: int) -> None:
    """Switch the file to WAL, waiting out other connections doing the same.

    Changing the journal mode needs an exclusive lock, and SQLite answers ``database is
    locked`` at once (no busy handler) while another connection holds the file — which
    is what several processes opening one new file together do.
    """
    rows = list(await conn.execute_fetchall("PRAGMA journal_mode"))
    if rows and str(rows[0][0]).lower() == "wal":
        return  # WAL is persistent: set once per file, nothing to lock for
    deadline = time.monotonic() + busy_timeout_ms / 1000
    delay = 0.005
    while True:
        try:
            await conn.execute("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)
        else:
            return


async def open_connection(
    path: str, schema: Sequence[str], *, busy_timeout_ms: int = BUSY_TIMEOUT_MS
) -> aiosqlite.Connection:
    """Open ``path`` in this loop: busy timeout, WAL for files, ``schema`` applied.

    Raises:
        StorageConnectionError: the database cannot be opened or set up; the message
            names the file and the cause (:func:`explain`).
    """
    conn = aiosqlite.connect(path, isolation_level=None, timeout=busy_timeout_ms / 1000)
    # aiosqlite's thread is not a daemon: an adapter nobody closed would keep the
    # interpreter from exiting. Every statement commits on its own (autocommit, WAL),
    # so stopping that thread at exit loses nothing that was acknowledged.
    thread = getattr(conn, "_thread", None)
    if thread is not None and not thread.is_alive():
        thread.daemon = True
    with MapErrors("connect", path):
        try:
            await conn
        except sqlite3.Error:
            await _reap(conn)
            raise
        try:
            await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            if path != ":memory:":
                await _enable_wal(conn, busy_timeout_ms)
                # With WAL, NORMAL loses no committed data on an application crash.
                await conn.execute("PRAGMA synchronous = NORMAL")
            for statement in schema:
                await conn.execute(statement)
            await conn.create_function("redis_glob", 2, _sql_glob, deterministic=True)
        except BaseException:
            await conn.close()
            raise
    return conn
