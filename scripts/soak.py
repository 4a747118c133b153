"""Soak: many tasks through two real workers with both middlewares over Redis.

    uv run python scripts/soak.py                 # 100 000 tasks (the full run)
    uv run python scripts/soak.py --tasks 5000    # a short one
    uv run python scripts/soak.py --json

Part 1 — two ``taskiq worker`` processes (``tests-integration/faults/apps/fault_app.py``:
ListQueueBroker, Redis results, RedisCacheAdapter, StorageMiddleware on a
RedisStorageAdapter with ``store_cache_hits``), all on one private ``redis-server``
(started here unless ``--redis-url``). Half the tasks draw their argument from a hot set
of ``HOT`` values (hits after the first execution of each), half are unique (misses).
The producer keeps the queue under ``--window`` messages. Sampled as it goes: Redis
``CLIENT LIST`` count, lock keys, the workers' RSS. At the end:

- every task has its record, with the right return value;
- executions = unique tasks + hot values exactly (the dogpile lock across two workers);
- no lock key left; client connections no more than after warm-up (+ slack);
- worker RSS after warm-up grows by less than ``--rss-growth-mb``.

Part 2 — in one process, ``--memory-tasks`` tasks through ``InMemoryBroker`` with
``InMemoryCacheAdapter(max_entries=...)`` and ``InMemoryStorageAdapter(max_entries=...)``:
entry counts never exceed the bounds, traced Python memory stays flat.

Exit code 0 when every check holds, 1 otherwise. ``tests-integration/test_soak.py`` runs
the same code with a CI-sized count (``TASKIQ_FLOW_SOAK_TASKS``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from taskiq import InMemoryBroker

from taskiq_flow.cache import InMemoryCacheAdapter
from taskiq_flow.middlewares import CacheMiddleware, StorageMiddleware
from taskiq_flow.storage import InMemoryStorageAdapter
from taskiq_flow_testing import RedisServer, WorkerProcess, group_rss_kib

APP_DIR = Path(__file__).resolve().parents[1] / "tests-integration" / "faults" / "apps"
HOT = 500
CONNECTION_SLACK = 24
POOL_LIMIT = 100  # what one client pool filled to its limit added in these runs


def _job(i: int) -> tuple[int, str]:
    return ((i // 2) % HOT, "hot") if i % 2 else (i, "cold")


async def _count(client: aioredis.Redis, pattern: str) -> int:
    n = 0
    async for _ in client.scan_iter(match=pattern, count=5000):
        n += 1
    return n


async def soak_workers(
    tasks: int,
    redis_url: str,
    *,
    window: int = 2000,
    rss_growth_mb: float = 60.0,
    log_dir: Path | None = None,
) -> dict[str, Any]:
    """Part 1; returns the figures and a list of failed checks under ``"failures"``."""
    sys.path.insert(0, str(APP_DIR))
    try:
        import fault_app  # noqa: PLC0415 - the app lives with the fault suite
    finally:
        sys.path.remove(str(APP_DIR))
    queue = f"soak-{uuid.uuid4().hex[:8]}"
    env = {"FAULT_REDIS_URL": redis_url, "FAULT_QUEUE": queue, "FAULT_STORE_CACHE_HITS": "1"}
    log_dir = log_dir or Path(tempfile.gettempdir())
    workers = [
        WorkerProcess(
            "fault_app:create_broker",
            app_dir=APP_DIR,
            env=env,
            log_path=log_dir / f"soak-worker{i}.log",
        ).start()
        for i in range(2)
    ]
    app = fault_app.build(env)
    client = aioredis.from_url(redis_url)
    samples: list[dict[str, Any]] = []
    failures: list[str] = []
    task_ids: list[str] = []
    started = time.monotonic()

    async def sample(done: int) -> None:
        clients = len(await client.client_list())
        rss = [group_rss_kib(w.proc.pid) for w in workers if w.proc is not None]
        locks = await _count(client, "taskiq_flow_cache:lock:*")
        samples.append({"sent": done, "clients": clients, "rss_kib": rss, "locks": locks})

    try:
        await app.broker.startup()
        compute = app.tasks["compute"]
        step = max(1, tasks // 20)
        next_sample = step
        batch = 500
        for start in range(0, tasks, batch):
            while await client.llen(queue) > window:  # noqa: ASYNC110 - polling Redis
                await asyncio.sleep(0.02)
            sent = await asyncio.gather(
                *(compute.kiq(*_job(i)) for i in range(start, min(tasks, start + batch)))
            )
            task_ids += [t.task_id for t in sent]
            if len(task_ids) >= next_sample:
                await sample(len(task_ids))
                next_sample += step
        # Drain: every record written.
        deadline = time.monotonic() + max(60.0, tasks / 200)
        while await _count(client, "taskiq_flow:task:*") < tasks:
            if time.monotonic() > deadline or not all(w.alive for w in workers):
                break
            await asyncio.sleep(0.5)
        elapsed = time.monotonic() - started
        await sample(tasks)

        records: dict[str, Any] = {}
        for start in range(0, tasks, 1000):
            chunk = [f"task:{tid}" for tid in task_ids[start : start + 1000]]
            records.update(await app.storage.get_many(chunk))
        wrong = 0
        hits = 0
        for i, tid in enumerate(task_ids):
            record = records.get(f"task:{tid}")
            if record is None:
                continue
            x, salt = _job(i)
            if json.loads(record["return_value"]) != {"x": x, "sq": x * x, "salt": salt}:
                wrong += 1
            hits += bool(record.get("cached"))
        # A sample of the results the producer would read (1 in 100).
        bad_results = 0
        for i in range(0, tasks, 100):
            result = await app.broker.result_backend.get_result(task_ids[i])
            x, salt = _job(i)
            if result.is_err or result.return_value != {"x": x, "sq": x * x, "salt": salt}:
                bad_results += 1
        hot_tasks = tasks // 2
        expected_executions = (tasks - hot_tasks) + min(HOT, hot_tasks)
        executions = len(records) - hits
        # The first two thirds of the run: pools and caches warm up (the producer's own
        # cache pool fills once hits are answered at send). The last third: must be flat.
        warm = samples[: max(1, 2 * len(samples) // 3)]
        later = samples[len(warm) :]
        warm_clients = max(s["clients"] for s in warm)
        max_clients = max(s["clients"] for s in samples)
        warm_rss = [max(s["rss_kib"][k] for s in warm) for k in range(len(workers))]
        end_rss = samples[-1]["rss_kib"]
        peak_rss = [max(s["rss_kib"][k] for s in samples) for k in range(len(workers))]
        figures: dict[str, Any] = {
            "tasks": tasks,
            "seconds": round(elapsed, 1),
            "tasks/s": round(tasks / elapsed, 1),
            "records present": len(records),
            "records lost": tasks - len(records),
            "wrong return values": wrong,
            "bad sampled results": bad_results,
            "cache hits (records flagged cached)": hits,
            "executions": executions,
            "expected executions": expected_executions,
            "redis clients, max over first half / max / end": [
                warm_clients,
                max_clients,
                samples[-1]["clients"],
            ],
            "lock keys left": samples[-1]["locks"],
            "worker RSS MiB, max over first half": [round(r / 1024, 1) for r in warm_rss],
            "worker RSS MiB at end": [round(r / 1024, 1) for r in end_rss],
            "peak worker RSS MiB": [round(r / 1024, 1) for r in peak_rss],
            "workers alive": all(w.alive for w in workers),
            "worker processes started (2 = none restarted)": await client.scard(
                f"fault:worker-pids:{queue}"
            ),
        }
        if figures["records lost"]:
            failures.append(f"{figures['records lost']} records lost")
        if wrong or bad_results:
            failures.append(f"{wrong} wrong records, {bad_results} wrong results")
        if executions != expected_executions:
            failures.append(f"{executions} executions, expected {expected_executions}")
        if samples[-1]["locks"]:
            failures.append(f"{samples[-1]['locks']} lock keys left behind")
        # A leak grows without bound; a pool fills up to its limit and stays there. The
        # producer's pools (cache lookups at send, storage) may fill at any time once
        # hits are answered at send, so the bound is what the warm-up held plus two
        # pools filled to their limit (a long run of the script shows a slow leak).
        later_clients = [s["clients"] for s in later]
        if later_clients and max(later_clients) > warm_clients + 2 * POOL_LIMIT + CONNECTION_SLACK:
            failures.append(f"connections grew: {[s['clients'] for s in samples]}")
        for k in range(len(workers)):
            if (end_rss[k] - warm_rss[k]) / 1024 > rss_growth_mb:
                failures.append(f"worker {k} RSS grew {warm_rss[k]} -> {end_rss[k]} KiB")
        if figures["worker processes started (2 = none restarted)"] != len(workers):
            failures.append("a worker process died and was restarted")
        if not figures["workers alive"]:
            failures.append("a worker died")
        figures["failures"] = failures
        return figures
    finally:
        for worker in workers:
            worker.stop()
        await app.close()
        await client.aclose()


async def soak_memory(
    tasks: int, *, cache_entries: int = 1000, storage_entries: int = 5000
) -> dict[str, Any]:
    """Part 2: bounded in-memory adapters; returns figures and ``"failures"``."""
    broker = InMemoryBroker(await_inplace=True)
    cache = InMemoryCacheAdapter(max_entries=cache_entries)
    storage = InMemoryStorageAdapter(max_entries=storage_entries)
    cache_mw = CacheMiddleware(cache=cache)
    storage_mw = StorageMiddleware(storage=storage)
    broker.add_middlewares(cache_mw, storage_mw)

    @broker.task(task_name="soak.compute")
    async def compute(x: int, salt: str) -> dict[str, Any]:
        return {"x": x, "sq": x * x, "salt": salt}

    failures: list[str] = []
    traced: list[int] = []
    max_cache = max_storage = 0
    wrong = 0
    tracemalloc.start()
    started = time.monotonic()
    await broker.startup()
    try:
        step = max(1, tasks // 10)
        for i in range(tasks):
            x, salt = _job(i)
            task = await compute.kiq(x, salt)
            result = await task.wait_result()
            if result.return_value != {"x": x, "sq": x * x, "salt": salt}:
                wrong += 1
            if i % step == step - 1:
                max_cache = max(max_cache, len(cache))
                max_storage = max(max_storage, len(await storage.keys("*")))
                traced.append(tracemalloc.get_traced_memory()[0])
    finally:
        await broker.shutdown()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    stats = cache_mw.get_stats()
    figures: dict[str, Any] = {
        "tasks": tasks,
        "seconds": round(time.monotonic() - started, 1),
        "max cache entries (bound)": [max_cache, cache_entries],
        "max storage entries (bound)": [max_storage, storage_entries],
        "hit rate": round(stats["hit_rate"], 3),
        "traced MiB after 20% / at end / peak": [
            round(traced[min(1, len(traced) - 1)] / 2**20, 1),
            round(traced[-1] / 2**20, 1),
            round(peak / 2**20, 1),
        ],
        "wrong answers": wrong,
    }
    if max_cache > cache_entries or max_storage > storage_entries:
        failures.append("an in-memory adapter grew past max_entries")
    if wrong:
        failures.append(f"{wrong} wrong answers")
    # After the stores are full, memory is flat: allow 10% + 2 MiB of noise.
    if traced[-1] > traced[min(1, len(traced) - 1)] * 1.10 + 2 * 2**20:
        failures.append(f"traced memory grew: {[round(t / 2**20, 1) for t in traced]} MiB")
    figures["failures"] = failures
    return figures


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--memory-tasks", type=int, default=100_000)
    parser.add_argument("--redis-url", help="use this server instead of a private one")
    parser.add_argument("--window", type=int, default=2000)
    parser.add_argument("--rss-growth-mb", type=float, default=60.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        url = args.redis_url or stack.enter_context(RedisServer()).url
        workers = await soak_workers(
            args.tasks, url, window=args.window, rss_growth_mb=args.rss_growth_mb
        )
    memory = await soak_memory(args.memory_tasks)
    report = {"workers_over_redis": workers, "in_memory_bounded": memory}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for part, figures in report.items():
            print(f"\n{part}")
            for name, value in figures.items():
                print(f"  {name:<42} {value}")
    return 1 if workers["failures"] or memory["failures"] else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
