"""Fixtures: the contract suite runs every test over memory, Redis and a SQLite file."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from taskiq_flow.storage import BaseStorageAdapter, InMemoryStorageAdapter, SQLiteStorageAdapter

StorageFactory = Callable[..., BaseStorageAdapter]
BACKENDS = ["memory", "redis", "sqlite"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def make_storage(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[StorageFactory]:
    """Build adapters of the parametrised kind; every one is closed at teardown.

    Redis adapters share the test's (flushed) server; SQLite adapters share one real file.
    """
    made: list[BaseStorageAdapter] = []
    url = request.getfixturevalue("redis_url") if backend == "redis" else None
    db_file = tmp_path / "storage.db"

    def factory(**options: Any) -> BaseStorageAdapter:
        adapter: BaseStorageAdapter
        if backend == "memory":
            adapter = InMemoryStorageAdapter(**options)
        elif backend == "redis":
            from taskiq_flow.storage.redis import RedisStorageAdapter

            adapter = RedisStorageAdapter(url, **options)
        else:
            adapter = SQLiteStorageAdapter(db_file, **options)
        made.append(adapter)
        return adapter

    yield factory
    for adapter in made:
        await adapter.close()


@pytest.fixture
def storage(make_storage: StorageFactory) -> BaseStorageAdapter:
    return make_storage()
