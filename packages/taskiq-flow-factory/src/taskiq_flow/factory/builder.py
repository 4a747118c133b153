"""``StorageAdapterFactory``: adapters and middlewares built from a ``TaskiqFlowConfig``."""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import TYPE_CHECKING, Final, NotRequired, TypedDict

from taskiq_flow.config import BackendNotInstalledError, TaskiqFlowConfig

if TYPE_CHECKING:
    from taskiq_flow.cache import BaseCacheAdapter
    from taskiq_flow.middlewares import (
        CacheMiddleware,
        StorageMiddleware,
        StorageResultBackend,
    )
    from taskiq_flow.storage import BaseStorageAdapter

__all__ = ["DEFAULT_SQLITE_PATH", "DefaultMiddlewares", "StorageAdapterFactory"]

logger = logging.getLogger("taskiq_flow.factory")

DEFAULT_SQLITE_PATH: Final = os.path.join(".taskiq-flow", "store.sqlite3")
"""The SQLite store of ``storage_type="sqlite"`` without a path (and of the CLI's demo)."""

_announced: set[str] = set()


def _default_sqlite_path() -> str:
    """:data:`DEFAULT_SQLITE_PATH`, its directory created; said once per process.

    Only this default directory is created: an explicit path whose directory is missing
    is an error naming it (a typo must not scatter stores around).
    """
    directory = os.path.dirname(DEFAULT_SQLITE_PATH)
    os.makedirs(directory, exist_ok=True)
    where = os.path.abspath(DEFAULT_SQLITE_PATH)
    if where not in _announced:
        _announced.add(where)
        logger.info(
            "taskiq-flow: storage_type='sqlite' without a path: storing in %s "
            "(set TASKIQ_FLOW_STORAGE_SQLITE_PATH to choose)",
            where,
        )
    return DEFAULT_SQLITE_PATH


class DefaultMiddlewares(TypedDict):
    """What ``create_default_middlewares`` returns; add ``cache`` before ``storage``.

    ``result_backend`` is present only with ``result_backend=True`` in the config: a
    ``StorageResultBackend`` over the storage middleware's own adapter, for
    ``broker.with_result_backend(...)``.
    """

    cache: CacheMiddleware
    storage: StorageMiddleware
    result_backend: NotRequired[StorageResultBackend]


def _require_redis(side: str, config: TaskiqFlowConfig) -> None:
    # Check the driver itself, so that an ImportError from a real bug is never relabelled.
    if importlib.util.find_spec("redis") is None:
        type_field = f"{side}_type"
        # Under "auto" it is the URL that chose Redis: blame the setting the user wrote.
        chosen_by = type_field if getattr(config, type_field) == "redis" else f"{side}_redis_url"
        source = config.source_label(chosen_by)
        extra = f"taskiq-flow-{side}[redis]"
        raise BackendNotInstalledError("redis", extra, source=source)


class StorageAdapterFactory:
    """Builds storage and cache adapters, and both middlewares, from one configuration.

    Every method takes an optional ``TaskiqFlowConfig``; without one it reads the
    ``TASKIQ_FLOW_*`` environment variables (``TaskiqFlowConfig()``). The ``auto``
    type picks Redis when that side has a Redis URL, SQLite when storage has a SQLite
    path, and in-memory otherwise; it never connects to a server nobody configured.
    Adapters connect lazily, on first use, inside the running event loop.
    """

    @staticmethod
    def create_storage_adapter(config: TaskiqFlowConfig | None = None) -> BaseStorageAdapter:
        """Return the storage adapter the configuration selects.

        Raises:
            ConfigError: a setting is invalid (raised while reading the environment).
            BackendNotInstalledError: Redis is selected but ``redis`` is not installed.
        """
        config = TaskiqFlowConfig() if config is None else config
        kind = config.resolved_storage_type
        if kind == "redis":
            _require_redis("storage", config)
            from taskiq_flow.storage import RedisStorageAdapter  # noqa: PLC0415

            return RedisStorageAdapter(
                redis_url=config.storage_redis_url,
                ttl_seconds=config.storage_ttl_seconds,
                key_prefix=config.storage_key_prefix,
            )
        if kind == "sqlite":
            from taskiq_flow.storage import SQLiteStorageAdapter  # noqa: PLC0415

            path = config.storage_sqlite_path or _default_sqlite_path()
            return SQLiteStorageAdapter(path, ttl_seconds=config.storage_ttl_seconds)
        from taskiq_flow.storage import InMemoryStorageAdapter  # noqa: PLC0415

        return InMemoryStorageAdapter(
            max_entries=config.storage_max_entries, ttl_seconds=config.storage_ttl_seconds
        )

    @staticmethod
    def create_cache_adapter(config: TaskiqFlowConfig | None = None) -> BaseCacheAdapter:
        """Return the cache adapter the configuration selects.

        Raises:
            ConfigError: a setting is invalid (raised while reading the environment).
            BackendNotInstalledError: Redis is selected but ``redis`` is not installed.
        """
        config = TaskiqFlowConfig() if config is None else config
        if config.resolved_cache_type == "redis":
            _require_redis("cache", config)
            from taskiq_flow.cache import RedisCacheAdapter  # noqa: PLC0415

            return RedisCacheAdapter(
                redis_url=config.cache_redis_url,
                default_ttl=config.cache_default_ttl,
                lock_timeout=config.cache_lock_timeout,
                key_prefix=config.cache_key_prefix,
            )
        from taskiq_flow.cache import InMemoryCacheAdapter  # noqa: PLC0415

        return InMemoryCacheAdapter(
            max_entries=config.cache_max_entries, default_ttl=config.cache_default_ttl
        )

    @classmethod
    def create_cache_middleware(cls, config: TaskiqFlowConfig | None = None) -> CacheMiddleware:
        """Return a ``CacheMiddleware`` over ``create_cache_adapter(config)``."""
        from taskiq_flow.middlewares import CacheMiddleware  # noqa: PLC0415

        config = TaskiqFlowConfig() if config is None else config
        return CacheMiddleware(
            cache=cls.create_cache_adapter(config),
            default_ttl=config.cache_default_ttl,
            enabled=config.cache_enabled,
            answer_at_send=config.cache_at_send,
        )

    @classmethod
    def create_storage_middleware(cls, config: TaskiqFlowConfig | None = None) -> StorageMiddleware:
        """Return a ``StorageMiddleware`` over ``create_storage_adapter(config)``."""
        from taskiq_flow.middlewares import StorageMiddleware  # noqa: PLC0415

        config = TaskiqFlowConfig() if config is None else config
        return StorageMiddleware(
            storage=cls.create_storage_adapter(config),
            enabled=config.storage_enabled,
            ttl_seconds=config.storage_ttl_seconds,
            spool_dir=config.storage_spool_dir,
        )

    @classmethod
    def create_default_middlewares(
        cls, config: TaskiqFlowConfig | None = None
    ) -> DefaultMiddlewares:
        """Return ``{"cache": CacheMiddleware, "storage": StorageMiddleware}`` for the config.

        Add them in that order, so that a cache hit short-circuits before storage::

            middlewares = StorageAdapterFactory.create_default_middlewares()
            broker.add_middlewares(middlewares["cache"], middlewares["storage"])

        With ``result_backend=True`` (``TASKIQ_FLOW_RESULT_BACKEND=true``) the dict also
        holds ``"result_backend"``: a ``StorageResultBackend`` over the **same** adapter
        instance as the ``StorageMiddleware``, so each task is one key, written once::

            broker.with_result_backend(middlewares["result_backend"])
        """
        config = TaskiqFlowConfig() if config is None else config
        storage = cls.create_storage_middleware(config)
        middlewares: DefaultMiddlewares = {
            "cache": cls.create_cache_middleware(config),
            "storage": storage,
        }
        if config.result_backend:
            from taskiq_flow.middlewares import StorageResultBackend  # noqa: PLC0415

            # The middleware's TTL too: the two then share one writer (one buffer).
            middlewares["result_backend"] = StorageResultBackend(
                storage.storage,
                ttl_seconds=config.storage_ttl_seconds,
                spool_dir=config.storage_spool_dir,
            )
        return middlewares
