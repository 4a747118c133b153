"""``Spool``: a durable, append-only local queue of writes a store could not take.

When the store is unreachable, a writer (``StorageMiddleware``, ``StorageResultBackend``)
appends what it could not write to its spool — a SQLite file on local disk — **before**
it lets the task finish, and writes the spool's items to the store once it answers
again. A process killed meanwhile leaves its spool file behind; the next process that
opens spools in the same directory for the same store adopts the file, writes its items
and removes it.

Layout of a spool directory::

    spool-{host}-{pid}-{token}.sqlite3        the items (WAL mode: -wal/-shm beside it)
    spool-{host}-{pid}-{token}.sqlite3.lock   held (flock) by the one process that owns it

- **One owner per file.** The owner holds an exclusive ``flock`` on the ``.lock`` file for
  as long as it uses the spool; the kernel releases it when the process dies (even by
  SIGKILL), so "can I lock it?" is the same question as "is its owner gone?" — no pid
  reuse to guess about. The lock file is made under a temporary name, locked, then
  hard-linked into place, so a lock file is never visible unlocked to another process.
- **Same store only.** Each file records the store it belongs to (``store``, a string the
  writer derives from its adapter: a Redis URL without password and key prefix, an
  absolute SQLite path); a file of another store is left alone.
- **Append-only.** Items are appended in order (``seq``); the owner removes a run of
  items from the head once the store has them. An item written twice (a crash between
  writing and removing) is written with the same value: records are idempotent.
- **Bounded.** ``max_bytes`` (keys plus encoded values) per file; an append that would
  exceed it is refused (``append`` returns ``False``) and the caller keeps the item
  elsewhere (the writers keep it in memory, counted and logged).
- Durability: SQLite WAL with ``synchronous=NORMAL``: an appended item survives the
  process being killed; after a power loss the last appends may be lost.

POSIX only (``fcntl.flock``); :data:`SPOOL_SUPPORTED` is ``False`` elsewhere and the
writers then keep failed writes in memory only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import aiosqlite

from taskiq_flow.storage._sqlite_support import MapErrors, open_connection
from taskiq_flow.storage.codec import decode, encode

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["DEFAULT_SPOOL_MAX_BYTES", "SPOOL_SUPPORTED", "Spool", "SpooledItem"]

logger = logging.getLogger("taskiq_flow.storage")

SPOOL_SUPPORTED = fcntl is not None
"""Whether spools work on this platform (they need ``fcntl.flock``)."""

DEFAULT_SPOOL_MAX_BYTES = 256 * 1024 * 1024
"""Default bound of one spool file: 256 MiB of keys and encoded values."""

_PREFIX = "spool-"
_SUFFIX = ".sqlite3"
_FORMAT = "1"
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS spool_meta (name TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS spool_items ("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " key TEXT NOT NULL,"
    " value BLOB NOT NULL,"
    " ttl INTEGER,"
    " spooled_at REAL NOT NULL)",
)
_INSERT = "INSERT INTO spool_items (key, value, ttl, spooled_at) VALUES (?, ?, ?, ?)"


class SpooledItem(NamedTuple):
    """One item waiting in a spool: its position, key, value and TTL (``None``: default)."""

    seq: int
    key: str
    value: Any
    ttl_seconds: int | None


def _take_new_lock(path: Path) -> int | None:
    """Create ``path`` already locked; ``None`` if it exists (someone else's)."""
    assert fcntl is not None  # noqa: S101 - callers check SPOOL_SUPPORTED
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.link(temp, path)  # never replaces: FileExistsError if it is there
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    os.unlink(temp)
    return fd


def _take_existing_lock(path: Path) -> int | None:
    """Lock the existing ``path``; ``None`` while its owner lives (or if it vanished)."""
    assert fcntl is not None  # noqa: S101 - callers check SPOOL_SUPPORTED
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        with contextlib.suppress(FileExistsError):
            return _take_new_lock(path)  # a spool without its lock file: take it over
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # Locked the file we opened; is it still the one under that name?
        if os.fstat(fd).st_ino != os.stat(path).st_ino:
            os.close(fd)
            return None
    except OSError:
        os.close(fd)
        return None
    return fd


class Spool:
    """One spool file, owned (locked) by this process. Build with :meth:`create` or :meth:`adopt`.

    Attributes:
        path: the SQLite file.
        store: the store its items belong to.
        count: items waiting in it.
        size: bytes of keys and encoded values waiting in it.
        max_bytes: the bound ``append`` keeps to.
    """

    def __init__(
        self, path: Path, store: str, lock_fd: int, conn: aiosqlite.Connection, max_bytes: int
    ) -> None:
        self.path = path
        self.store = store
        self.max_bytes = max_bytes
        self.count = 0
        self.size = 0
        self._lock_fd: int | None = lock_fd
        self._conn: aiosqlite.Connection | None = conn

    def __repr__(self) -> str:
        return f"Spool({str(self.path)!r}, count={self.count}, size={self.size})"

    @classmethod
    async def create(
        cls, directory: str | os.PathLike[str], store: str, *, max_bytes: int
    ) -> Spool:
        """A new, empty spool file of this process in ``directory`` (created if missing).

        Raises:
            OSError: the directory cannot be created or written.
            StorageConnectionError: SQLite cannot create the file.
        """
        path, fd = await asyncio.to_thread(_new_spool_name, Path(directory))
        try:
            conn = await open_connection(str(path), _SCHEMA)
            meta = {
                "format": _FORMAT,
                "store": store,
                "host": socket.gethostname(),
                "pid": str(os.getpid()),
                "created_at": str(time.time()),
            }
            with MapErrors("spool create", str(path)):
                await conn.executemany(
                    "INSERT OR REPLACE INTO spool_meta (name, value) VALUES (?, ?)",
                    list(meta.items()),
                )
        except BaseException:
            _unlock(fd)
            _remove_files(path)
            raise
        return cls(path, store, fd, conn, max_bytes)

    @classmethod
    async def adopt(
        cls,
        directory: str | os.PathLike[str],
        store: str,
        *,
        max_bytes: int,
        skip: Collection[Path] = (),
    ) -> list[Spool]:
        """Take over every spool of ``store`` in ``directory`` whose owner is gone.

        Files owned by a live process, of another store, or unreadable are left alone;
        an empty one is removed. Never raises for a file (a directory that does not
        exist gives ``[]``).
        """
        names = await asyncio.to_thread(_list_spools, Path(directory))
        adopted = []
        for path in names:
            if path in skip:
                continue
            spool = await cls._adopt_one(path, store, max_bytes)
            if spool is not None:
                adopted.append(spool)
        return adopted

    @classmethod
    async def _adopt_one(cls, path: Path, store: str, max_bytes: int) -> Spool | None:
        fd = await asyncio.to_thread(_lock_orphan, path)
        if fd is None:
            return None
        conn: aiosqlite.Connection | None = None
        try:
            conn = await open_connection(str(path), _SCHEMA)
            meta = await conn.execute_fetchall("SELECT name, value FROM spool_meta")
            rows: dict[str, str] = {str(name): str(value) for name, value in meta}
            if rows.get("store") != store:
                await conn.close()
                _unlock(fd)  # another store's: not ours to touch
                return None
            spool = cls(path, store, fd, conn, max_bytes)
            (count, size), *_ = await conn.execute_fetchall(
                "SELECT count(*), total(length(CAST(key AS BLOB)) + length(value)) FROM spool_items"
            )
        except Exception as exc:
            logger.warning("taskiq-flow: cannot adopt the spool %s: %s", path, exc)
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
            _unlock(fd)
            return None
        spool.count, spool.size = int(count), int(size)
        return spool

    async def append(self, items: Mapping[str, Any], ttl_seconds: int | None) -> bool:
        """Append ``items`` (one transaction) unless that would exceed ``max_bytes``.

        Returns:
            ``True`` once they are on disk; ``False`` if the spool is full (nothing
            appended).

        Raises:
            StorageSerializationError: a value msgspec cannot encode (nothing appended).
            StorageConnectionError: the file cannot be written (disk full, removed...).
        """
        rows = [(key, encode(key, value)) for key, value in items.items()]
        size = sum(len(key.encode("utf-8", "surrogatepass")) + len(blob) for key, blob in rows)
        if self.size + size > self.max_bytes:
            return False
        conn = self._connection()
        now = time.time()
        with MapErrors("spool append", str(self.path)):
            if len(rows) == 1:
                await conn.execute(_INSERT, (rows[0][0], rows[0][1], ttl_seconds, now))
            else:
                await conn.execute("BEGIN IMMEDIATE")
                try:
                    await conn.executemany(
                        _INSERT, [(key, blob, ttl_seconds, now) for key, blob in rows]
                    )
                    await conn.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(Exception):
                        await conn.execute("ROLLBACK")
                    raise
        self.count += len(rows)
        self.size += size
        return True

    async def head(self, limit: int) -> list[SpooledItem]:
        """The oldest ``limit`` items, oldest first (a value that cannot be decoded is skipped).

        Raises:
            StorageConnectionError: the file cannot be read.
        """
        with MapErrors("spool read", str(self.path)):
            rows = list(
                await self._connection().execute_fetchall(
                    "SELECT seq, key, value, ttl FROM spool_items ORDER BY seq LIMIT ?", (limit,)
                )
            )
        if not rows:
            self.count = self.size = 0
            return []
        items = []
        for seq, key, blob, ttl in rows:
            try:
                items.append(SpooledItem(seq, key, decode(key, blob), ttl))
            except Exception:  # noqa: S112 - a torn item must not block the ones after it
                continue
        if not items:
            await self.remove_through(rows[-1][0])  # only undecodable items: drop them
        return items

    async def remove_through(self, seq: int) -> None:
        """Remove every item up to and including ``seq`` (the store has them)."""
        with MapErrors("spool remove", str(self.path)):
            rows = list(
                await self._connection().execute_fetchall(
                    "DELETE FROM spool_items WHERE seq <= ? "
                    "RETURNING length(CAST(key AS BLOB)) + length(value)",
                    (seq,),
                )
            )
        self.count = max(0, self.count - len(rows))
        self.size = max(0, self.size - sum(int(n) for (n,) in rows))
        if self.count == 0:
            self.size = 0

    async def release(self) -> None:
        """Close the file and give up ownership; an empty spool is removed first.

        A spool still holding items stays on disk for the next process to adopt.
        """
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()
        if self._lock_fd is None:
            return
        if self.count == 0:
            _remove_files(self.path)
            _unlock(self._lock_fd, self.path.with_name(self.path.name + ".lock"))
        else:
            _unlock(self._lock_fd)
        self._lock_fd = None

    def _connection(self) -> aiosqlite.Connection:
        if self._conn is None:
            msg = f"spool {self.path} is released"
            raise RuntimeError(msg)
        return self._conn


def _new_spool_name(folder: Path) -> tuple[Path, int]:
    """A fresh spool file name in ``folder`` (created if missing), its lock held."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{_PREFIX}{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}{_SUFFIX}"
    path = folder / name
    fd = _take_new_lock(path.with_name(path.name + ".lock"))
    assert fd is not None  # noqa: S101 - a fresh random name
    return path, fd


def _list_spools(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if _is_spool(p.name))
    except OSError:
        return []


def _lock_orphan(path: Path) -> int | None:
    """The lock of the spool ``path`` if its owner is gone and the file is still there."""
    lock = path.with_name(path.name + ".lock")
    try:
        fd = _take_existing_lock(lock)
    except OSError:
        return None
    if fd is not None and not path.exists():  # consumed by another process just now
        _unlock(fd, lock)
        return None
    return fd


def _is_spool(name: str) -> bool:
    return name.startswith(_PREFIX) and name.endswith(_SUFFIX)


def _remove_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(OSError):
            os.unlink(f"{path}{suffix}")


def _unlock(fd: int, remove: Path | None = None) -> None:
    """Release the lock (removing its file first, while still held, if asked)."""
    if remove is not None:
        with contextlib.suppress(OSError):
            os.unlink(remove)
    with contextlib.suppress(OSError):
        os.close(fd)
