"""The meta package re-exports the one-store and pipeline names lazily."""

from __future__ import annotations

import subprocess
import sys

import taskiq_flow
from taskiq_flow import middlewares


def test_one_store_names_are_exported_from_the_top_level() -> None:
    assert taskiq_flow.StorageScheduleSource is middlewares.StorageScheduleSource
    assert taskiq_flow.StorageResultBackend is middlewares.StorageResultBackend
    for name in ("StorageScheduleSource", "StorageResultBackend", "PipelineCancelledError"):
        assert name in taskiq_flow.__all__


def test_importing_the_storage_package_does_not_import_taskiq() -> None:
    code = "import sys, taskiq_flow.storage; assert 'taskiq' not in sys.modules; print('ok')"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
