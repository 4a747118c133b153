"""In-memory specifics: the LRU bound."""

from __future__ import annotations

import asyncio

import pytest

from taskiq_flow.storage import InMemoryStorageAdapter, StorageConfigError


async def test_lru_eviction() -> None:
    storage = InMemoryStorageAdapter(max_entries=3)
    await storage.set_many({"a": 1, "b": 2, "c": 3})
    assert await storage.get("a") == 1  # a is now the most recently used
    await storage.set("d", 4)
    assert await storage.keys() == ["a", "c", "d"]
    await storage.set("c", 30)  # a write also counts as use
    await storage.add("e", 5)
    assert await storage.keys() == ["c", "d", "e"]
    assert await storage.exists("d")
    await storage.set_many({"f": 6, "g": 7})
    assert await storage.keys() == ["d", "f", "g"]


async def test_unbounded_keeps_everything() -> None:
    storage = InMemoryStorageAdapter()
    await storage.set_many({str(i): i for i in range(5000)})
    assert len(await storage.keys()) == 5000


@pytest.mark.parametrize("bad", [0, -1, 1.5, "3", True])
def test_bad_max_entries(bad: object) -> None:
    with pytest.raises(StorageConfigError) as info:
        InMemoryStorageAdapter(max_entries=bad)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)


async def test_values_are_held_encoded() -> None:
    storage = InMemoryStorageAdapter()
    await storage.set("k", {"a": 1})
    assert isinstance(storage._store._data["k"][0], bytes)
    storage._store._data["k"] = (b"\xc1", *storage._store._data["k"][1:])
    with pytest.raises(Exception, match="'k'") as info:
        await storage.get("k")
    assert type(info.value).__name__ == "StorageCorruptError"


async def test_expired_entries_nobody_reads_do_not_accumulate() -> None:
    # A worker writes records it never reads back: expired ones must go on later writes.
    storage = InMemoryStorageAdapter()
    for i in range(500):
        await storage.set(f"old{i}", i, ttl_seconds=1)
    await asyncio.sleep(1.05)
    for i in range(10):
        await storage.set(f"new{i}", i, ttl_seconds=60)
    assert len(storage._store._data) == 10
    assert len(storage._store._expiries) <= 2 * 10 + 64
    assert await storage.cleanup() == 0
