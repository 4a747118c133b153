"""``SQLiteStorageAdapter``: one table in a SQLite file (or ``:memory:``) via aiosqlite.

The connection opens lazily, inside the running event loop, on first use. The file is
put in WAL mode with a ``busy_timeout``, so several processes can share it: writers queue
for the lock instead of failing. Every statement is parameterised; glob patterns are
matched by :mod:`taskiq_flow.storage.glob` registered as an SQL function (after an
index range on the pattern's literal prefix), never spliced into SQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import aiosqlite

from taskiq_flow.storage._sqlite_support import (
    BUSY_TIMEOUT_MS,
    LIVE,
    MapErrors,
    key_query,
    live_at,
    open_connection,
    rollback,
    rollback_then_release,
)
from taskiq_flow.storage.base import BaseStorageAdapter, RawEntry
from taskiq_flow.storage.codec import decode, encode
from taskiq_flow.storage.errors import StorageConfigError, StorageCorruptError
from taskiq_flow.storage.kit.checks import (
    check_key,
    check_keys,
    check_pattern,
    check_timestamp,
    check_ttl,
)
from taskiq_flow.storage.kit.urls import sqlite_location

__all__ = ["SQLiteStorageAdapter"]

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS taskiq_flow_storage ("
    " key TEXT PRIMARY KEY NOT NULL,"
    " value BLOB NOT NULL,"
    " created_at REAL NOT NULL,"
    " expires_at REAL"
    ") WITHOUT ROWID",
    # cleanup() deletes by expiry and by age: one index for each.
    "CREATE INDEX IF NOT EXISTS taskiq_flow_storage_expires_at"
    " ON taskiq_flow_storage (expires_at) WHERE expires_at IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS taskiq_flow_storage_created_at ON taskiq_flow_storage (created_at)",
)
_UPSERT = (
    "INSERT INTO taskiq_flow_storage (key, value, created_at, expires_at) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (key) DO UPDATE SET value = excluded.value,"
    " created_at = excluded.created_at, expires_at = excluded.expires_at"
)
# One statement, so atomic across connections and processes: it writes when the key is
# absent, or present but expired (expires_at <= now, now being the new created_at).
_ADD = (
    _UPSERT + " WHERE taskiq_flow_storage.expires_at IS NOT NULL"
    " AND taskiq_flow_storage.expires_at <= excluded.created_at"
)
_SELECT = "SELECT value, created_at, expires_at FROM taskiq_flow_storage WHERE key = ?"
_EXISTS = (
    "SELECT 1 FROM taskiq_flow_storage WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)"
)
_DELETE = "DELETE FROM taskiq_flow_storage WHERE key = ? RETURNING expires_at"
_DELETE_IF_EXPIRED = "DELETE FROM taskiq_flow_storage WHERE key = ? AND expires_at <= ?"
_CLEANUP = "DELETE FROM taskiq_flow_storage WHERE expires_at <= ?"
_CLEANUP_AGE = _CLEANUP + " OR created_at <= ?"
_CHUNK = 500  # keys per IN (...) list, far below SQLite's bound-variable limit
_PAGE = 500  # keys per iter_keys() round trip


class SQLiteStorageAdapter(BaseStorageAdapter):
    """Entries in the table ``taskiq_flow_storage`` of a SQLite database.

    Several adapters, in this or other processes, may share one file; ``add`` is one
    statement and so atomic across all of them. ``:memory:`` gives a database private to
    this adapter.

    Args:
        path: A file path, ``":memory:"``, or a ``sqlite:///relative.db`` /
            ``sqlite:////absolute.db`` URL (``sqlite+aiosqlite:///`` too). The file is
            created on first use; its directory is not (a missing one is an error that
            names it).
        ttl_seconds: Default TTL for writes that pass none; ``None`` keeps forever.
        db_url: Another name for ``path`` (the earlier taskiq-flow's keyword); give one.
        busy_timeout: Seconds a statement waits for another connection's lock before
            failing with a ``StorageConnectionError`` that says the file is locked.

    Raises:
        InvalidStorageURLError: ``path`` is not a path or ``sqlite:`` URL.
        StorageConfigError: both ``path`` and ``db_url`` given, or a bad ``busy_timeout``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        ttl_seconds: int | None = None,
        db_url: str | os.PathLike[str] | None = None,
        busy_timeout: float = BUSY_TIMEOUT_MS / 1000,
    ) -> None:
        super().__init__(ttl_seconds)
        if path is not None and db_url is not None:
            msg = "give the database as path or as db_url, not both"
            raise StorageConfigError(msg)
        if (
            isinstance(busy_timeout, bool)
            or not isinstance(busy_timeout, int | float)
            or not busy_timeout >= 0
        ):
            msg = f"busy_timeout must be a number of seconds >= 0, got {busy_timeout!r}"
            raise StorageConfigError(msg)
        location = path if path is not None else db_url
        self.path = sqlite_location(":memory:" if location is None else location)
        self.busy_timeout = float(busy_timeout)
        self._conn: aiosqlite.Connection | None = None
        # One connection serves every task; the lock keeps a batch's transaction from
        # swallowing another task's statement (and the connect from running twice).
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"SQLiteStorageAdapter(path={self.path!r}, ttl_seconds={self.ttl_seconds!r})"

    async def _connect(self) -> aiosqlite.Connection:
        if self._conn is None:
            self._conn = await open_connection(
                self.path, _SCHEMA, busy_timeout_ms=int(self.busy_timeout * 1000)
            )
        return self._conn

    async def set(self, key: str, value: Any, ttl_seconds: int | None = None) -> None:
        """Store ``value`` under ``key`` (see :meth:`BaseStorageAdapter.set`)."""
        check_key(key)
        ttl = self._ttl(ttl_seconds)
        blob = encode(key, value)
        async with self._lock:
            conn = self._conn or await self._connect()
            now = time.time()
            with MapErrors("set", self.path):
                await conn.execute(_UPSERT, (key, blob, now, None if ttl is None else now + ttl))

    async def add(self, key: str, value: Any, ttl_seconds: int | None = None) -> bool:
        """Store only if absent or expired, in one statement (atomic across processes)."""
        check_key(key)
        ttl = self._ttl(ttl_seconds)
        blob = encode(key, value)
        async with self._lock:
            conn = self._conn or await self._connect()
            now = time.time()
            with MapErrors("add", self.path):
                cursor = await conn.execute(
                    _ADD, (key, blob, now, None if ttl is None else now + ttl)
                )
                return bool(cursor.rowcount == 1)

    async def _read(self, key: str) -> RawEntry | None:
        async with self._lock:
            conn = self._conn or await self._connect()
            with MapErrors("get", self.path):
                rows = list(await conn.execute_fetchall(_SELECT, (key,)))
                if not rows:
                    return None
                blob, created, expires = rows[0]
                if expires is not None:
                    expires = check_timestamp(key, "expires_at", expires)
                now = time.time()
                if expires is not None and now >= expires:
                    # Lazy expiry; the condition spares a fresh value another process wrote.
                    await conn.execute(_DELETE_IF_EXPIRED, (key, now))
                    return None
        if not isinstance(blob, bytes):
            raise StorageCorruptError(key, f"stored value is {type(blob).__name__}, not bytes")
        return blob, created, expires

    async def exists(self, key: str) -> bool:
        """Whether a live entry exists."""
        check_key(key)
        async with self._lock:
            conn = self._conn or await self._connect()
            with MapErrors("exists", self.path):
                return bool(list(await conn.execute_fetchall(_EXISTS, (key, time.time()))))

    async def delete(self, key: str) -> bool:
        """Remove ``key``; whether a live entry was there."""
        check_key(key)
        async with self._lock:
            conn = self._conn or await self._connect()
            with MapErrors("delete", self.path):
                rows = list(await conn.execute_fetchall(_DELETE, (key,)))
        now = time.time()
        return any(live_at(expires, now) for (expires,) in rows)

    async def keys(self, pattern: str = "*") -> list[str]:
        """Live keys matching the Redis glob ``pattern``, sorted."""
        where, params = key_query(check_pattern(pattern))
        sql = f"SELECT key FROM taskiq_flow_storage WHERE {where} ORDER BY key"  # noqa: S608 - fixed fragments
        async with self._lock:
            conn = self._conn or await self._connect()
            with MapErrors("keys", self.path):
                rows = await conn.execute_fetchall(sql, params)
        return [key for (key,) in rows]

    async def iter_keys(self, pattern: str = "*") -> AsyncIterator[str]:
        """Iterate live keys matching ``pattern``, ``_PAGE`` keys per query, in key order."""
        where, params = key_query(check_pattern(pattern))
        first = f"SELECT key FROM taskiq_flow_storage WHERE {where} ORDER BY key LIMIT ?"  # noqa: S608 - fixed fragments
        after = (
            f"SELECT key FROM taskiq_flow_storage WHERE key > ? AND {where} ORDER BY key LIMIT ?"  # noqa: S608 - fixed fragments
        )
        last: str | None = None
        while True:
            async with self._lock:
                conn = self._conn or await self._connect()
                with MapErrors("iter_keys", self.path):
                    if last is None:
                        rows = list(await conn.execute_fetchall(first, [*params, _PAGE]))
                    else:
                        rows = list(await conn.execute_fetchall(after, [last, *params, _PAGE]))
            for (key,) in rows:
                yield key
            if len(rows) < _PAGE:
                return
            last = rows[-1][0]

    async def get_many(self, keys: Iterable[str], *, type: Any = None) -> dict[str, Any]:
        """Values of the live keys among ``keys``, ``_CHUNK`` keys per query."""
        wanted = list(dict.fromkeys(check_keys(keys)))
        stored: dict[str, Any] = {}
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start : start + _CHUNK]
            sql = (
                "SELECT key, value FROM taskiq_flow_storage WHERE key IN ("  # noqa: S608 - placeholders only
                + ", ".join("?" * len(chunk))
                + f") AND {LIVE}"
            )
            async with self._lock:
                conn = self._conn or await self._connect()
                with MapErrors("get_many", self.path):
                    rows = await conn.execute_fetchall(sql, [*chunk, time.time()])
            for key, blob in rows:
                if not isinstance(blob, bytes):
                    raise StorageCorruptError(key, "stored value is not bytes")
                stored[key] = decode(key, blob, type)
        # In the order asked for, as the other backends answer.
        return {key: stored[key] for key in wanted if key in stored}

    @contextlib.asynccontextmanager
    async def _transaction(self, operation: str) -> AsyncIterator[aiosqlite.Connection]:
        """The connection inside ``BEGIN IMMEDIATE`` ... ``COMMIT``, with the lock held.

        Every exception rolls back, cancellation included: BEGIN is inside the ``try``
        because cancelling an await does not stop its statement (aiosqlite's thread still
        runs it, e.g. once another connection's write lock is released).
        """
        await self._lock.acquire()
        release = True
        try:
            with MapErrors(operation, self.path):
                conn = self._conn or await self._connect()
                try:
                    # IMMEDIATE takes the write lock up front, so busy_timeout applies.
                    await conn.execute("BEGIN IMMEDIATE")
                    yield conn
                    await conn.execute("COMMIT")
                except asyncio.CancelledError:
                    release = False  # released once the rollback is done
                    rollback_then_release(conn, self._lock)
                    raise
                except BaseException:
                    await rollback(conn)
                    raise
        finally:
            if release:
                self._lock.release()

    async def set_many(self, items: Mapping[str, Any], ttl_seconds: int | None = None) -> None:
        """Store every item in one transaction; nothing is written if one value fails."""
        ttl = self._ttl(ttl_seconds)
        blobs = [(check_key(key), encode(key, value)) for key, value in items.items()]
        if not blobs:
            return
        async with self._transaction("set_many") as conn:
            now = time.time()
            expires = None if ttl is None else now + ttl
            await conn.executemany(_UPSERT, [(key, blob, now, expires) for key, blob in blobs])

    async def delete_many(self, keys: Iterable[str]) -> int:
        """Remove ``keys`` in one transaction; how many live entries were removed."""
        wanted = list(dict.fromkeys(check_keys(keys)))
        if not wanted:
            return 0
        removed = 0
        async with self._transaction("delete_many") as conn:
            now = time.time()
            for start in range(0, len(wanted), _CHUNK):
                chunk = wanted[start : start + _CHUNK]
                sql = (
                    "DELETE FROM taskiq_flow_storage WHERE key IN ("  # noqa: S608 - placeholders only
                    + ", ".join("?" * len(chunk))
                    + ") RETURNING expires_at"
                )
                rows = await conn.execute_fetchall(sql, chunk)
                removed += sum(1 for (exp,) in rows if live_at(exp, now))
        return removed

    async def cleanup(self, ttl_seconds: int | None = None) -> int:
        """Remove expired entries, and with ``ttl_seconds`` entries at least that old."""
        age = check_ttl(ttl_seconds)
        async with self._lock:
            conn = self._conn or await self._connect()
            now = time.time()
            with MapErrors("cleanup", self.path):
                if age is None:
                    cursor = await conn.execute(_CLEANUP, (now,))
                else:
                    cursor = await conn.execute(_CLEANUP_AGE, (now, now - age))
                return int(cursor.rowcount)

    async def close(self) -> None:
        """Close the connection (idempotent; the next call reconnects)."""
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                with MapErrors("close", self.path):
                    await conn.close()
