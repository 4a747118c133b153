"""``TaskiqFlowConfig``: every taskiq-flow setting, from arguments or ``TASKIQ_FLOW_*``."""

from __future__ import annotations

import enum
import os
from collections.abc import Iterator, Mapping
from typing import Any, Final, Literal, cast

from taskiq_flow.config._environ import check_environment
from taskiq_flow.config._fields import BY_NAME as _BY_NAME
from taskiq_flow.config._fields import (
    CACHE_TYPES,
    ENV_PREFIX,
    STORAGE_TYPES,
    CacheType,
    StorageType,
)
from taskiq_flow.config._fields import FIELDS as _FIELDS
from taskiq_flow.config._parse import mask_url
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


class _Unset(enum.Enum):
    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset.UNSET
"""Default of every ``TaskiqFlowConfig`` argument: "not given, read the environment"."""

SettingSource = Literal["argument", "environment", "default"]


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
        storage_spool_dir: the spool directory (default ``./.taskiq-flow/spool``).
        storage_enabled: whether ``StorageMiddleware`` records results.
        cache_type: ``"auto"`` (default), ``"inmemory"`` or ``"redis"``.
        cache_redis_url: Redis URL for the cache; required by ``cache_type="redis"``.
        cache_default_ttl: seconds a cached result stays fresh (default 3600).
        cache_lock_timeout: Redis dogpile lock lease in seconds (default 10).
        cache_max_entries: in-memory cache bound (LRU); ``None`` is unbounded.
        cache_key_prefix: Redis cache key prefix (default ``"taskiq_flow_cache:"``).
        cache_enabled: whether ``CacheMiddleware`` answers from the cache.
        cache_at_send: whether ``CacheMiddleware`` answers cached and in-flight calls
            at ``kiq()``, sending nothing (default ``True``).
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
        "_unknown",
        "cache_at_send",
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
        "storage_spool_dir",
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
    storage_spool_dir: str | None
    storage_enabled: bool
    cache_type: CacheType
    cache_redis_url: str | None
    cache_default_ttl: int
    cache_lock_timeout: int
    cache_max_entries: int | None
    cache_key_prefix: str
    cache_enabled: bool
    cache_at_send: bool
    result_backend: bool
    _sources: dict[str, str]
    _unknown: tuple[tuple[str, str | None], ...]

    def __init__(
        self,
        *,
        storage_type: str | _Unset = UNSET,
        storage_redis_url: str | _Unset | None = UNSET,
        storage_sqlite_path: str | os.PathLike[str] | _Unset | None = UNSET,
        storage_ttl_seconds: int | _Unset | None = UNSET,
        storage_max_entries: int | _Unset | None = UNSET,
        storage_key_prefix: str | _Unset = UNSET,
        storage_spool_dir: str | os.PathLike[str] | _Unset | None = UNSET,
        storage_enabled: bool | _Unset = UNSET,
        cache_type: str | _Unset = UNSET,
        cache_redis_url: str | _Unset | None = UNSET,
        cache_default_ttl: int | _Unset = UNSET,
        cache_lock_timeout: int | _Unset = UNSET,
        cache_max_entries: int | _Unset | None = UNSET,
        cache_key_prefix: str | _Unset = UNSET,
        cache_enabled: bool | _Unset = UNSET,
        cache_at_send: bool | _Unset = UNSET,
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
            "storage_spool_dir": storage_spool_dir,
            "storage_enabled": storage_enabled,
            "cache_type": cache_type,
            "cache_redis_url": cache_redis_url,
            "cache_default_ttl": cache_default_ttl,
            "cache_lock_timeout": cache_lock_timeout,
            "cache_max_entries": cache_max_entries,
            "cache_key_prefix": cache_key_prefix,
            "cache_enabled": cache_enabled,
            "cache_at_send": cache_at_send,
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
        known = {field.env_var for field in _FIELDS}
        object.__setattr__(self, "_unknown", check_environment(env, known, ENV_PREFIX))
        self._check_backend_needs()

    @property
    def unknown_variables(self) -> tuple[tuple[str, str | None], ...]:
        """The ``TASKIQ_FLOW_*`` variables no setting reads, each with the closest one.

        ``(variable, closest setting's variable or None)`` pairs; each was logged once.
        """
        return self._unknown

    def source_label(self, name: str) -> str:
        """The name to blame for a setting: its variable if read from the environment."""
        if self._sources.get(name) == "environment":
            return _BY_NAME[name].env_var
        return name

    def _check_backend_needs(self) -> None:
        needs = (
            ("storage_type", "redis", "storage_redis_url", "a Redis URL (redis://host:6379/0)"),
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
        object.__setattr__(copy, "_unknown", self._unknown)
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
