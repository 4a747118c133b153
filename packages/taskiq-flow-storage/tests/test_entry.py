"""StorageEntry: construction as the guide writes it, the expiry edge, remaining TTL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from taskiq_flow.storage import StorageEntry


def test_guide_construction() -> None:
    entry = StorageEntry(key="status", value={"running": True})
    assert entry.created_at.tzinfo is not None
    assert abs((datetime.now(UTC) - entry.created_at).total_seconds()) < 1
    assert entry.expires_at is None
    assert entry.remaining_ttl() is None
    assert not entry.is_expired()


def test_expiry_edge() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    entry = StorageEntry(key="k", value=1, created_at=now, expires_at=now + timedelta(seconds=10))
    assert not entry.is_expired(now + timedelta(seconds=10) - timedelta(microseconds=1))
    assert entry.is_expired(now + timedelta(seconds=10))  # now >= expires_at
    assert entry.remaining_ttl(now) == 10.0
    assert entry.remaining_ttl(now + timedelta(seconds=10)) == 0.0
    assert entry.remaining_ttl(now + timedelta(days=1)) == 0.0  # never negative
    live = StorageEntry(key="k", value=1, expires_at=datetime.now(UTC) + timedelta(seconds=100))
    remaining = live.remaining_ttl()
    assert remaining is not None
    assert 99 < remaining <= 100


def test_frozen_kw_only_and_aware() -> None:
    entry = StorageEntry(key="k", value=1)
    with pytest.raises(AttributeError):
        entry.value = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        StorageEntry("k", 1)  # type: ignore[misc]
    with pytest.raises(ValueError, match="timezone-aware"):
        StorageEntry(key="k", value=1, expires_at=datetime(2026, 1, 1))


def test_encodes_with_msgspec() -> None:
    entry = StorageEntry(key="k", value=[1], expires_at=datetime(2026, 1, 1, tzinfo=UTC))
    data = msgspec.msgpack.encode(entry)
    assert msgspec.msgpack.decode(data, type=StorageEntry) == entry
