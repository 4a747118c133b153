"""Import isolation: no taskiq, no redis unless asked, and the Redis extra named when missing."""

from __future__ import annotations

import subprocess
import sys

import taskiq_flow.cache
from taskiq_flow.cache import errors


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_importing_the_cache_imports_neither_taskiq_nor_redis_nor_sqlite() -> None:
    # The cache builds on the storage package's low-level API (taskiq_flow.storage.kit),
    # but not on its adapters: the SQLite driver stays unloaded too.
    proc = _run(
        "import sys, taskiq_flow.cache\n"
        "bad = [m for m in sys.modules if m.startswith(('taskiq.', 'redis.'))"
        " or m in ('taskiq', 'redis', 'aiosqlite', 'taskiq_flow.cache.redis',"
        " 'taskiq_flow.storage.sqlite', 'taskiq_flow.storage.kit.redis')]\n"
        "print(bad)"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_redis_adapter_without_redis_names_the_extra() -> None:
    proc = _run(
        "import sys\n"
        "sys.modules['redis'] = None\n"
        "sys.modules['redis.asyncio'] = None\n"
        "import taskiq_flow.cache as c\n"
        "c.InMemoryCacheAdapter()\n"
        "try:\n"
        "    c.RedisCacheAdapter\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert "taskiq-flow-cache[redis]" in proc.stdout


def test_public_names() -> None:
    for name in taskiq_flow.cache.__all__:
        assert getattr(taskiq_flow.cache, name) is not None
    assert issubclass(errors.CacheLockTimeout, TimeoutError)
    assert issubclass(errors.CacheSerializationError, TypeError)
    assert issubclass(errors.CacheConnectionError, ConnectionError)
    assert issubclass(errors.CacheValueError, ValueError)
