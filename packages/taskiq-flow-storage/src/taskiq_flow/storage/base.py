"""``BaseStorageAdapter``: the contract every backend keeps."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar

from taskiq_flow.storage.codec import decode
from taskiq_flow.storage.entry import StorageEntry
from taskiq_flow.storage.kit.checks import check_key, check_timestamp, check_ttl
from taskiq_flow.storage.kit.lifecycle import AsyncClosing

RawEntry = tuple[bytes | memoryview, float, float | None]
"""A live entry as a backend holds it: encoded value, created and expiry epoch seconds."""

__all__ = ["BaseStorageAdapter", "RawEntry"]


def _datetime(key: str, name: str, value: object) -> datetime:
    return datetime.fromtimestamp(check_timestamp(key, name, value), UTC)


class BaseStorageAdapter(AsyncClosing, ABC):
    """A key-value store with per-key TTL, the same contract on every backend.

    Values are anything msgspec encodes (builtins, ``datetime``, ``UUID``, ``Decimal``,
    ``bytes``, enums, dataclasses, msgspec Structs); they are stored encoded, so mutating
    an object after ``set`` never changes what is stored. Keys are non-empty ``str``.
    An entry is expired at ``now >= expires_at`` and is then invisible to every method.
    Use it as ``async with adapter: ...`` to have it closed.

    Attributes:
        ttl_seconds: The default TTL for writes that pass none (``None``: keep forever).
        expires_natively: ``True`` when the backend itself removes expired entries
            (Redis); ``cleanup()`` without ``ttl_seconds`` then has nothing left to
            remove and returns ``0``.
    """

    ttl_seconds: int | None
    expires_natively: ClassVar[bool] = False

    def __init__(self, ttl_seconds: int | None = None) -> None:
        self.ttl_seconds = check_ttl(ttl_seconds)

    def _ttl(self, ttl_seconds: int | None) -> int | None:
        if ttl_seconds is None:
            return self.ttl_seconds
        return check_ttl(ttl_seconds)

    @abstractmethod
    async def set(self, key: str, value: Any, ttl_seconds: int | None = None) -> None:
        """Store ``value`` under ``key``, replacing any previous value and TTL.

        Args:
            key: Non-empty ``str``.
            value: Anything msgspec encodes.
            ttl_seconds: Seconds to keep it (``int`` > 0); ``None`` uses the adapter's
                default ``ttl_seconds``.

        Raises:
            InvalidKeyError: bad key.
            InvalidTTLError: bad TTL.
            StorageSerializationError: the value cannot be encoded; nothing is written.
            StorageConnectionError: the backend is unreachable.
        """

    @abstractmethod
    async def add(self, key: str, value: Any, ttl_seconds: int | None = None) -> bool:
        """Store ``value`` only if ``key`` is absent or expired; atomic, also across processes.

        Returns:
            Whether this call wrote the value (exactly one of racing callers gets ``True``).
        """

    async def get(self, key: str, default: Any = None, *, type: Any = None) -> Any:
        """The value under ``key``, or ``default`` when missing or expired.

        A stored ``None`` is a value: it is returned as ``None`` whatever ``default`` is.

        Args:
            key: The key.
            default: Returned when there is no live entry.
            type: Decode as this type (msgspec typed decoding: ``UUID``, a Struct, a
                dataclass, ``list[int]``...). Without it values come back as msgpack's
                natural types (see ``taskiq_flow.storage.codec``).

        Raises:
            StorageCorruptError: the stored bytes are not a value; names the key.
            StorageSerializationError: the value does not match ``type``.
        """
        check_key(key)
        raw = await self._read(key)
        if raw is None:
            return default
        return decode(key, raw[0], type)

    async def get_entry(self, key: str, *, type: Any = None) -> StorageEntry | None:
        """The live entry under ``key`` with its timestamps, or ``None``."""
        check_key(key)
        raw = await self._read(key)
        if raw is None:
            return None
        body, created, expires = raw
        return StorageEntry(
            key=key,
            value=decode(key, body, type),
            created_at=_datetime(key, "created_at", created),
            expires_at=None if expires is None else _datetime(key, "expires_at", expires),
        )

    @abstractmethod
    async def _read(self, key: str) -> RawEntry | None:
        """The live entry under a checked ``key``, expired ones treated as absent.

        The one read every backend provides; :meth:`get` and :meth:`get_entry` decode it.
        """

    @abstractmethod
    async def exists(self, key: str) -> bool:
        """Whether a live (unexpired) entry is stored under ``key``."""

    @abstractmethod
    async def delete(self, key: str) -> bool:
        """Remove ``key``; return whether a live entry was there."""

    async def keys(self, pattern: str = "*") -> list[str]:
        r"""Live keys matching the Redis glob ``pattern``, sorted.

        The pattern means the same on every backend (``*``, ``?``, ``[a-z]``, ``[^a]``,
        ``\\`` escapes; see ``taskiq_flow.storage.glob``).
        """
        return sorted({key async for key in self.iter_keys(pattern)})

    @abstractmethod
    def iter_keys(self, pattern: str = "*") -> AsyncIterator[str]:
        """Iterate live keys matching ``pattern`` in bounded memory, in no set order.

        On Redis (``SCAN``) a key may be yielded twice if the server resizes its table
        meanwhile; ``keys()`` removes duplicates.
        """

    @abstractmethod
    async def get_many(self, keys: Iterable[str], *, type: Any = None) -> dict[str, Any]:
        """Values of the live keys among ``keys`` (missing or expired keys are absent)."""

    @abstractmethod
    async def set_many(self, items: Mapping[str, Any], ttl_seconds: int | None = None) -> None:
        """Store every item with one TTL, in one round trip where the backend allows.

        Every value is encoded before anything is written: if one cannot be, the
        ``StorageSerializationError`` names it and nothing of the batch is written.
        """

    @abstractmethod
    async def delete_many(self, keys: Iterable[str]) -> int:
        """Remove ``keys``; return how many live entries were removed."""

    @abstractmethod
    async def cleanup(self, ttl_seconds: int | None = None) -> int:
        """Remove expired entries now; with ``ttl_seconds``, also entries that old or older.

        An entry is that old when ``now >= created_at + ttl_seconds``.

        Returns:
            How many entries this call removed.
        """

    @abstractmethod
    async def close(self) -> None:
        """Release connections. Idempotent; the adapter reconnects if used again."""
