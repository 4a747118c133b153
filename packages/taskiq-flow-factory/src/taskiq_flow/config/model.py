"""``TaskiqFlowConfig``: every taskiq-flow setting, from arguments or ``TASKIQ_FLOW_*``."""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final, Literal, cast

from taskiq_flow.config._parse import (
    mask_url,
    parse_bool,
    parse_choice,
    parse_positive_int,
    parse_redis_url,
    parse_sqlite_path,
    parse_text,
)
from taskiq_flow.config.errors import ConfigError

__all__ = [
    "CACHE_TYPES",
    "ENV_PREFIX",
    "STORAGE_TYPES",
    "UNSET",
    "CacheType",
    "SettingSource",
    "StorageType",
    "TaskiqFlowConfig",
]

ENV_PREFIX: Final = "TASKIQ_FLOW_"
StorageType = Literal["auto", "inmemory", "redis", "sqlite"]
CacheType = Literal["auto", "inmemory", "redis"]
STORAGE_TYPES: Final[tuple[str, ...]] = ("auto", "inmemory", "redis", "sqlite")
CACHE_TYPES: Final[tuple[str, ...]] = ("auto", "inmemory", "redis")


class _Unset(enum.Enum):
    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset.UNSET
"""Default of every ``TaskiqFlowConfig`` argument: "not given, read the environment"."""

SettingSource = Literal["argument", "environment", "default"]


class _Field:
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


def _optional_int(raw: object, source: str) -> int | None:
    return parse_positive_int(raw, source, optional=True)


def _required_int(raw: object, source: str) -> int | None:
    return parse_positive_int(raw, source, optional=False)


_FIELDS: Final[tuple[_Field, ...]] = (
    _Field(
        "storage_type",
        "auto",
        lambda raw, src: parse_choice(raw, src, STORAGE_TYPES),
        "Storage backend: 'auto' (Redis if a storage Redis URL is set, else SQLite if a "
        "SQLite path is set, else in-memory), 'inmemory', 'redis' or 'sqlite'.",
    ),
    _Field(
        "storage_redis_url",
        None,
        parse_redis_url,
        "Redis URL for storage (redis://, rediss:// or unix://).",
    ),
    _Field(
        "storage_sqlite_path",
        None,
        parse_sqlite_path,
        "SQLite database for storage: a file path, ':memory:' or a sqlite:/// URL.",
    ),
    _Field(
        "storage_ttl_seconds",
        None,
        _optional_int,
        "Default retention of stored records in seconds; unset keeps them forever.",
    ),
    _Field(
        "storage_max_entries",
        None,
        _optional_int,
        "In-memory storage only: keep at most this many entries (least recently used go).",
    ),
    _Field(
        "storage_key_prefix",
        "taskiq_flow:",
        parse_text,
        "Redis storage only: prefix of every key, so apps can share a server.",
    ),
    _Field(
        "storage_enabled",
        True,
        parse_bool,
        "Whether StorageMiddleware records results (true/false).",
    ),
    _Field(
        "cache_type",
        "auto",
        lambda raw, src: parse_choice(raw, src, CACHE_TYPES),
        "Cache backend: 'auto' (Redis if a cache Redis URL is set, else in-memory), "
        "'inmemory' or 'redis'.",
    ),
    _Field(
        "cache_redis_url",
        None,
        parse_redis_url,
        "Redis URL for the cache (redis://, rediss:// or unix://).",
    ),
    _Field(
        "cache_default_ttl",
        3600,
        _required_int,
        "Seconds a cached task result stays fresh (a task's cache_ttl label overrides it).",
    ),
    _Field(
        "cache_lock_timeout",
        10,
        _required_int,
        "Redis cache only: lease in seconds of the cross-process dogpile lock (renewed "
        "while the task runs).",
    ),
    _Field(
        "cache_max_entries",
        None,
        _optional_int,
        "In-memory cache only: keep at most this many results (least recently used go).",
    ),
    _Field(
        "cache_key_prefix",
        "taskiq_flow_cache:",
        parse_text,
        "Redis cache only: prefix of every cache key.",
    ),
    _Field(
        "cache_enabled",
        True,
        parse_bool,
        "Whether CacheMiddleware answers repeated tasks from the cache (true/false).",
    ),
    _Field(
        "result_backend",
        False,
        parse_bool,
        "Whether create_default_middlewares also builds a StorageResultBackend over the "
        "storage adapter (true/false): each task is then one key, record and result.",
    ),
)
_BY_NAME: Final = {f.name: f for f in _FIELDS}


class TaskiqFlowConfig:
    """Every taskiq-flow setting, validated.

    Each argument left out is read from its environment variable,
    ``TASKIQ_FLOW_`` + the argument name in upper case (``storage_type`` ←
    ``TASKIQ_FLOW_STORAGE_TYPE``); an argument given explicitly, even ``None``,
    wins over the environment. A bad value raises ``ConfigError`` naming the
    argument or variable and the allowed values. The object is immutable;
    ``with_changes()`` returns a modified copy.

    Args:
        storage_type: ``"auto"`` (default), ``"inmemory"``, ``"redis"`` or ``"sqlite"``.
        storage_redis_url: Redis URL for storage; required by ``storage_type="redis"``.
        storage_sqlite_path: SQLite file, ``":memory:"`` or ``sqlite:///`` URL;
            required by ``storage_type="sqlite"``.
        storage_ttl_seconds: default retention of records; ``None`` keeps them forever.
        storage_max_entries: in-memory storage bound (LRU); ``None`` is unbounded.
        storage_key_prefix: Redis storage key prefix (default ``"taskiq_flow:"``).
        storage_enabled: whether ``StorageMiddleware`` records results.
        cache_type: ``"auto"`` (default), ``"inmemory"`` or ``"redis"``.
        cache_redis_url: Redis URL for the cache; required by ``cache_type="redis"``.
        cache_default_ttl: seconds a cached result stays fresh (default 3600).
        cache_lock_timeout: Redis dogpile lock lease in seconds (default 10).
        cache_max_entries: in-memory cache bound (LRU); ``None`` is unbounded.
        cache_key_prefix: Redis cache key prefix (default ``"taskiq_flow_cache:"``).
        cache_enabled: whether ``CacheMiddleware`` answers from the cache.
        result_backend: whether ``create_default_middlewares`` also returns a
            ``StorageResultBackend`` over the storage adapter (default ``False``).
        environ: where to read variables from; ``None`` means ``os.environ``,
            ``{}`` ignores the environment.

    Raises:
        ConfigError: a value is malformed, or a backend is selected without the
            URL or path it needs.
    """

    __slots__ = (
        "_sources",
        "cache_default_ttl",
        "cache_enabled",
        "cache_key_prefix",
        "cache_lock_timeout",
        "cache_max_entries",
        "cache_redis_url",
        "cache_type",
        "result_backend",
        "storage_enabled",
        "storage_key_prefix",
        "storage_max_entries",
        "storage_redis_url",
        "storage_sqlite_path",
        "storage_ttl_seconds",
        "storage_type",
    )

    storage_type: StorageType
    storage_redis_url: str | None
    storage_sqlite_path: str | None
    storage_ttl_seconds: int | None
    storage_max_entries: int | None
    storage_key_prefix: str
    storage_enabled: bool
    cache_type: CacheType
    cache_redis_url: str | None
    cache_default_ttl: int
    cache_lock_timeout: int
    cache_max_entries: int | None
    cache_key_prefix: str
    cache_enabled: bool
    result_backend: bool
    _sources: dict[str, str]

    def __init__(
        self,
        *,
        storage_type: str | _Unset = UNSET,
        storage_redis_url: str | _Unset | None = UNSET,
        storage_sqlite_path: str | os.PathLike[str] | _Unset | None = UNSET,
        storage_ttl_seconds: int | _Unset | None = UNSET,
        storage_max_entries: int | _Unset | None = UNSET,
        storage_key_prefix: str | _Unset = UNSET,
        storage_enabled: bool | _Unset = UNSET,
        cache_type: str | _Unset = UNSET,
        cache_redis_url: str | _Unset | None = UNSET,
        cache_default_ttl: int | _Unset = UNSET,
        cache_lock_timeout: int | _Unset = UNSET,
        cache_max_entries: int | _Unset | None = UNSET,
        cache_key_prefix: str | _Unset = UNSET,
        cache_enabled: bool | _Unset = UNSET,
        result_backend: bool | _Unset = UNSET,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        given: dict[str, object] = {
            "storage_type": storage_type,
            "storage_redis_url": storage_redis_url,
            "storage_sqlite_path": storage_sqlite_path,
            "storage_ttl_seconds": storage_ttl_seconds,
            "storage_max_entries": storage_max_entries,
            "storage_key_prefix": storage_key_prefix,
            "storage_enabled": storage_enabled,
            "cache_type": cache_type,
            "cache_redis_url": cache_redis_url,
            "cache_default_ttl": cache_default_ttl,
            "cache_lock_timeout": cache_lock_timeout,
            "cache_max_entries": cache_max_entries,
            "cache_key_prefix": cache_key_prefix,
            "cache_enabled": cache_enabled,
            "result_backend": result_backend,
        }
        env = os.environ if environ is None else environ
        sources: dict[str, str] = {}
        for field in _FIELDS:
            raw = given[field.name]
            if raw is not UNSET:
                # ``None`` given explicitly for a required number means "the default".
                value = field.default if raw is None and field.default is not None else raw
                value = field.parse(value, field.name) if value is not None else None
                sources[field.name] = "argument"
            elif env.get(field.env_var, "").strip():
                value = field.parse(env[field.env_var], field.env_var)
                sources[field.name] = "environment"
            else:
                value = field.default
                sources[field.name] = "default"
            object.__setattr__(self, field.name, value)
        object.__setattr__(self, "_sources", sources)
        self._check_backend_needs()

    def source_label(self, name: str) -> str:
        """The name to blame for a setting: its variable if read from the environment."""
        if self._sources.get(name) == "environment":
            return _BY_NAME[name].env_var
        return name

    def _check_backend_needs(self) -> None:
        needs = (
            ("storage_type", "redis", "storage_redis_url", "a Redis URL (redis://host:6379/0)"),
            ("storage_type", "sqlite", "storage_sqlite_path", "a SQLite file path"),
            ("cache_type", "redis", "cache_redis_url", "a Redis URL (redis://host:6379/0)"),
        )
        for type_field, backend, needed, what in needs:
            if getattr(self, type_field) == backend and getattr(self, needed) is None:
                msg = (
                    f"{self.source_label(type_field)}={backend!r} needs {what}: set "
                    f"{_BY_NAME[needed].env_var} or pass {needed}=...; taskiq-flow never "
                    f"connects to a default server on its own"
                )
                raise ConfigError(msg, source=_BY_NAME[needed].env_var, allowed=(f"{needed} set",))

    def __setattr__(self, name: str, value: object) -> None:
        msg = "TaskiqFlowConfig is immutable; use with_changes(...)"
        raise AttributeError(msg)

    @property
    def resolved_storage_type(self) -> Literal["inmemory", "redis", "sqlite"]:
        """The storage backend after applying the ``auto`` rules."""
        if self.storage_type != "auto":
            return self.storage_type
        if self.storage_redis_url is not None:
            return "redis"
        if self.storage_sqlite_path is not None:
            return "sqlite"
        return "inmemory"

    @property
    def resolved_cache_type(self) -> Literal["inmemory", "redis"]:
        """The cache backend after applying the ``auto`` rules."""
        if self.cache_type != "auto":
            return self.cache_type
        return "redis" if self.cache_redis_url is not None else "inmemory"

    def source_of(self, name: str) -> SettingSource:
        """Where a setting came from: ``"argument"``, ``"environment"`` or ``"default"``."""
        if name not in _BY_NAME:
            msg = f"unknown setting {name!r}; settings: {', '.join(_BY_NAME)}"
            raise ConfigError(msg, source=name, allowed=tuple(_BY_NAME))
        return cast(SettingSource, self._sources[name])

    def with_changes(self, **changes: Any) -> TaskiqFlowConfig:
        """Return a copy with ``changes`` applied (validated like constructor arguments)."""
        unknown = sorted(set(changes) - set(_BY_NAME))
        if unknown:
            msg = f"unknown setting(s) {', '.join(unknown)}; settings: {', '.join(_BY_NAME)}"
            raise ConfigError(msg, source=unknown[0], allowed=tuple(_BY_NAME))
        values = {name: getattr(self, name) for name in _BY_NAME}
        values.update(changes)
        copy = TaskiqFlowConfig(**values, environ={})
        sources = {n: ("argument" if n in changes else self._sources[n]) for n in _BY_NAME}
        object.__setattr__(copy, "_sources", sources)
        return copy

    def to_dict(self, *, mask_secrets: bool = True) -> dict[str, Any]:
        """Every setting by name; Redis passwords are masked unless ``mask_secrets=False``."""
        out: dict[str, Any] = {}
        for name in _BY_NAME:
            value = getattr(self, name)
            if mask_secrets and name.endswith("_redis_url") and value is not None:
                value = mask_url(value)
            out[name] = value
        return out

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        return iter(self.to_dict().items())

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"TaskiqFlowConfig({inner})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TaskiqFlowConfig):
            return NotImplemented
        return self.to_dict(mask_secrets=False) == other.to_dict(mask_secrets=False)

    def __hash__(self) -> int:
        return hash(tuple(self.to_dict(mask_secrets=False).items()))

    @staticmethod
    def settings() -> list[dict[str, Any]]:
        """Describe every setting: name, environment variable, default, meaning."""
        return [
            {"name": f.name, "env_var": f.env_var, "default": f.default, "description": f.doc}
            for f in _FIELDS
        ]
