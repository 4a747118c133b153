"""Listing, pattern deletion, tags and the no-resurrection rule: over every backend.

The same ``cache``/``make_cache`` fixtures as ``test_contract.py``: memory, one Redis
server, a three-primary Redis Cluster and a Sentinel-watched master.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskiq_flow.cache import (
    BaseCacheAdapter,
    CacheConnectionError,
    CacheKeyError,
    CacheValueError,
    InMemoryCacheAdapter,
)
from taskiq_flow.cache.base import MAX_TAG_LENGTH, MAX_TAGS
from taskiq_flow.storage.glob import escape_glob, glob_match

CacheFactory = Callable[..., BaseCacheAdapter]

# Keys a user may well have: glob metacharacters, braces (Redis Cluster hash tags),
# colons, non-ASCII text.
AWKWARD_KEYS = [
    "f*o",
    "f?o",
    "f[x]o",
    "f[^x]o",
    "f\\o",
    "f\\*o",
    "foo",
    "fxo",
    "{brace}",
    "a{b}c",
    "}{",
    "tâche:é",
    "task:key:a*b@1f",
]


async def fill(cache: BaseCacheAdapter, keys: list[str], ttl: int = 60) -> None:
    for key in keys:
        await cache.set(key, key, ttl_seconds=ttl)


# -- keys / iter_keys --------------------------------------------------------------------------


async def test_keys_lists_matching_keys_sorted(cache: BaseCacheAdapter) -> None:
    await fill(cache, ["b:1", "a:2", "a:1", "a:10", "c"])
    assert await cache.keys() == ["a:1", "a:10", "a:2", "b:1", "c"]
    assert await cache.keys("a:*") == ["a:1", "a:10", "a:2"]
    assert await cache.keys("?:1") == ["a:1", "b:1"]
    assert await cache.keys("a:[12]") == ["a:1", "a:2"]
    assert await cache.keys("a:[^1]") == ["a:2"]
    assert await cache.keys("nothing*") == []
    assert await cache.keys("") == []  # the storage rule: an empty pattern matches nothing


async def test_keys_leave_out_deleted_and_expired_entries(cache: BaseCacheAdapter) -> None:
    await cache.set("short", 1, ttl_seconds=1)
    await cache.set("long", 1, ttl_seconds=60)
    await cache.set("gone", 1, ttl_seconds=60)
    await cache.delete("gone")
    assert await cache.keys() == ["long", "short"]
    await asyncio.sleep(1.1)
    assert await cache.keys() == ["long"]


async def test_awkward_keys_are_matched_literally_when_escaped(cache: BaseCacheAdapter) -> None:
    await fill(cache, AWKWARD_KEYS)
    assert await cache.keys() == sorted(AWKWARD_KEYS)
    for key in AWKWARD_KEYS:
        assert await cache.keys(escape_glob(key)) == [key], key
    # Unescaped, the metacharacters are patterns, as in Redis.
    assert await cache.keys("f*o") == sorted(k for k in AWKWARD_KEYS if k[0] == "f")
    assert await cache.keys("f?o") == ["f*o", "f?o", "f\\o", "foo", "fxo"]
    assert await cache.keys("f[x]o") == ["fxo"]
    assert await cache.keys("*{*") == ["a{b}c", "{brace}", "}{"]
    assert await cache.delete_pattern(escape_glob("f*o")) == 1
    assert "f*o" not in await cache.keys()
    assert len(await cache.keys()) == len(AWKWARD_KEYS) - 1


async def test_iter_keys_covers_many_keys(cache: BaseCacheAdapter) -> None:
    keys = [f"k:{i}" for i in range(1200)] + ["other"]
    await fill(cache, keys)
    seen = [key async for key in cache.iter_keys("k:*")]
    assert set(seen) == set(keys) - {"other"}
    assert len(await cache.keys("k:*")) == 1200


@pytest.mark.parametrize("pattern", [5, None, b"k*", "\udc80*"])
async def test_bad_pattern_is_a_cache_key_error(cache: BaseCacheAdapter, pattern: Any) -> None:
    for call in (
        lambda: cache.keys(pattern),
        lambda: cache.delete_pattern(pattern),
        lambda: anext(aiter(cache.iter_keys(pattern))),
    ):
        with pytest.raises(CacheKeyError):
            await call()


# Few characters, most of them special to globs or to Redis Cluster hash tags.
_GLOB_TEXT = st.text(alphabet="ab*?[]^-\\{}é", min_size=1, max_size=6)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(keys=st.lists(_GLOB_TEXT, min_size=1, max_size=6, unique=True), pattern=_GLOB_TEXT)
async def test_every_backend_matches_as_redis_does(
    cache: BaseCacheAdapter, keys: list[str], pattern: str
) -> None:
    # glob_match is Redis's own stringmatchlen (the storage package proves it against a
    # server): memory and the Cluster's client-side matching must agree with it, and one
    # server's SCAN MATCH is Redis itself.
    await cache.clear()
    await fill(cache, keys)
    expected = sorted(key for key in keys if glob_match(pattern, key))
    assert await cache.keys(pattern) == expected
    assert await cache.delete_pattern(pattern) == len(expected)
    assert await cache.keys() == sorted(set(keys) - set(expected))


# -- delete_pattern ---------------------------------------------------------------------------


async def test_delete_pattern_removes_matches_and_counts_them(cache: BaseCacheAdapter) -> None:
    keys = [f"t:{i}" for i in range(700)] + ["u:1", "t"]
    await fill(cache, keys)
    assert await cache.delete_pattern("t:*") == 700
    assert await cache.keys() == ["t", "u:1"]
    assert await cache.delete_pattern("t:*") == 0
    assert await cache.delete_pattern("") == 0
    assert await cache.get("u:1") == "u:1"


# -- tags ---------------------------------------------------------------------------------------


async def test_invalidate_tag_removes_exactly_the_tagged_entries(cache: BaseCacheAdapter) -> None:
    await fill(cache, ["a", "b", "c", "d"])
    await cache.tag("a", ["red", "blue"], 60)
    await cache.tag("b", ["red"], 60)
    await cache.tag("c", ["blue"], 60)
    await cache.tag("gone", ["red"], 60)  # tagged, but its entry was never written
    assert sorted({key async for key in cache.iter_tagged("red")}) == ["a", "b"]
    assert await cache.invalidate_tag("red") == 2
    assert [key async for key in cache.iter_tagged("red")] == []
    assert await cache.keys() == ["c", "d"]
    assert await cache.invalidate_tag("red") == 0
    assert await cache.invalidate_tag("blue") == 1  # a went already: c only
    assert await cache.keys() == ["d"]
    assert await cache.invalidate_tag("never-used") == 0


async def test_tags_with_metacharacters_and_braces_are_literal(cache: BaseCacheAdapter) -> None:
    await fill(cache, AWKWARD_KEYS)
    for key in AWKWARD_KEYS:
        await cache.tag(key, [key, "all"], 60)
    assert await cache.invalidate_tag("f*o") == 1
    assert await cache.invalidate_tag("{brace}") == 1
    assert await cache.invalidate_tag("all") == len(AWKWARD_KEYS) - 2
    assert await cache.keys() == []


async def test_invalidate_tag_over_many_entries(cache: BaseCacheAdapter) -> None:
    keys = [f"m:{i}" for i in range(1200)]
    await fill(cache, keys)
    for key in keys:
        await cache.tag(key, ["bulk"], 60)
    assert await cache.invalidate_tag("bulk") == 1200
    assert await cache.keys("m:*") == []


async def test_a_tag_added_after_the_entry_went_removes_nothing(cache: BaseCacheAdapter) -> None:
    await cache.tag("later", ["t"], 60)
    assert await cache.invalidate_tag("t") == 0
    await cache.set("later", 1)
    assert await cache.get("later") == 1


@pytest.mark.parametrize(
    ("tags", "message"),
    [
        ([""], "must not be empty"),
        (["ok", ""], "must not be empty"),
        ([5], "not int"),
        (["\ud800"], "UTF-8"),
        (["x" * (MAX_TAG_LENGTH + 1)], f"longer than {MAX_TAG_LENGTH}"),
        ([f"t{i}" for i in range(10_000)], f"at most {MAX_TAGS} tags"),
        ("a,b", "not a single str"),
    ],
)
async def test_bad_tags_are_refused_before_anything_is_written(
    cache: BaseCacheAdapter, tags: Any, message: str
) -> None:
    await cache.set("k", 1)
    with pytest.raises(CacheValueError, match=message):
        await cache.tag("k", tags, 60)
    assert await cache.invalidate_tag("ok") == 0
    assert await cache.get("k") == 1


async def test_the_tag_bounds_themselves_are_accepted(cache: BaseCacheAdapter) -> None:
    await cache.set("k", 1)
    many = [f"t{i}" for i in range(MAX_TAGS)] + ["t0"]  # a repeat does not count twice
    await cache.tag("k", many, 60)
    await cache.tag("k", ["x" * MAX_TAG_LENGTH], 60)
    assert await cache.invalidate_tag(f"t{MAX_TAGS - 1}") == 1


@pytest.mark.parametrize("tag", ["", 5, "x" * (MAX_TAG_LENGTH + 1)])
async def test_invalidate_tag_refuses_a_bad_tag(cache: BaseCacheAdapter, tag: Any) -> None:
    with pytest.raises(CacheValueError):
        await cache.invalidate_tag(tag)


async def test_tag_checks_key_and_ttl(cache: BaseCacheAdapter) -> None:
    with pytest.raises(CacheKeyError):
        await cache.tag("", ["t"], 60)
    with pytest.raises(CacheValueError, match="ttl_seconds"):
        await cache.tag("k", ["t"], 0)


# -- the no-resurrection rule -----------------------------------------------------------------


def _invalidations(cache: BaseCacheAdapter) -> dict[str, Callable[[str], Awaitable[Any]]]:
    return {
        "delete": cache.delete,
        "invalidate": cache.invalidate,
        "delete_pattern": lambda key: cache.delete_pattern(escape_glob(key)),
        "invalidate_tag": lambda key: cache.invalidate_tag("tagged"),
    }


@pytest.mark.parametrize("way", ["delete", "invalidate", "delete_pattern", "invalidate_tag"])
@pytest.mark.parametrize("key", ["slow", "sl*w{x}"])
async def test_invalidating_a_creation_in_flight_keeps_its_value_out(
    cache: BaseCacheAdapter, way: str, key: str
) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    calls = 0

    async def slow() -> str:
        nonlocal calls
        calls += 1
        started.set()
        await release.wait()
        return f"v{calls}"

    creation = asyncio.create_task(cache.get_or_create(key, slow, 60))
    await started.wait()
    await cache.tag(key, ["tagged"], 60)  # as CacheMiddleware does, while creating
    await _invalidations(cache)[way](key)
    release.set()
    assert await creation == "v1"  # its own caller still gets the value...
    assert await cache.get(key) is None  # ...but it is not stored
    assert await cache.keys() == []
    assert await cache.get_or_create(key, slow, 60) == "v2"  # the next call runs again
    assert calls == 2
    assert await cache.get(key) == "v2"


async def test_an_entry_stale_while_refreshing_is_not_resurrected(
    cache: BaseCacheAdapter,
) -> None:
    await cache.set("k", "old")
    started, release = asyncio.Event(), asyncio.Event()

    async def slow() -> str:
        started.set()
        await release.wait()
        return "refreshed"

    refresh = asyncio.create_task(cache.refresh("k", slow, 60))
    await started.wait()
    assert await cache.delete("k") is True
    release.set()
    assert await refresh == "refreshed"
    assert await cache.get("k") is None


async def test_a_creation_not_invalidated_still_stores(cache: BaseCacheAdapter) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def slow() -> str:
        started.set()
        await release.wait()
        return "kept"

    creation = asyncio.create_task(cache.get_or_create("mine", slow, 60))
    await started.wait()
    await cache.delete("other")
    assert await cache.delete_pattern("oth*") == 0
    assert await cache.invalidate_tag("unrelated") == 0
    release.set()
    assert await creation == "kept"
    assert await cache.get("mine") == "kept"


# -- backend specifics -------------------------------------------------------------------------


async def test_redis_tag_set_lives_as_long_as_its_longest_entry(
    cache: BaseCacheAdapter, backend: str
) -> None:
    if backend == "memory":
        pytest.skip("Redis key layout")
    client: Any = cache.client  # type: ignore[attr-defined]
    name = cache._tag_name("t")  # type: ignore[attr-defined]
    await cache.tag("a", ["t"], 10)
    assert 0 < await client.pttl(name) <= 10_000
    await cache.tag("b", ["t"], 100)
    assert 10_000 < await client.pttl(name) <= 100_000
    await cache.tag("c", ["t"], 5)  # a shorter entry never shortens the set
    assert await client.pttl(name) > 10_000
    await cache.tag("d", ["t"], None)  # default_ttl (3600)
    assert await client.pttl(name) > 100_000
    assert await cache.invalidate_tag("t") == 0  # no entries were written
    assert await client.exists(name) == 0


async def test_memory_tags_are_pruned_as_entries_go() -> None:
    cache = InMemoryCacheAdapter(max_entries=100)
    for i in range(5000):
        await cache.set(f"k{i}", i)
        await cache.tag(f"k{i}", ["a", "b"], 60)
    # 100 live entries with two tags each; swept in amortised bounded steps.
    assert cache._tag_pairs <= 2 * 2 * 100 + 1024 + 2
    assert await cache.invalidate_tag("a") == 100
    assert await cache.delete_pattern("*") == 0
    await cache.clear()
    assert cache._tags == {}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_redis_down_is_a_cache_connection_error() -> None:
    from taskiq_flow.cache.redis import RedisCacheAdapter

    cache = RedisCacheAdapter(
        f"redis://127.0.0.1:{_closed_port()}/0", connect_timeout=0.5, retries=0
    )
    try:
        for call in (
            lambda: cache.keys("*"),
            lambda: cache.delete_pattern("*"),
            lambda: cache.tag("k", ["t"], 60),
            lambda: cache.invalidate_tag("t"),
            lambda: cache.delete("k"),
        ):
            with pytest.raises(CacheConnectionError):
                await call()
    finally:
        await cache.close()
