"""``taskiq-flow demo``: run the demo workload and report what the cache saved."""

from __future__ import annotations

import argparse
import shlex
from typing import TYPE_CHECKING, TextIO

from taskiq_flow.config import TaskiqFlowConfig, mask_url
from taskiq_flow.factory.builder import StorageAdapterFactory
from taskiq_flow.factory.cli._common import (
    EXIT_BACKEND_ERROR,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CommandError,
    Subcommands,
    add_command,
    describe_cache,
    describe_storage,
    positive_int,
    print_json,
    progress_line,
    sqlite_store_file,
    wants_json,
)

if TYPE_CHECKING:
    from taskiq_flow.factory.demo import DemoReport

__all__ = ["add_parser", "run"]


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0:
        msg = f"expected a number of milliseconds >= 0, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def add_parser(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    """Add the ``demo`` command to ``commands``, with the ``common`` options."""
    demo = add_command(
        commands,
        common,
        "demo",
        summary="run repeated tasks through a broker with CacheMiddleware and StorageMiddleware",
        description="Send TASKS calls of one task over DISTINCT inputs through an "
        "InMemoryBroker with CacheMiddleware and StorageMiddleware (built by "
        "StorageAdapterFactory from the configuration), then print how many executions "
        "the cache saved, the hit rate, the records stored and the time taken. Needs no "
        "server: the cache is in memory and records go to the SQLite store.",
        epilog="example:\n  taskiq-flow demo --tasks 1000 --distinct 50\n"
        "  taskiq-flow storage keys 'task:*'",
    )
    demo.add_argument("--tasks", type=positive_int, default=200, help="task calls (200)")
    demo.add_argument(
        "--distinct", type=positive_int, default=20, help="different inputs among them (20)"
    )
    demo.add_argument(
        "--concurrency",
        type=positive_int,
        default=None,
        help="calls in flight at once (default: DISTINCT)",
    )
    demo.add_argument(
        "--work-ms",
        type=_non_negative_float,
        default=50.0,
        help="duration of one real execution of the task, in ms (50)",
    )


async def run(args: argparse.Namespace, config: TaskiqFlowConfig, out: TextIO) -> int:
    """Run the demo; exit code 4 if any task returned a wrong result.

    Raises:
        CommandError: ``--distinct`` exceeds ``--tasks``.
    """
    if args.distinct > args.tasks:
        msg = f"--distinct ({args.distinct}) cannot exceed --tasks ({args.tasks})"
        raise CommandError(msg, EXIT_USAGE)
    path = sqlite_store_file(config)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    await _check_reachable(config)  # before taskiq is even imported: a wrong URL fails fast
    from taskiq_flow.factory.demo import run_demo  # noqa: PLC0415  (pulls in taskiq)

    as_json = wants_json(args)
    if not as_json:
        out.write(
            f"taskiq-flow demo: {args.tasks} tasks over {args.distinct} distinct inputs, "
            f"{args.work_ms:g} ms of work each, through InMemoryBroker\n"
            f"  cache   {describe_cache(config)}\n"
            f"  storage {describe_storage(config)}\n"
        )
        out.flush()
    report = await run_demo(
        config,
        tasks=args.tasks,
        distinct=args.distinct,
        concurrency=args.concurrency,
        work_seconds=args.work_ms / 1000,
        progress=progress_line(args, "running", args.tasks),
    )
    if as_json:
        data = report.to_dict()
        data["storage"] = describe_storage(config)
        print_json(out, data)
    else:
        _write_report(args, report, out)
    return EXIT_OK if report.results_correct == report.tasks else EXIT_BACKEND_ERROR


async def _check_reachable(config: TaskiqFlowConfig) -> None:
    """Fail at once, saying which backend and why, if the store or the cache does not answer.

    Without it a wrong URL showed only after the workload, and after the records had
    waited for the store at shutdown.

    Raises:
        CommandError: a backend is unreachable (exit code 3).
    """
    from taskiq_flow.cache import CacheConnectionError  # noqa: PLC0415
    from taskiq_flow.storage import StorageConnectionError  # noqa: PLC0415

    storage = StorageAdapterFactory.create_storage_adapter(config)
    try:
        await storage.exists("taskiq-flow-cli:reachability-probe")
    except StorageConnectionError as exc:
        msg = (
            f"storage {describe_storage(config)} is unreachable: {exc}. Start it, or "
            "point TASKIQ_FLOW_STORAGE_REDIS_URL / --storage-redis-url at a running server"
        )
        raise CommandError(msg, EXIT_UNREACHABLE) from exc
    finally:
        await storage.close()
    cache = StorageAdapterFactory.create_cache_adapter(config)
    try:
        await cache.get("taskiq-flow-cli:reachability-probe")
    except CacheConnectionError as exc:
        msg = (
            f"cache {describe_cache(config)} is unreachable: {exc}. Start it, or point "
            "TASKIQ_FLOW_CACHE_REDIS_URL / --cache-redis-url at a running server"
        )
        raise CommandError(msg, EXIT_UNREACHABLE) from exc
    finally:
        await cache.close()


def _write_report(args: argparse.Namespace, report: DemoReport, out: TextIO) -> None:
    saved_share = report.saved_by_cache / report.tasks
    skipped = report.saved_by_cache * report.work_seconds
    lines = [
        ("executions run", f"{report.executions} of {report.tasks} tasks"),
        (
            "saved by the cache",
            f"{report.saved_by_cache} executions ({saved_share:.1%}), "
            f"{skipped:.1f} s of work skipped",
        ),
        (
            "cache hit rate",
            f"{report.hit_rate:.1%} ({report.lock_waits} of the hits waited for "
            "a running execution instead of starting their own)",
        ),
        (
            "records stored",
            f"{report.records_written} this run; {report.records_in_store} 'task:*' "
            "records in the store",
        ),
        ("results correct", f"{report.results_correct} of {report.tasks}"),
        (
            "pipeline run",
            f"{report.pipeline_id}: {report.pipeline_outputs.get('summary')!s} "
            f"({report.pipeline_steps_stored} step records)",
        ),
        ("time taken", f"{report.seconds:.2f} s"),
    ]
    for label, value in lines:
        out.write(f"{label:<20}{value}\n")
    if report.storage_backend != "inmemory":
        flags = _location_flags(args)
        out.write(f"\nnext: taskiq-flow storage keys 'task:*'{flags}\n")
        out.write(f"      taskiq-flow storage keys 'pipeline:{report.pipeline_id}:*'{flags}\n")


def _location_flags(args: argparse.Namespace) -> str:
    """The flags that pointed this command at its store, to repeat in a hint."""
    flags = ""
    for name, flag in (
        ("sqlite_path", "--sqlite-path"),
        ("storage_redis_url", "--storage-redis-url"),
    ):
        value = getattr(args, name, None)
        if value:
            shown = mask_url(value) if name == "storage_redis_url" else value
            flags += f" {flag} {shlex.quote(shown)}"
    return flags
