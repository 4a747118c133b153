"""The entry codec: round trips, and corrupt bytes read as a miss."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from taskiq_flow.cache.codec import CacheEntry, decode_entry, encode_entry
from taskiq_flow.cache.errors import CacheSerializationError

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=msgpack_values, soft=st.none() | st.floats(0, 2e9))
def test_round_trip(value: Any, soft: float | None) -> None:
    entry = decode_entry("k", encode_entry("k", value, soft))
    assert entry == CacheEntry(soft, value)


def test_rich_types_decode_to_their_msgpack_form() -> None:
    now = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    ident = uuid.uuid4()
    entry = decode_entry("k", encode_entry("k", [now, ident, Decimal("1.5")]))
    assert entry is not None
    assert entry.value == [now, str(ident), "1.5"]


@given(payload=st.binary(max_size=64))
@example(payload=b"\x92\x00\xa6\x00\x00\x00\x00\x00\x80")  # invalid UTF-8 in a str
def test_arbitrary_bytes_never_raise(payload: bytes) -> None:
    entry = decode_entry("k", payload)
    assert entry is None or isinstance(entry, CacheEntry)


def test_corrupt_bytes_are_none_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    assert decode_entry("the-key", b"\xc1") is None
    assert decode_entry("the-key", msgspec.msgpack.encode({"not": "an entry"})) is None
    assert "the-key" in caplog.text


def test_unencodable_names_key_and_type() -> None:
    class Opaque:
        pass

    with pytest.raises(CacheSerializationError, match=r"'dict'.*'k1'.*Opaque") as info:
        encode_entry("k1", {"x": Opaque()})
    assert info.value.key == "k1"
    assert isinstance(info.value, TypeError)
