"""``keys(pattern)`` means what Redis's ``SCAN MATCH`` means, on every backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskiq_flow.storage import InMemoryStorageAdapter, SQLiteStorageAdapter, glob_match
from taskiq_flow.storage.glob import compile_glob, literal_prefix
from taskiq_flow.storage.redis import RedisStorageAdapter

# Multi-byte characters (é: 2 bytes, €: 3) and NUL exercise Redis's byte-wise, signed-char
# matching; the rest is glob syntax and characters that are special in SQL.
ALPHABET = "abc*?[]^-\\'%_é€\x00"
KEYS = st.lists(st.text(ALPHABET, min_size=1, max_size=6), min_size=1, max_size=8, unique=True)
TOKENS = ["a", "b", "c", "é", "'", "%", "_", "*", "?", "[a-c]", "[^a]", "[c-a]", "\\*", "\\",
          "[", "]", "[*]", "[\\]]", "[a-]", "^", "-", "[a-é]", "[^é]", "[€-a]"]  # fmt: skip
PATTERNS = st.one_of(
    st.lists(st.sampled_from(TOKENS), max_size=5).map("".join),
    st.text(ALPHABET, max_size=7),
)

# (pattern, key, does it match) - Redis's quirks, each also checked against a real server.
CASES = [
    ("*", "anything", True),
    ("a?c", "abc", True),
    ("a?c", "ac", False),
    ("?", "é", False),  # ? is one byte; é is two in UTF-8
    ("??", "é", True),
    ("[a-c]x", "bx", True),
    ("[c-a]x", "bx", True),  # reversed range
    ("[^a]x", "ax", False),
    ("[^a]x", "bx", True),
    ("\\*", "*", True),
    ("\\*", "a", False),
    ("a\\", "a\\", True),  # trailing backslash is literal
    ("[\\]]", "]", True),
    ("[a-]", "]", True),  # "a-]" is the range a..]
    ("a[bc", "ab", True),  # unterminated class takes the rest
    ("a[", "a[", False),  # lone [ at the end matches nothing
    ("a[^", "ax", True),
    ("a*b*c", "axxbyyc", True),
    ("a*b*c", "axxbyy", False),
    ("[a-é]", "A", True),  # bytes compare as signed char: 0xC3 < "A" < "a"
    ("%", "x", False),
    ("_", "x", False),
]


@pytest.fixture
async def raw_redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    # Database 1 of the same server: the adapters under test write to database 0.
    client = aioredis.Redis.from_url(urlsplit(redis_url)._replace(path="/1").geturl())
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


async def _redis_match(raw: aioredis.Redis, pattern: str) -> list[str]:
    found = {key.decode() async for key in raw.scan_iter(match=pattern, count=1000)}
    return sorted(found)


@pytest.mark.parametrize(("pattern", "key", "expected"), CASES)
async def test_quirks_match_real_redis(
    raw_redis: aioredis.Redis, pattern: str, key: str, expected: bool
) -> None:
    await raw_redis.set(key, b"1")
    assert (await _redis_match(raw_redis, pattern) == [key]) is expected
    assert glob_match(pattern, key) is expected
    assert compile_glob(pattern)(key) is expected


@pytest.fixture
async def adapters(
    redis_url: str, tmp_path: Path
) -> AsyncIterator[tuple[InMemoryStorageAdapter, SQLiteStorageAdapter, RedisStorageAdapter]]:
    sqlite = SQLiteStorageAdapter(tmp_path / "glob.db")
    # A prefix full of glob syntax: the adapter must escape it in SCAN MATCH.
    redis_adapter = RedisStorageAdapter(redis_url, key_prefix="g[*]?\\:")
    yield InMemoryStorageAdapter(), sqlite, redis_adapter
    await sqlite.close()
    await redis_adapter.close()


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(keys=KEYS, patterns=st.lists(PATTERNS, min_size=1, max_size=4))
async def test_keys_equals_redis_scan_match_on_every_backend(
    raw_redis: aioredis.Redis,
    adapters: tuple[InMemoryStorageAdapter, SQLiteStorageAdapter, RedisStorageAdapter],
    keys: list[str],
    patterns: list[str],
) -> None:
    # The fixtures live across examples: start each example from empty stores.
    await raw_redis.flushdb()
    for adapter in adapters:
        await adapter.delete_many(await adapter.keys())
    await raw_redis.mset(dict.fromkeys(keys, b"1"))
    for adapter in adapters:
        await adapter.set_many(dict.fromkeys(keys, 1))
    sqlite = adapters[1]
    for pattern in [*patterns, *keys]:
        expected = await _redis_match(raw_redis, pattern)
        for adapter in adapters:
            assert await adapter.keys(pattern) == expected, (adapter, pattern)
        assert sorted([k async for k in sqlite.iter_keys(pattern)]) == expected
        assert [k for k in sorted(keys) if glob_match(pattern, k)] == expected


@settings(max_examples=500, deadline=None)
@given(pattern=PATTERNS, key=st.text(ALPHABET, min_size=1, max_size=8))
def test_fast_paths_and_prefix_agree_with_the_matcher(pattern: str, key: str) -> None:
    matched = glob_match(pattern, key)
    assert compile_glob(pattern)(key) is matched
    if matched:
        assert key.startswith(literal_prefix(pattern))
