"""Packaging promises: no taskiq import, the redis extra named when missing, the factory path."""

from __future__ import annotations

import subprocess
import sys

import taskiq_flow.storage as storage_pkg


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_import_does_not_pull_taskiq_or_redis() -> None:
    result = _run(
        "import sys, taskiq_flow.storage\n"
        "assert 'taskiq' not in sys.modules, 'taskiq imported'\n"
        "assert 'redis' not in sys.modules, 'redis imported eagerly'\n"
    )
    assert result.returncode == 0, result.stderr


def test_missing_redis_names_the_extra() -> None:
    result = _run(
        "import sys\n"
        "sys.modules['redis'] = None  # as if the extra were not installed\n"
        "import taskiq_flow.storage\n"
        "try:\n"
        "    taskiq_flow.storage.RedisStorageAdapter\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    assert result.returncode == 0, result.stderr
    assert "taskiq-flow-storage[redis]" in result.stdout


def test_missing_factory_says_what_to_install() -> None:
    result = _run(
        "import sys\n"
        "sys.modules['taskiq_flow.factory'] = None  # as if taskiq-flow-factory were absent\n"
        "try:\n"
        "    import taskiq_flow.storage.factory\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    assert result.returncode == 0, result.stderr
    assert "pip install taskiq-flow-factory" in result.stdout


def test_public_names() -> None:
    for name in storage_pkg.__all__:
        assert getattr(storage_pkg, name) is not None
    assert not hasattr(storage_pkg, "nope")
