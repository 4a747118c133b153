"""The storage contract (DESIGN.md §2): the same assertions on memory, Redis and SQLite."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import time
import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from datetime import time as clock_time
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskiq_flow.storage import (
    BaseStorageAdapter,
    InMemoryStorageAdapter,
    InvalidKeyError,
    InvalidTTLError,
    StorageEntry,
    StorageError,
    StorageSerializationError,
)

from .conftest import StorageFactory


class Colour(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


@dataclasses.dataclass
class Point:
    x: int
    y: float


class Run(msgspec.Struct, frozen=True):
    run_id: uuid.UUID
    started: datetime
    tags: frozenset[str]


class Pair(msgspec.Struct, array_like=True):
    left: int
    right: str


UID = uuid.UUID("12345678-1234-5678-1234-567812345678")
AWARE = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)

# (value, the type to decode it as, what an untyped get() returns)
ROUND_TRIPS: list[tuple[Any, Any, Any]] = [
    (None, None, None),
    (True, bool, True),
    (0, int, 0),
    (-(2**63), int, -(2**63)),
    (2**64 - 1, int, 2**64 - 1),
    (1.5, float, 1.5),
    (float("inf"), float, float("inf")),
    ("", str, ""),
    ("naïve ✓ 🚀", str, "naïve ✓ 🚀"),
    (b"\x00\xff", bytes, b"\x00\xff"),
    (bytearray(b"ab"), bytearray, b"ab"),
    ([1, "a", None], list[Any], [1, "a", None]),
    ((1, "a"), tuple[int, str], [1, "a"]),
    ({3, 1}, set[int], None),  # set order is not fixed; checked typed only
    (frozenset({"a"}), frozenset[str], ["a"]),
    ({"a": {"b": [1, 2]}, "n": None}, dict[str, Any], {"a": {"b": [1, 2]}, "n": None}),
    ({1: "int keys"}, dict[int, str], {1: "int keys"}),
    (AWARE, datetime, AWARE),
    (AWARE.astimezone(timezone(timedelta(hours=5))), datetime, AWARE),
    (datetime(2026, 1, 2, 3, 4, 5), datetime, "2026-01-02T03:04:05"),
    (date(2026, 1, 2), date, "2026-01-02"),
    (clock_time(3, 4, 5), clock_time, "03:04:05"),
    (timedelta(days=1, seconds=2), timedelta, "P1DT2S"),
    (UID, uuid.UUID, str(UID)),
    (Decimal("1.10"), Decimal, "1.10"),
    (Colour.RED, Colour, "red"),
    (Level.HIGH, Level, 3),
    (Point(1, 2.5), Point, {"x": 1, "y": 2.5}),
    (
        Run(run_id=UID, started=AWARE, tags=frozenset({"t"})),
        Run,
        {"run_id": str(UID), "started": AWARE, "tags": ["t"]},
    ),
    (Pair(1, "a"), Pair, [1, "a"]),
]


async def _wait_until(moment: float) -> None:
    while time.time() < moment:
        await asyncio.sleep(min(0.05, max(0.0, moment - time.time())))


# ---------------------------------------------------------------- basic methods


async def test_set_get_overwrite(storage: BaseStorageAdapter) -> None:
    assert await storage.get("k") is None
    assert await storage.get("k", "fallback") == "fallback"
    await storage.set("k", {"status": "running"})
    assert await storage.get("k") == {"status": "running"}
    await storage.set("k", [1, 2])
    assert await storage.get("k") == [1, 2]


async def test_stored_none_is_a_value(storage: BaseStorageAdapter) -> None:
    await storage.set("none", None)
    assert await storage.get("none", default="missing") is None
    assert await storage.exists("none")
    assert await storage.get_many(["none", "absent"]) == {"none": None}
    entry = await storage.get_entry("none")
    assert entry is not None
    assert entry.value is None
    assert await storage.get_entry("absent") is None
    assert not await storage.exists("absent")


async def test_exists_delete(storage: BaseStorageAdapter) -> None:
    assert not await storage.delete("k")
    await storage.set("k", 1)
    assert await storage.exists("k")
    assert await storage.delete("k")
    assert not await storage.exists("k")
    assert not await storage.delete("k")
    assert await storage.get("k", 0) == 0


async def test_add_only_when_absent(storage: BaseStorageAdapter) -> None:
    assert await storage.add("claim", "first")
    assert not await storage.add("claim", "second")
    assert await storage.get("claim") == "first"
    await storage.delete("claim")
    assert await storage.add("claim", "third", ttl_seconds=60)
    entry = await storage.get_entry("claim")
    assert entry is not None
    assert entry.value == "third"
    assert entry.expires_at is not None


async def test_get_entry_timestamps(storage: BaseStorageAdapter) -> None:
    before = datetime.now(UTC)
    await storage.set("k", {"v": 1}, ttl_seconds=600)
    after = datetime.now(UTC)
    entry = await storage.get_entry("k")
    assert isinstance(entry, StorageEntry)
    assert entry.key == "k"
    assert entry.value == {"v": 1}
    assert entry.created_at.tzinfo is not None
    assert before - timedelta(milliseconds=5) <= entry.created_at <= after
    assert entry.expires_at is not None
    assert abs((entry.expires_at - entry.created_at).total_seconds() - 600) < 0.01
    remaining = entry.remaining_ttl()
    assert remaining is not None
    assert 590 < remaining <= 600
    assert not entry.is_expired()

    await storage.set("k", {"v": 2})  # a write without TTL drops the old TTL
    entry = await storage.get_entry("k")
    assert entry is not None
    assert entry.expires_at is None
    assert entry.remaining_ttl() is None


async def test_default_ttl_applies_and_explicit_ttl_wins(make_storage: StorageFactory) -> None:
    storage = make_storage(ttl_seconds=100)
    assert storage.ttl_seconds == 100
    await storage.set("default", 1)
    await storage.set("explicit", 1, ttl_seconds=5000)
    await storage.set_many({"batch": 1})
    await storage.add("added", 1)
    for key, ttl in [("default", 100), ("explicit", 5000), ("batch", 100), ("added", 100)]:
        entry = await storage.get_entry(key)
        assert entry is not None
        assert entry.expires_at is not None
        assert abs((entry.expires_at - entry.created_at).total_seconds() - ttl) < 0.01, key


async def test_keys_and_iter_keys(storage: BaseStorageAdapter) -> None:
    await storage.set_many(
        {
            "pipeline:run1:task:a": 1,
            "pipeline:run1:task:b": 2,
            "pipeline:run2:task:a": 3,
            "task:x": 4,
        }
    )
    assert await storage.keys() == [
        "pipeline:run1:task:a",
        "pipeline:run1:task:b",
        "pipeline:run2:task:a",
        "task:x",
    ]
    assert await storage.keys("pipeline:run1:*") == ["pipeline:run1:task:a", "pipeline:run1:task:b"]
    assert await storage.keys("pipeline:run?:task:a") == [
        "pipeline:run1:task:a",
        "pipeline:run2:task:a",
    ]
    assert await storage.keys("*:[ab]") == [
        "pipeline:run1:task:a",
        "pipeline:run1:task:b",
        "pipeline:run2:task:a",
    ]
    assert await storage.keys("task:x") == ["task:x"]
    assert await storage.keys("nothing*") == []
    assert await storage.keys("") == []
    assert sorted([key async for key in storage.iter_keys("pipeline:*:a")]) == [
        "pipeline:run1:task:a",
        "pipeline:run2:task:a",
    ]


async def test_iter_keys_many_pages(storage: BaseStorageAdapter) -> None:
    keys = {f"bulk:{i:05d}": i for i in range(1234)}
    await storage.set_many(keys)
    await storage.set("other", 0)
    seen = [key async for key in storage.iter_keys("bulk:*")]
    assert set(seen) == set(keys)
    assert len(await storage.keys("bulk:*")) == 1234
    assert await storage.keys("bulk:0123?") == [f"bulk:{i:05d}" for i in range(1230, 1234)]


async def test_get_many(storage: BaseStorageAdapter) -> None:
    assert await storage.get_many([]) == {}
    await storage.set_many({"a": 1, "b": None, "c": [3]})
    assert await storage.get_many(["c", "missing", "a", "b", "a"]) == {"c": [3], "a": 1, "b": None}
    assert list(await storage.get_many(iter(["c", "a"]))) == ["c", "a"]
    many = {f"m{i}": i for i in range(1500)}
    await storage.set_many(many)
    assert await storage.get_many(many) == many


async def test_set_many_with_ttl(storage: BaseStorageAdapter) -> None:
    await storage.set_many({}, ttl_seconds=10)
    await storage.set_many({"a": 1, "b": 2}, ttl_seconds=30)
    for key in "ab":
        entry = await storage.get_entry(key)
        assert entry is not None
        assert entry.expires_at is not None
        assert abs((entry.expires_at - entry.created_at).total_seconds() - 30) < 0.01
    many = {f"m{i}": i for i in range(2500)}  # more than one command's worth on Redis
    await storage.set_many(many, ttl_seconds=30)
    assert await storage.get_many(many) == many
    entry = await storage.get_entry("m2499")
    assert entry is not None
    assert entry.expires_at is not None
    await storage.set_many({"a": 10})  # no TTL: replaces the old TTL
    entry = await storage.get_entry("a")
    assert entry is not None
    assert entry.value == 10
    assert entry.expires_at is None


async def test_delete_many(storage: BaseStorageAdapter) -> None:
    assert await storage.delete_many([]) == 0
    await storage.set_many({"a": 1, "b": 2, "c": 3})
    assert await storage.delete_many(["a", "b", "a", "zz"]) == 2
    assert await storage.keys() == ["c"]
    many = [f"d{i}" for i in range(1500)]
    await storage.set_many(dict.fromkeys(many, 0))
    assert await storage.delete_many(many) == 1500
    assert await storage.keys() == ["c"]


async def test_cleanup_of_fresh_entries_removes_nothing(storage: BaseStorageAdapter) -> None:
    await storage.set_many({"a": 1, "b": 2}, ttl_seconds=100)
    await storage.set("c", 3)
    assert await storage.cleanup() == 0
    assert await storage.cleanup(ttl_seconds=3600) == 0
    assert await storage.keys() == ["a", "b", "c"]


async def test_close_is_idempotent_and_context_manager(make_storage: StorageFactory) -> None:
    storage = make_storage()
    async with storage as entered:
        assert entered is storage
        await storage.set("k", 1)
    await storage.close()
    await storage.close()
    assert await storage.get("k") == 1  # used again after close(): reconnects
    await storage.close()


# ---------------------------------------------------------------- expiry


async def test_expiry_edge_and_cleanup_counts(storage: BaseStorageAdapter) -> None:
    await storage.set_many({"old1": 1, "old2": 2})
    await storage.set("short", "s", ttl_seconds=1)
    await storage.set_many({"short_batch": "b"}, ttl_seconds=1)
    assert await storage.add("short_add", "a", ttl_seconds=1)
    await storage.set_many({"idle1": 1, "idle2": 2}, ttl_seconds=1)  # never read again
    entries = [await storage.get_entry(key) for key in ("short", "short_batch", "short_add")]
    edges = [e.expires_at.timestamp() for e in entries if e is not None and e.expires_at]
    assert len(edges) == 3
    entry = entries[0]
    assert entry is not None
    assert entry.expires_at is not None
    edge = edges[0]

    # Before the edge: live. Half a second of margin: under a loaded CI run one SQLite
    # read (a hop to its thread and back) once took over 100 ms and landed past the edge.
    await _wait_until(edge - 0.5)
    assert await storage.get("short") == "s"
    assert entry.is_expired(entry.expires_at)  # the rule, independently of any backend
    assert not entry.is_expired(entry.expires_at - timedelta(microseconds=1))
    assert entry.remaining_ttl(entry.expires_at + timedelta(seconds=5)) == 0.0

    # 50 µs past the edge (datetime rounding to the microsecond), never more than 2 ms.
    await _wait_until(edge + 0.00005)
    assert await storage.get("short", "gone") == "gone"
    assert await storage.get_entry("short") is None
    assert not await storage.exists("short")
    assert time.time() < edge + 0.75  # the reads above ran at the edge, not long after
    await _wait_until(max(edges) + 0.00005)
    assert await storage.get_many(["short", "short_batch", "short_add", "old1"]) == {"old1": 1}

    await asyncio.sleep(0.05)  # Redis judges keys/add/delete by its own millisecond clock
    assert await storage.keys("short*") == []
    assert [key async for key in storage.iter_keys("short*")] == []
    assert not await storage.delete("short_batch")
    assert await storage.add("short_add", "again")  # expired counts as absent
    assert await storage.get("short_add") == "again"
    await storage.set("fresh", "f")

    # Without ttl_seconds: the expired entries nobody touched since (idle1, idle2; reads
    # may already have dropped the others). Redis drops expired keys itself, and the
    # in-memory adapter drops them on each write (the writes just above).
    sweeps = storage.expires_natively or isinstance(storage, InMemoryStorageAdapter)
    assert await storage.cleanup() == (0 if sweeps else 2)
    assert await storage.cleanup() == 0
    # With ttl_seconds=1: everything created at least a second ago.
    assert await storage.cleanup(ttl_seconds=1) == 2  # old1, old2
    assert await storage.keys() == ["fresh", "short_add"]


# ---------------------------------------------------------------- values


@pytest.mark.parametrize(("value", "as_type", "untyped"), ROUND_TRIPS, ids=repr)
async def test_round_trip(
    storage: BaseStorageAdapter, value: Any, as_type: Any, untyped: Any
) -> None:
    await storage.set("v", value)
    typed = await storage.get("v", type=as_type) if as_type is not None else None
    if as_type is not None:
        assert typed == value
        assert isinstance(typed, type(value))
    if untyped is not None or value is None:
        got = await storage.get("v")
        assert got == untyped
        assert type(got) is type(untyped)
    await storage.set_many({"m": value})
    if as_type is not None:
        assert (await storage.get_many(["m"], type=as_type))["m"] == value
        entry = await storage.get_entry("m", type=as_type)
        assert entry is not None
        assert entry.value == value


JSONISH = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=JSONISH)
async def test_any_value_round_trips(storage: BaseStorageAdapter, value: Any) -> None:
    await storage.set("v", value)
    assert await storage.get("v", default=object()) == value
    await storage.set_many({"a": value, "b": [value]})
    assert await storage.get_many(["a", "b"]) == {"a": value, "b": [value]}


async def test_nan_round_trips(storage: BaseStorageAdapter) -> None:
    await storage.set("nan", float("nan"))
    value = await storage.get("nan")
    assert value != value


async def test_typed_get_mismatch(storage: BaseStorageAdapter) -> None:
    await storage.set("k", "not a number")
    with pytest.raises(StorageSerializationError, match="'k'"):
        await storage.get("k", type=int)
    assert await storage.get("absent", 5, type=int) == 5


async def test_mutation_after_set_does_not_leak(storage: BaseStorageAdapter) -> None:
    value: dict[str, Any] = {"items": [1], "nested": {"a": 1}}
    await storage.set("k", value)
    await storage.set_many({"m": value})
    value["items"].append(2)
    value["nested"]["b"] = 2
    assert await storage.get("k") == {"items": [1], "nested": {"a": 1}}
    assert await storage.get("m") == {"items": [1], "nested": {"a": 1}}
    got = await storage.get("k")
    got["items"].append(3)
    assert await storage.get("k") == {"items": [1], "nested": {"a": 1}}


# ---------------------------------------------------------------- concurrency


async def test_concurrent_sets_of_one_new_key(storage: BaseStorageAdapter) -> None:
    await asyncio.gather(*(storage.set("new", i) for i in range(10)))
    assert await storage.get("new") in range(10)
    assert await storage.keys() == ["new"]


async def test_concurrent_adds_exactly_one_wins(make_storage: StorageFactory) -> None:
    # Separate adapters: separate connections (and, for SQLite, separate file handles).
    first = make_storage()
    shared = first.expires_natively or not isinstance(first, InMemoryStorageAdapter)
    adapters = [first] + [make_storage() if shared else first for _ in range(3)]
    for round_ in range(5):
        key = f"claim:{round_}"
        results = await asyncio.gather(
            *(adapters[i % 4].add(key, i, ttl_seconds=60) for i in range(20))
        )
        assert results.count(True) == 1
        assert await adapters[0].get(key) == results.index(True)


# ---------------------------------------------------------------- bad input


class Unencodable:
    pass


async def test_unencodable_value_writes_nothing(storage: BaseStorageAdapter) -> None:
    with pytest.raises(StorageSerializationError, match=r"Unencodable.*'bad'") as info:
        await storage.set("bad", Unencodable())
    assert isinstance(info.value, TypeError)
    assert info.value.key == "bad"
    with pytest.raises(StorageSerializationError, match="'bad'"):
        await storage.add("bad", {"nested": [Unencodable()]})
    with pytest.raises(StorageSerializationError, match="'big'"):
        await storage.set("big", 2**64)
    with pytest.raises(StorageSerializationError, match=r"'b2'.*|.*'b2'"):
        await storage.set_many({"b1": 1, "b2": Unencodable(), "b3": 3})
    assert not await storage.exists("bad")
    assert await storage.keys() == []


@pytest.mark.parametrize("ttl", [0, -1, 1.5, "10", True, False, 10**0 - 1])
async def test_bad_ttl(make_storage: StorageFactory, ttl: Any) -> None:
    storage = make_storage()
    for call in (
        storage.set("k", 1, ttl_seconds=ttl),
        storage.add("k", 1, ttl_seconds=ttl),
        storage.set_many({"k": 1}, ttl_seconds=ttl),
        storage.cleanup(ttl_seconds=ttl),
    ):
        with pytest.raises(InvalidTTLError) as info:
            await call
        assert isinstance(info.value, ValueError)
        assert isinstance(info.value, StorageError)
    with pytest.raises(InvalidTTLError):
        make_storage(ttl_seconds=ttl)
    assert await storage.keys() == []


@pytest.mark.parametrize("key", [None, 1, b"bytes", ("t",), ""])
async def test_bad_key(storage: BaseStorageAdapter, key: Any) -> None:
    calls = [
        storage.set(key, 1),
        storage.add(key, 1),
        storage.get(key),
        storage.get_entry(key),
        storage.exists(key),
        storage.delete(key),
        storage.get_many([key]),
        storage.set_many({key: 1}),
        storage.delete_many([key]),
    ]
    for call in calls:
        with pytest.raises(InvalidKeyError) as info:
            await call
        assert isinstance(info.value, TypeError)
    assert await storage.keys() == []


async def test_bad_key_collections_and_patterns(storage: BaseStorageAdapter) -> None:
    with pytest.raises(InvalidKeyError):
        await storage.get_many("abc")
    with pytest.raises(InvalidKeyError):
        await storage.delete_many("abc")
    with pytest.raises(InvalidKeyError):
        await storage.keys(None)  # type: ignore[arg-type]
    with pytest.raises(InvalidKeyError):
        await storage.set("\udc80", 1)
    await storage.set("ok", 1)
    with pytest.raises(InvalidKeyError):
        await storage.set_many({"fine": 1, 2: 2})  # type: ignore[dict-item]
    assert await storage.keys() == ["ok"]


SQLISH = [
    "'; DROP TABLE taskiq_flow_storage; --",
    "x' OR '1'='1",
    "100%_done",
    'say "hi"; --',
    "a*b[c]?d\\e",
]


async def test_sql_looking_keys_and_patterns_are_literal(storage: BaseStorageAdapter) -> None:
    for i, key in enumerate(SQLISH):
        await storage.set(key, i)
    await storage.set("plain", -1)
    for i, key in enumerate(SQLISH):
        assert await storage.get(key) == i
        assert await storage.exists(key)
    assert await storage.keys("'; DROP*") == [SQLISH[0]]
    assert await storage.keys("* OR *") == [SQLISH[1]]
    assert await storage.keys("100%_*") == [SQLISH[2]]
    assert await storage.keys("%") == []
    assert await storage.keys("_") == []
    assert await storage.keys("a\\*b\\[c]\\?d\\\\e") == [SQLISH[4]]
    assert await storage.get_many(SQLISH) == {key: i for i, key in enumerate(SQLISH)}
    assert await storage.delete_many(SQLISH) == len(SQLISH)
    assert await storage.keys() == ["plain"]
