"""The benchmark scripts still run: each once with ``--quick --json``, against the test Redis.

Figures are not judged here (a loaded CI machine says nothing about speed); only that the
script runs to the end, checks its own answers, and reports every row.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "scripts" / "bench"

pytestmark = pytest.mark.redis


def test_result_backend_bench_runs(redis_url: str) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / "result_backend.py"), "--quick", "--json",
         "--redis-url", redis_url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    rows = report["rows"]
    assert {(r["payload"], r["mode"]) for r in rows} == {
        (payload, mode)
        for payload in ("int", "dict", "list", "error")
        for mode in ("sequential", f"{report['concurrency']} in flight")
    }
    assert all(r["ours_per_s"] > 0 and r["baseline_per_s"] > 0 for r in rows)
