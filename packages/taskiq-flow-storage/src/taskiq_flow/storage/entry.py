"""``StorageEntry``: one stored value with its creation and expiry times."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

__all__ = ["StorageEntry"]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class StorageEntry(msgspec.Struct, frozen=True, kw_only=True):
    """A stored value with its metadata.

    Attributes:
        key: The key, as the caller wrote it (no backend prefix).
        value: The decoded value.
        created_at: When the value was written (aware, UTC). Defaults to now.
        expires_at: When it expires (aware, UTC), or ``None`` to keep it forever.
    """

    key: str
    value: Any
    created_at: datetime = msgspec.field(default_factory=_utcnow)
    expires_at: datetime | None = None

    def __post_init__(self) -> None:
        for name in ("created_at", "expires_at"):
            moment = getattr(self, name)
            if moment is not None and moment.utcoffset() is None:
                msg = f"StorageEntry.{name} must be timezone-aware, got naive {moment!r}"
                raise ValueError(msg)

    def is_expired(self, now: datetime | None = None) -> bool:
        """Whether the entry has expired: at ``now >= expires_at``.

        Args:
            now: The moment to judge at (aware); defaults to the current time.
        """
        if self.expires_at is None:
            return False
        return (now or _utcnow()) >= self.expires_at

    def remaining_ttl(self, now: datetime | None = None) -> float | None:
        """Seconds until expiry (never negative), or ``None`` for an entry without expiry.

        Args:
            now: The moment to measure from (aware); defaults to the current time.
        """
        if self.expires_at is None:
            return None
        return max(0.0, (self.expires_at - (now or _utcnow())).total_seconds())
