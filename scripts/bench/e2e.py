"""End to end: the full stack vs the bare taskiq-redis broker, with real worker processes.

    uv run python scripts/bench/e2e.py [--json] [--quick] [--tasks N] [--rounds R] [--row NAME]...

A private ``redis-server`` holds everything (queue, results, cache, records). Per stack,
two real ``taskiq worker`` processes (this module is also their app: ``e2e:create_broker``)
pop a taskiq-redis ``ListQueueBroker`` queue of their own (``socket_timeout=None``: see
``taskiq_flow_testing.brokers``); the producer (this process)
kicks N tasks, 100 at a time in flight, then awaits every result in kick order.

Rows (each round runs every row once, the order rotating per round; tasks/s is the median
over rounds, the ratio the median over rounds of the row's rate / its baseline's rate in
the same round):

* ``bare``: ``ListQueueBroker`` + taskiq-redis ``RedisAsyncResultBackend``, a no-op task;
* ``both, misses``: + ``CacheMiddleware(RedisCacheAdapter)`` and
  ``StorageMiddleware(RedisStorageAdapter)``, taskiq-redis's result backend, new args;
* ``both + SRB, misses``: the same, but ``StorageResultBackend`` over the very
  ``RedisStorageAdapter`` of ``StorageMiddleware`` instead of taskiq-redis's backend;
* ``both, hits``: the ``both`` stack, args whose results are cached (answered in the worker);
* ``both, hits answered at send``: the same with ``CacheMiddleware``'s default
  ``answer_at_send=True``: cached calls are answered at ``kiq()`` and never sent (issue 13);
  with it, the median latency of one ``kiq()`` + ``wait_result()`` alone, beside ``bare``'s;
* ``both, misses claimed at send``: the same defaults, new args: the producer's look
  claims each call's lease at ``kiq()`` (the claims of calls kicked together share one
  pipeline), the worker adopts the fresh claim without asking the cache again and
  commits (the user's default stack, all misses);
* ``cpu 1ms bare`` / ``cpu 1ms both, misses``: a task burning 1 ms of CPU; its ratio is
  against ``cpu 1ms bare``;
* ``both, misses, metrics off`` / ``both, hits, metrics off``: the ``both`` stack with
  ``metrics=False`` on both middlewares and no cluster-wide cache stats
  (``cluster_stats_interval=None``); each ratio is against the same row with metrics on
  (Prometheus metrics, span attributes and the per-task counts written to Redis once per
  second) in the same round: ``1.03x`` means metrics cost 3 % of that row's rate.

Columns: tasks/s, ratio to the row's baseline, Redis commands per task and round trips
per task.

* Commands: the ``calls`` of every ``INFO commandstats`` entry, diffed around each round
  (commands run inside scripts count there, so a script is its ``EVALSHA`` plus what it
  runs; ``EVALSHA`` per task is shown apart). Not counted: the producer's result polls
  (``is_ready`` / ``get_result``, counted client-side and subtracted, one command each) and
  connection housekeeping (``INFO``, ``CLIENT``, ``HELLO``, ``PING``, ``SELECT``).
* Round trips: counted client-side. Every process here replaces
  ``redis.asyncio``'s ``send_packed_command`` with a counting wrapper: one call is one
  request written to a socket (a command, or a whole pipeline), i.e. one round trip. Each
  connection pool is tagged with its owner (broker, results, cache, storage); workers
  write their counts to a file the producer reads after each round. ``rt/task`` is the
  workers' plus the producer's (its send, the LPUSH, and its cache look at ``kiq()``),
  without the result polls; the cache's share, workers' and producer's, is shown apart
  (``cache rt``).

* CPU: the worker processes' CPU time per task (``utime + stime`` of every process of
  the stack's two worker process groups, every thread included), diffed around each
  round, median over rounds; ``cpu ratio``: the baseline's CPU per task over the row's,
  the median of the per-round ratios (above 1: the row costs less). Clock ticks are
  10 ms: rounds of a few thousand tasks give a figure to the per cent, a ``--quick``
  run's are rough. Unlike tasks/s it does not move when other jobs take the cores (they
  take wall time, not our processes' CPU time), so it resolves differences of a few per
  cent, such as metrics on vs off, on a shared machine where tasks/s cannot.

``--json`` adds, per row, the per-task rate of every round, the commands per task by name
(result polls included there) and the round trips per task by owner. ``--no-coalesce``
turns the Redis connections' coalescing off in every process (the figures before it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from taskiq import AsyncBroker, TaskiqEvents, TaskiqState
from taskiq.exceptions import TaskiqResultTimeoutError
from taskiq_redis import RedisAsyncResultBackend

from taskiq_flow.cache.redis import RedisCacheAdapter
from taskiq_flow.middlewares import CacheMiddleware, StorageMiddleware, StorageResultBackend
from taskiq_flow.storage.redis import RedisStorageAdapter
from taskiq_flow_testing import list_queue_broker

TTL = 3600
IN_FLIGHT = 100  # kiq() calls awaited together
POLL = 0.002  # the producer's wait_result check interval
HOUSEKEEPING = frozenset({"info", "client|setname", "client|setinfo", "hello", "ping", "select"})
STACKS = ("bare", "both", "both_srb", "both_send", "both_off")

# -- counting round trips (in every process) ------------------------------------------------

COUNTS: Counter[str] = Counter()
_send = AbstractConnection.send_packed_command


async def _counted_send(self: Any, command: Any, check_health: bool = True) -> None:
    COUNTS[getattr(self, "e2e_tag", "other")] += 1
    await _send(self, command, check_health)


AbstractConnection.send_packed_command = _counted_send  # type: ignore[method-assign]


def tag(pool: aioredis.ConnectionPool, name: str) -> None:
    """Count the round trips of ``pool``'s connections under ``name`` (before first use)."""
    base = pool.connection_class
    pool.connection_class = type(f"E2E{base.__name__}", (base,), {"e2e_tag": name})


# -- the app (workers and producer) ---------------------------------------------------------


def cache_options() -> dict[str, Any]:
    """In-worker rows measure the worker: no answer at send, once CacheMiddleware has it."""
    if "answer_at_send" in inspect.signature(CacheMiddleware).parameters:
        return {"answer_at_send": False}
    return {}


def uncoalesced(adapter: Any) -> None:
    """Turn the connection's coalescing off (``--no-coalesce``: the figures before it)."""
    adapter.connection.coalesce = False


def build(url: str, stack: str, queue: str, side: str) -> AsyncBroker:
    """The broker of ``stack`` (``bare``, ``both``, ``both_srb``, ``both_send``,
    ``both_off``: metrics off) on ``queue``."""
    coalesce = os.environ.get("E2E_COALESCE", "1") == "1"
    broker = list_queue_broker(url, queue)
    tag(broker.connection_pool, f"{side}:broker")
    if stack == "both_srb":
        storage = RedisStorageAdapter(url, key_prefix=f"e2e:{stack}:")
        tag(storage.client.connection_pool, f"{side}:storage")
        if not coalesce:
            uncoalesced(storage)
        results: Any = StorageResultBackend(storage, ttl_seconds=TTL)
    else:
        storage = None
        results = RedisAsyncResultBackend(url, result_ex_time=TTL, prefix_str=f"e2e:{stack}")
        tag(results.redis_pool, f"{side}:results")
    broker = broker.with_result_backend(results)
    if stack != "bare":
        if storage is None:
            storage = RedisStorageAdapter(url, key_prefix=f"e2e:{stack}:")
            tag(storage.client.connection_pool, f"{side}:storage")
            if not coalesce:
                uncoalesced(storage)
        metrics = stack != "both_off"
        cache = RedisCacheAdapter(
            url,
            key_prefix=f"e2e:{stack}:cache:",
            **({} if metrics else {"cluster_stats_interval": None}),
        )
        tag(cache.client.connection_pool, f"{side}:cache")
        if not coalesce:
            uncoalesced(cache)
        broker.add_middlewares(
            # both_send: CacheMiddleware's default, answering hits at send (issue 13).
            CacheMiddleware(
                cache,
                default_ttl=TTL,
                metrics=metrics,
                **({} if stack == "both_send" else cache_options()),
            ),
            StorageMiddleware(storage, ttl_seconds=TTL, metrics=metrics),
        )

    @broker.task(task_name="e2e.noop")
    async def noop(i: int, nonce: str) -> int:
        return i

    @broker.task(task_name="e2e.cpu")
    async def cpu(i: int, nonce: str) -> int:
        end = time.perf_counter() + 0.001
        while time.perf_counter() < end:
            pass
        return i

    return broker


def create_broker() -> AsyncBroker:
    """The worker side: ``taskiq worker e2e:create_broker`` with ``E2E_*`` settings."""
    broker = build(os.environ["E2E_REDIS_URL"], os.environ["E2E_STACK"], os.environ["E2E_QUEUE"],
                   "worker")  # fmt: skip
    stats = Path(os.environ["E2E_STATS_DIR"]) / f"{os.environ['E2E_STACK']}-{os.getpid()}.json"
    state: dict[str, Any] = {}

    async def report() -> None:
        last: dict[str, int] = {}
        while True:
            if dict(COUNTS) != last or not stats.exists():
                last = dict(COUNTS)
                tmp = stats.with_suffix(".tmp")
                tmp.write_text(json.dumps(last))
                tmp.replace(stats)
            await asyncio.sleep(0.02)

    @broker.on_event(TaskiqEvents.WORKER_STARTUP)
    async def start_reporting(_: TaskiqState) -> None:
        state["task"] = asyncio.get_running_loop().create_task(report())

    return broker


# -- the producer ---------------------------------------------------------------------------


@dataclass
class RowSpec:
    name: str
    stack: str
    task: str
    hits: bool = False
    baseline: str = "bare"


ROWS = [
    RowSpec("bare", "bare", "e2e.noop"),
    RowSpec("both, misses", "both", "e2e.noop"),
    RowSpec("both + SRB, misses", "both_srb", "e2e.noop"),
    RowSpec("both, hits", "both", "e2e.noop", hits=True),
    RowSpec("both, hits answered at send", "both_send", "e2e.noop", hits=True),
    RowSpec("both, misses claimed at send", "both_send", "e2e.noop"),
    RowSpec("cpu 1ms bare", "bare", "e2e.cpu", baseline="cpu 1ms bare"),
    RowSpec("cpu 1ms both, misses", "both", "e2e.cpu", baseline="cpu 1ms bare"),
    RowSpec("both, misses, metrics off", "both_off", "e2e.noop", baseline="both, misses"),
    RowSpec("both, hits, metrics off", "both_off", "e2e.noop", hits=True, baseline="both, hits"),
]


LATENCY_ROWS = ("bare", "both, hits answered at send")


@dataclass
class Row:
    name: str
    baseline: str
    tasks_per_s: float
    ratio: float
    commands_per_task: float
    evalsha_per_task: float
    round_trips_per_task: float
    cache_round_trips_per_task: float
    worker_cpu_us_per_task: float = 0.0
    """Median over rounds of the stack's worker processes' CPU time per task."""
    cpu_ratio: float = 0.0
    """Median over rounds of the baseline's worker CPU per task over this row's."""
    rates: list[float] = field(default_factory=list)
    commands: dict[str, float] = field(default_factory=dict)
    round_trips: dict[str, float] = field(default_factory=dict)
    latency_ms: float | None = None
    """Median of one ``kiq()`` + ``wait_result()`` alone (bare and answered-at-send rows)."""


class Producer:
    """Kicks rounds of tasks and measures them."""

    def __init__(self, url: str, stats_dir: Path, brokers: dict[str, AsyncBroker],
                 groups: dict[str, list[int]]) -> None:  # fmt: skip
        self.url = url
        self.stats_dir = stats_dir
        self.brokers = brokers
        self.groups = groups
        self.admin = aioredis.Redis.from_url(url)

    def worker_counts(self, stack: str) -> Counter[str]:
        total: Counter[str] = Counter()
        for path in self.stats_dir.glob(f"{stack}-*.json"):
            with contextlib.suppress(OSError, ValueError):
                total.update(json.loads(path.read_text()))
        return total

    def worker_cpu(self, stack: str) -> float:
        """CPU seconds the workers of ``stack`` have used so far (every process, thread)."""
        from taskiq_flow_testing import group_cpu_seconds  # noqa: PLC0415 - dev tool

        return sum(group_cpu_seconds(pgid) for pgid in self.groups[stack])

    async def commandstats(self) -> dict[str, int]:
        info = await self.admin.info("commandstats")
        return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}

    async def run_round(self, spec: RowSpec, n: int, nonce: str) -> tuple[float, Any]:
        """One round: kick ``n`` tasks, await every result; rate, counter deltas and the
        workers' CPU microseconds per task."""
        broker = self.brokers[spec.stack]
        task = broker.find_task(spec.task)
        if task is None:
            raise LookupError(spec.task)
        await asyncio.sleep(0.1)  # the workers' count files catch up with the last round
        workers_before = self.worker_counts(spec.stack)
        mine_before = Counter(COUNTS)
        stats_before = await self.commandstats()
        cpu_before = self.worker_cpu(spec.stack)
        started = time.perf_counter()
        kicked = []
        for start in range(0, n, IN_FLIGHT):
            kicked += await asyncio.gather(
                *(task.kiq(i, nonce) for i in range(start, min(n, start + IN_FLIGHT)))
            )
        for i, sent in enumerate(kicked):
            try:
                result = await sent.wait_result(check_interval=POLL, timeout=120)
            except TaskiqResultTimeoutError as exc:
                raise RuntimeError(await self.lost(spec, i, sent.task_id)) from exc
            if result.is_err or result.return_value != i:
                raise RuntimeError(f"{spec.name}: task {i} returned {result!r}")
        rate = n / (time.perf_counter() - started)
        # The workers' work after the last result (post_save, the metrics' 0.5 s push)
        # belongs to this round, not to the next row on the same stack.
        await asyncio.sleep(0.6)
        cpu = (self.worker_cpu(spec.stack) - cpu_before) / n * 1e6
        stats_after = await self.commandstats()
        await asyncio.sleep(0.1)
        workers = self.worker_counts(spec.stack)
        workers.subtract(workers_before)
        mine = Counter(COUNTS)
        mine.subtract(mine_before)
        commands = Counter(stats_after)
        commands.subtract(stats_before)
        return rate, (commands, workers, mine, cpu)

    async def lost(self, spec: RowSpec, i: int, task_id: str) -> str:
        """What Redis holds about a task whose result never came (for the error)."""
        keys = sorted(k.decode() for k in await self.admin.keys(f"*{task_id}*"))
        queue = self.brokers[spec.stack].queue_name  # type: ignore[attr-defined]
        waiting = await self.admin.llen(queue)
        return (f"{spec.name}: no result for task {i} ({task_id}) in 120 s; "
                f"keys naming it: {keys}; messages still queued: {waiting}")  # fmt: skip

    async def run(self, n: int, rounds: int) -> list[Row]:
        # Warm up every stack (connections, scripts) and fill the cache the hit rows read.
        for spec in ROWS:
            await self.run_round(spec, n if spec.hits else min(n, 200), "hot")
        rates: dict[str, list[float]] = {spec.name: [] for spec in ROWS}
        cpus: dict[str, list[float]] = {spec.name: [] for spec in ROWS}
        totals: dict[str, Counter[str]] = {spec.name: Counter() for spec in ROWS}
        for r in range(rounds):
            order = ROWS[r % len(ROWS) :] + ROWS[: r % len(ROWS)]
            for spec in order:
                nonce = "hot" if spec.hits else uuid.uuid4().hex
                rate, (commands, workers, mine, cpu) = await self.run_round(spec, n, nonce)
                rates[spec.name].append(rate)
                cpus[spec.name].append(cpu)
                total = totals[spec.name]
                for name, calls in commands.items():
                    if name not in HOUSEKEEPING and calls:
                        total[f"cmd:{name}"] += calls
                for name, count in workers.items():
                    total[f"rt:{name}"] += count
                for name, count in mine.items():
                    total[f"rt:{name}"] += count
        rows = [self.row(spec, n * rounds, rates, cpus, totals) for spec in ROWS]
        for row, spec in zip(rows, ROWS, strict=True):
            if spec.name in LATENCY_ROWS:
                row.latency_ms = await self.latency(spec, min(n, 200))
        return rows

    async def latency(self, spec: RowSpec, n: int) -> float:
        """Median ms of one kiq() + wait_result() at a time (hits: the cached args)."""
        task = self.brokers[spec.stack].find_task(spec.task)
        if task is None:
            raise LookupError(spec.task)
        nonce = "hot" if spec.hits else uuid.uuid4().hex
        samples = []
        for i in range(n):
            started = time.perf_counter()
            await (await task.kiq(i, nonce)).wait_result(check_interval=POLL, timeout=60)
            samples.append(time.perf_counter() - started)
        return round(statistics.median(samples) * 1000, 3)

    def row(self, spec: RowSpec, tasks: int, rates: dict[str, list[float]],
            cpus: dict[str, list[float]], totals: dict[str, Counter[str]]) -> Row:  # fmt: skip
        total = totals[spec.name]
        polls = total["rt:producer:results"] + total["rt:producer:storage"]
        commands = {k[4:]: v / tasks for k, v in total.items() if k.startswith("cmd:")}
        trips = {k[3:]: v / tasks for k, v in total.items() if k.startswith("rt:")}
        for poll in ("producer:results", "producer:storage"):
            trips.pop(poll, None)
        # Each round's rate over its baseline's in the same round (a few seconds apart),
        # then the median: the machine's drift between rounds cancels out.
        paired = [m / b for m, b in zip(rates[spec.name], rates[spec.baseline], strict=True)]
        # CPU: the baseline's per task over the row's, so that >1 reads as "cheaper" too.
        cpu_paired = [
            b / m for m, b in zip(cpus[spec.name], cpus[spec.baseline], strict=True) if m > 0
        ]
        return Row(
            name=spec.name,
            baseline=spec.baseline,
            tasks_per_s=round(statistics.median(rates[spec.name])),
            ratio=round(statistics.median(paired), 2),
            worker_cpu_us_per_task=round(statistics.median(cpus[spec.name]), 1),
            cpu_ratio=round(statistics.median(cpu_paired), 3) if cpu_paired else 0.0,
            commands_per_task=round((sum(commands.values()) * tasks - polls) / tasks, 2),
            evalsha_per_task=round(commands.get("evalsha", 0.0), 2),
            round_trips_per_task=round(sum(trips.values()), 2),
            cache_round_trips_per_task=round(
                trips.get("worker:cache", 0.0) + trips.get("producer:cache", 0.0), 2
            ),
            rates=[round(x) for x in rates[spec.name]],
            commands={k: round(v, 3) for k, v in sorted(commands.items())},
            round_trips={k: round(v, 3) for k, v in sorted(trips.items())},
        )


async def produce(url: str, stats_dir: Path, queues: dict[str, str],
                  groups: dict[str, list[int]], n: int, rounds: int) -> list[Row]:  # fmt: skip
    brokers = {stack: build(url, stack, queues[stack], "producer") for stack in STACKS}
    for broker in brokers.values():
        await broker.startup()
    producer = Producer(url, stats_dir, brokers, groups)
    try:
        return await producer.run(n, rounds)
    finally:
        for broker in brokers.values():
            await broker.shutdown()
        await producer.admin.aclose()


def measure(n: int, rounds: int) -> list[Row]:
    """Start the server and the workers, run the producer, stop everything."""
    from taskiq_flow_testing import RedisServer, WorkerProcess  # noqa: PLC0415 - dev tool

    app_dir = Path(__file__).parent
    with RedisServer() as server, tempfile.TemporaryDirectory(prefix="e2e-") as tmp:
        stats_dir = Path(tmp)
        queues = {stack: f"e2e:{stack}:{uuid.uuid4().hex[:6]}" for stack in STACKS}
        workers = [
            WorkerProcess(
                "e2e:create_broker",
                app_dir=app_dir,
                env={"E2E_REDIS_URL": server.url, "E2E_STACK": stack,
                     "E2E_QUEUE": queues[stack], "E2E_STATS_DIR": tmp},
                log_path=stats_dir / f"{stack}-{i}.log",
            ).start()
            for stack in STACKS
            for i in range(2)
        ]  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while len(list(stats_dir.glob("*.json"))) < len(workers):
                if time.monotonic() > deadline or not all(w.alive for w in workers):
                    logs = "".join(p.read_text() for p in stats_dir.glob("*.log"))
                    raise RuntimeError(f"workers did not start:\n{logs}")
                time.sleep(0.05)
            groups: dict[str, list[int]] = {stack: [] for stack in STACKS}
            for stack, worker in zip([st for st in STACKS for _ in range(2)], workers,
                                     strict=True):  # fmt: skip
                if worker.proc is not None:
                    groups[stack].append(worker.proc.pid)  # each worker leads its group
            return asyncio.run(produce(server.url, stats_dir, queues, groups, n, rounds))
        except BaseException:
            for log in sorted(stats_dir.glob("*.log")):  # what the workers said, for the error
                print(f"--- {log.name} ---\n{log.read_text()[-4000:]}", file=sys.stderr)
            raise
        finally:
            for worker in workers:
                worker.kill()  # idle list-queue workers ignore SIGTERM
            for worker in workers:
                worker.stop(grace=0)


def print_table(rows: list[Row], n: int, rounds: int) -> None:
    header = ("row", "tasks/s", "ratio", "vs", "cpu us/task", "cpu ratio", "cmds/task",
              "EVALSHA", "rt/task", "cache rt")  # fmt: skip
    lines = [header] + [
        (r.name, f"{r.tasks_per_s:,.0f}", f"{r.ratio:.2f}x", r.baseline,
         f"{r.worker_cpu_us_per_task:.0f}", f"{r.cpu_ratio:.3f}x",
         f"{r.commands_per_task:.2f}", f"{r.evalsha_per_task:.2f}",
         f"{r.round_trips_per_task:.2f}", f"{r.cache_round_trips_per_task:.2f}")
        for r in rows
    ]  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
    latencies = [f"{r.name}: {r.latency_ms:.2f} ms" for r in rows if r.latency_ms is not None]
    if latencies:
        print("\none kiq() + wait_result() alone (median): " + "; ".join(latencies))
    print(
        f"\n{n} tasks per round, {rounds} rounds, 2 workers per stack; tasks/s = median, "
        "ratio = median of per-round ratios; cmds/task from INFO commandstats "
        "(script-internal commands included, result polls excluded); rt/task = client-side "
        "round trips (workers + the producer's send); cpu = the workers' CPU time per task"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few tasks, 2 rounds")
    parser.add_argument("--tasks", type=int, help="tasks per round")
    parser.add_argument("--rounds", type=int, help="rounds")
    parser.add_argument(
        "--no-coalesce", action="store_true", help="turn the Redis connections' coalescing off"
    )
    parser.add_argument(
        "--row",
        action="append",
        default=[],
        metavar="NAME",
        help="run only this row (repeatable; its baseline runs too)",
    )
    args = parser.parse_args()
    if args.row:
        unknown = set(args.row) - {spec.name for spec in ROWS}
        if unknown:
            parser.error(f"unknown rows {sorted(unknown)}; rows: {[s.name for s in ROWS]}")
        wanted = set(args.row)
        while True:  # and their baselines, and theirs
            more = {spec.baseline for spec in ROWS if spec.name in wanted} - wanted
            if not more:
                break
            wanted |= more
        ROWS[:] = [spec for spec in ROWS if spec.name in wanted]
    if args.no_coalesce:
        os.environ["E2E_COALESCE"] = "0"  # this process and the workers it starts
    n, rounds = (100, 2) if args.quick else (2000, 7)
    n, rounds = args.tasks or n, args.rounds or rounds
    rows = measure(n, rounds)
    if args.json:
        report = {
            "tasks_per_round": n,
            "rounds": rounds,
            "coalesce": not args.no_coalesce,
            "rows": [asdict(r) for r in rows],
        }
        print(json.dumps(report, indent=2))
    else:
        print_table(rows, n, rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
