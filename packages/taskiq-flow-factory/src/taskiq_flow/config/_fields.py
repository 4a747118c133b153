"""The table of settings: each one's name, default, parser and meaning.

Kept apart from :mod:`taskiq_flow.config.model` so that module reads as the behaviour of
``TaskiqFlowConfig`` only; adding a setting starts here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Literal

from taskiq_flow.config._parse import (
    parse_bool,
    parse_choice,
    parse_directory,
    parse_optional_int,
    parse_redis_url,
    parse_required_int,
    parse_sqlite_path,
    parse_text,
)

__all__ = [
    "BY_NAME",
    "CACHE_TYPES",
    "ENV_PREFIX",
    "FIELDS",
    "STORAGE_TYPES",
    "CacheType",
    "Field",
    "StorageType",
]

ENV_PREFIX: Final = "TASKIQ_FLOW_"
StorageType = Literal["auto", "inmemory", "redis", "sqlite"]
CacheType = Literal["auto", "inmemory", "redis"]
STORAGE_TYPES: Final[tuple[str, ...]] = ("auto", "inmemory", "redis", "sqlite")
CACHE_TYPES: Final[tuple[str, ...]] = ("auto", "inmemory", "redis")


class Field:
    """One setting: its argument name, default, parser and one-line meaning."""

    __slots__ = ("default", "doc", "name", "parse")

    def __init__(
        self, name: str, default: Any, parse: Callable[[object, str], Any], doc: str
    ) -> None:
        self.name = name
        self.default = default
        self.parse = parse
        self.doc = doc

    @property
    def env_var(self) -> str:
        return ENV_PREFIX + self.name.upper()


FIELDS: Final[tuple[Field, ...]] = (
    Field(
        "storage_type",
        "auto",
        lambda raw, src: parse_choice(raw, src, STORAGE_TYPES),
        "Storage backend: 'auto' (Redis if a storage Redis URL is set, else SQLite if a "
        "SQLite path is set, else in-memory), 'inmemory' (alias 'memory'), 'redis' or "
        "'sqlite' (without a path: ./.taskiq-flow/store.sqlite3).",
    ),
    Field(
        "storage_redis_url",
        None,
        parse_redis_url,
        "Redis URL for storage (redis://, rediss:// or unix://).",
    ),
    Field(
        "storage_sqlite_path",
        None,
        parse_sqlite_path,
        "SQLite database for storage: a file path, ':memory:' or a sqlite:/// URL.",
    ),
    Field(
        "storage_ttl_seconds",
        None,
        parse_optional_int,
        "Default retention of stored records in seconds; unset keeps them forever.",
    ),
    Field(
        "storage_max_entries",
        None,
        parse_optional_int,
        "In-memory storage only: keep at most this many entries (least recently used go).",
    ),
    Field(
        "storage_key_prefix",
        "taskiq_flow:",
        parse_text,
        "Redis storage only: prefix of every key, so apps can share a server.",
    ),
    Field(
        "storage_spool_dir",
        None,
        parse_directory,
        "Where StorageMiddleware/StorageResultBackend keep records the store refuses, on "
        "disk, until it answers (default ./.taskiq-flow/spool); share it between workers.",
    ),
    Field(
        "storage_enabled",
        True,
        parse_bool,
        "Whether StorageMiddleware records results (true/false).",
    ),
    Field(
        "cache_type",
        "auto",
        lambda raw, src: parse_choice(raw, src, CACHE_TYPES),
        "Cache backend: 'auto' (Redis if a cache Redis URL is set, else in-memory), "
        "'inmemory' (alias 'memory') or 'redis'.",
    ),
    Field(
        "cache_redis_url",
        None,
        parse_redis_url,
        "Redis URL for the cache (redis://, rediss:// or unix://).",
    ),
    Field(
        "cache_default_ttl",
        3600,
        parse_required_int,
        "Seconds a cached task result stays fresh (a task's cache_ttl label overrides it).",
    ),
    Field(
        "cache_lock_timeout",
        10,
        parse_required_int,
        "Redis cache only: lease in seconds of the cross-process dogpile lock (renewed "
        "while the task runs).",
    ),
    Field(
        "cache_max_entries",
        None,
        parse_optional_int,
        "In-memory cache only: keep at most this many results (least recently used go).",
    ),
    Field(
        "cache_key_prefix",
        "taskiq_flow_cache:",
        parse_text,
        "Redis cache only: prefix of every cache key.",
    ),
    Field(
        "cache_enabled",
        True,
        parse_bool,
        "Whether CacheMiddleware answers repeated tasks from the cache (true/false).",
    ),
    Field(
        "cache_at_send",
        True,
        parse_bool,
        "Whether CacheMiddleware answers a cached or in-flight call at kiq() without "
        "sending it to the broker (true/false; the cache_at_send label overrides it).",
    ),
    Field(
        "result_backend",
        False,
        parse_bool,
        "Whether create_default_middlewares also builds a StorageResultBackend over the "
        "storage adapter (true/false): each task is then one key, record and result.",
    ),
)
BY_NAME: Final = {f.name: f for f in FIELDS}
