"""The low-level API (taskiq_flow.storage.kit): one rule per check, whichever package asks."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskiq_flow.storage import (
    InvalidKeyError,
    InvalidStorageURLError,
    InvalidTTLError,
    StorageConfigError,
)
from taskiq_flow.storage.glob import compile_glob, escape_glob
from taskiq_flow.storage.kit import (
    TTLStore,
    check_count,
    check_key,
    check_redis_url,
    check_seconds,
    check_ttl,
    redact_url,
    sqlite_location,
)


class _Mine(Exception):
    def __init__(self, value: object, reason: str) -> None:
        super().__init__(reason)
        self.value = value


@pytest.mark.parametrize("key", ["", 5, None, b"k", "\udc80", "ok\ud800"])
def test_bad_keys_raise_through_the_given_factory(key: object) -> None:
    with pytest.raises(InvalidKeyError):
        check_key(key)
    with pytest.raises(_Mine) as info:
        check_key(key, _Mine)
    assert info.value.value == key


@pytest.mark.parametrize("key", ["k", "caf\u00e9", "emoji \U0001f600", " "])
def test_good_keys_pass(key: str) -> None:
    assert check_key(key) is key


@pytest.mark.parametrize("ttl", [0, -1, 1.5, "10", True, float("nan")])
def test_ttl_rule(ttl: object) -> None:
    with pytest.raises(InvalidTTLError, match="ttl_seconds"):
        check_ttl(ttl)
    with pytest.raises(_Mine, match="lease"):
        check_ttl(ttl, "lease", _Mine)
    assert check_ttl(None) is None
    assert check_ttl(7) == 7


@pytest.mark.parametrize("value", [0, -1.0, True, "1", float("nan"), float("inf")])
def test_seconds_and_counts(value: object) -> None:
    with pytest.raises(StorageConfigError, match="socket_timeout"):
        check_seconds(value, "socket_timeout")
    with pytest.raises(StorageConfigError, match="max_connections"):
        check_count(value, "max_connections")
    assert check_seconds(0.5, "x") == 0.5
    assert check_count(3, "x") == 3


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:hunter2@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://user:hunter2@h/0", "redis://user:***@h/0"),
        ("redis://hunter2@h/0", "redis://***@h/0"),
        ("redis://h/0?password=hunter2&db=1", "redis://h/0?password=***&db=1"),
        ("redis://h/0?sentinel_password=hunter2", "redis://h/0?sentinel_password=***"),
        ("redis://h:6379", "redis://h:6379"),
    ],
)
def test_redaction(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert "hunter2" not in redact_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://h",
        "redis://",
        "redis://h:99999",
        "redis://h/db",
        "redis://:hunter2@h:port/0",
        "redis://:hunter2@h/zero",
        "unix://",
        5,
    ],
)
def test_bad_redis_urls_name_the_redacted_url_and_the_cause(url: object) -> None:
    with pytest.raises(InvalidStorageURLError) as info:
        check_redis_url(url)
    assert "hunter2" not in str(info.value)
    assert info.value.reason


def test_good_redis_urls() -> None:
    for url in ("redis://h", "rediss://u:p@h:1/2", "unix:///tmp/r.sock?db=1", " redis://h "):
        assert check_redis_url(url) == url.strip()


@pytest.mark.parametrize(
    ("given", "database"),
    [
        (":memory:", ":memory:"),
        ("sqlite://", ":memory:"),
        ("sqlite:///:memory:", ":memory:"),
        ("sqlite:///rel.db", "rel.db"),
        ("sqlite:////abs/x.db", "/abs/x.db"),
        (Path("dir/x.db"), "dir/x.db"),
    ],
)
def test_sqlite_locations(given: object, database: str) -> None:
    assert sqlite_location(given) == database


@pytest.mark.parametrize(
    "given", ["", "sqlite:///", "sqlite://host/x.db", "sqlite:/x.db", "postgres://h/d", 3]
)
def test_bad_sqlite_locations(given: object) -> None:
    with pytest.raises(InvalidStorageURLError):
        sqlite_location(given)


@pytest.mark.parametrize("text", ["plain", "a*b", "q?", "[x]", "back\\slash", "{tag}:k"])
def test_escape_glob_matches_exactly_itself(text: str) -> None:
    match = compile_glob(escape_glob(text))
    assert match(text)
    assert not match(text + "x")
    assert not match("x" + text)
    assert compile_glob(escape_glob(text) + "*")(text + "tail")


def test_ttl_store_expiry_lru_and_sweep() -> None:
    store = TTLStore(max_entries=2)
    store.put("a", (b"1", 100.0, 105.0))
    store.put("b", (b"2", 100.0, None))
    assert store.get("a", 104.9) == (b"1", 100.0, 105.0)
    assert store.get("a", 105.0) is None  # the edge: expired at now >= expires_at
    store.put("a", (b"1", 106.0, None))
    assert store.get("b", 106.0) is not None  # b is now the most recent
    store.put("c", (b"3", 106.0, None))  # evicts a, the least recently used
    assert sorted(store.live_keys(106.0)) == ["b", "c"]
    assert store.pop("b", 106.0) is True
    assert store.pop("b", 106.0) is False
    assert store.clear(106.0) == 1
    assert len(store) == 0


def test_ttl_store_drops_expired_entries_before_evicting_live_ones() -> None:
    store = TTLStore(max_entries=2)
    store.put("old", (b"", 0.0, 1.0))
    store.put("live", (b"", 0.0, None))
    store.put("new", (b"", 2.0, None))  # "old" expired at 1.0: swept, "live" kept
    assert sorted(store.live_keys(2.0)) == ["live", "new"]
