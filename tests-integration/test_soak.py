"""The soak of ``scripts/soak.py`` at CI size (the script runs the full 100 000).

``TASKIQ_FLOW_SOAK_TASKS`` (default 3000) tasks through two real workers with both
middlewares over a private Redis, and ``TASKIQ_FLOW_SOAK_MEMORY_TASKS`` (default 5000)
through bounded in-memory adapters. Every check of the script must hold; the figures
are printed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

from taskiq_flow_testing import RedisServer

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "soak.py"
TASKS = int(os.environ.get("TASKIQ_FLOW_SOAK_TASKS", "3000"))
MEMORY_TASKS = int(os.environ.get("TASKIQ_FLOW_SOAK_MEMORY_TASKS", "5000"))

pytestmark = [pytest.mark.redis, pytest.mark.slow]


def _soak_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("taskiq_flow_soak", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # taskiq looks a task's module up in sys.modules when it is declared.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def test_soak_two_workers_over_redis(redis_server: RedisServer, tmp_path: Path) -> None:
    soak = _soak_module()
    # A short run is mostly warm-up: memory growth is judged by the full run (script).
    figures = await soak.soak_workers(
        TASKS, redis_server.url, window=500, rss_growth_mb=150, log_dir=tmp_path
    )
    print("\nFIGURES soak (workers over Redis):", json.dumps(figures))
    assert figures["failures"] == []
    assert figures["records lost"] == 0


async def test_soak_in_memory_adapters_stay_bounded() -> None:
    soak = _soak_module()
    # 1000 entries hold the 500 hot values between two uses of each: mixed hits and misses.
    figures = await soak.soak_memory(MEMORY_TASKS, cache_entries=1000, storage_entries=1000)
    print("\nFIGURES soak (in-memory, bounded):", json.dumps(figures))
    assert figures["failures"] == []
    assert figures["max cache entries (bound)"][0] <= 1000
    assert figures["hit rate"] > 0.3
    assert figures["max storage entries (bound)"][0] <= 1000
