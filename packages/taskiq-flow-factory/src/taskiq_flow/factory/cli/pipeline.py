"""``taskiq-flow pipeline``: list runs, show one (its DAG and node states), cancel, resume.

``list``, ``show`` and ``cancel`` need only the store (the configured storage, the one
``PipelineMiddleware`` keeps run state in). ``resume`` sends messages, so it needs the
application's broker: ``--broker MODULE:ATTR`` names it as ``taskiq worker`` does (a
broker, or a function returning one); its ``PipelineMiddleware`` does the work.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Final, TextIO

from taskiq_flow.config import TaskiqFlowConfig
from taskiq_flow.factory.builder import StorageAdapterFactory
from taskiq_flow.factory.cli._common import (
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    Subcommands,
    add_command,
    positive_int,
    print_json,
    require_existing_store,
    wants_json,
    write_table,
)

if TYPE_CHECKING:
    from taskiq import AsyncBroker

    from taskiq_flow.middlewares.pipeline import PipelineMiddleware, RunSpec
    from taskiq_flow.storage import BaseStorageAdapter

__all__ = ["DEFAULT_LIMIT", "add_parser", "load_broker", "run"]

DEFAULT_LIMIT: Final = 20
_EPILOG: Final = """\
examples:
  taskiq-flow pipeline list                      recent runs, newest first
  taskiq-flow pipeline show audio_v1             the DAG with each node's state
  taskiq-flow pipeline show audio_v1 --format mermaid
  taskiq-flow pipeline cancel audio_v1           send nothing more for this run
  taskiq-flow pipeline resume audio_v1 --broker myapp.tasks:broker --wait 60

exit codes: 1 no such run; 2 the run's state does not allow it (cancel a finished
run, resume a done one) or a bad --broker; 5 resume --wait ended with the run failed,
cancelled or still running."""
EXIT_RUN_NOT_DONE: Final = 5


def add_parser(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    """Add the ``pipeline`` command and its actions to ``commands``, with ``common``."""
    pipeline = add_command(
        commands,
        common,
        "pipeline",
        summary="pipeline runs: list, show ID, cancel ID, resume ID",
        description="Inspect and control dataflow pipeline runs (PipelineMiddleware's "
        "run state in the configured store).",
        epilog=_EPILOG,
    )
    actions = pipeline.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = add_command(
        actions, common, "list", summary="recent runs, newest first", description="List runs."
    )
    listing.add_argument(
        "--limit",
        type=positive_int,
        default=DEFAULT_LIMIT,
        help=f"show at most N runs, the newest (default {DEFAULT_LIMIT})",
    )
    show = add_command(
        actions,
        common,
        "show",
        summary="one run: its DAG with each node's state and times",
        description="Draw run PIPELINE_ID level by level with each node's state "
        "(pending, claimed, sent, running, done, failed, cancelled; '!' = stalled).",
    )
    show.add_argument("pipeline_id", metavar="PIPELINE_ID")
    show.add_argument(
        "--format",
        choices=("text", "mermaid", "dot"),
        default="text",
        help="text for a terminal (default), or a Mermaid / Graphviz graph coloured by state",
    )
    cancel = add_command(
        actions,
        common,
        "cancel",
        summary="cancel a running run",
        description="Cancel run PIPELINE_ID: no further step is sent.",
    )
    cancel.add_argument("pipeline_id", metavar="PIPELINE_ID")
    resume = add_command(
        actions,
        common,
        "resume",
        summary="re-drive a failed, cancelled or stuck run",
        description="Resume run PIPELINE_ID: finished steps keep their outputs; the failed "
        "step, steps whose worker died and everything downstream run.",
    )
    resume.add_argument("pipeline_id", metavar="PIPELINE_ID")
    resume.add_argument(
        "--broker",
        required=True,
        metavar="MODULE:ATTR",
        help="your broker (or a function returning it), as for `taskiq worker`",
    )
    resume.add_argument(
        "--wait", type=float, metavar="SECONDS", help="then wait this long for the run to end"
    )


def load_broker(target: str) -> AsyncBroker:
    """Import ``MODULE:ATTR`` (the current directory is importable) and return the broker.

    Raises:
        CommandError: it cannot be imported or is no broker (exit 2).
    """
    from taskiq import AsyncBroker  # noqa: PLC0415 - taskiq only for this action

    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise CommandError(f"--broker takes MODULE:ATTR, got {target!r}", EXIT_USAGE)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        value: Any = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise CommandError(f"cannot import {target}: {exc}", EXIT_USAGE) from exc
    if not isinstance(value, AsyncBroker) and callable(value):
        value = value()
    if not isinstance(value, AsyncBroker):
        raise CommandError(f"{target} is not a taskiq broker", EXIT_USAGE)
    return value


async def run(args: argparse.Namespace, config: TaskiqFlowConfig, out: TextIO) -> int:
    """Carry out ``pipeline list|show|cancel|resume``."""
    if args.action == "resume":
        return await _resume(args, out)
    require_existing_store(config)
    storage = StorageAdapterFactory.create_storage_adapter(config)
    try:
        if args.action == "list":
            return await _list(storage, args, out)
        if args.action == "show":
            return await _show(storage, args, out)
        return await _cancel(storage, args, out)
    finally:
        await storage.close()


def _moment(stamp: float | None) -> str:
    return "-" if stamp is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


async def _list(storage: BaseStorageAdapter, args: argparse.Namespace, out: TextIO) -> int:
    from taskiq_flow.middlewares.pipeline import RunSpec, read_status  # noqa: PLC0415

    keys = [key async for key in storage.iter_keys("pipeline:*:spec")]
    specs: list[RunSpec] = []
    for start in range(0, len(keys), 500):
        found = await storage.get_many(keys[start : start + 500], type=RunSpec)
        specs += found.values()
    specs.sort(key=lambda spec: spec.created_at, reverse=True)
    statuses = [await read_status(storage, spec.pipeline_id) for spec in specs[: args.limit]]
    runs = [status for status in statuses if status is not None]
    if wants_json(args):
        print_json(out, {"runs": [status.to_dict() for status in runs], "count": len(specs)})
        return EXIT_OK if runs else EXIT_NOT_FOUND
    if not runs:
        sys.stderr.write("taskiq-flow: no pipeline runs in the store\n")
        return EXIT_NOT_FOUND
    rows = [("pipeline_id", "state", "nodes done", "started", "seconds")]
    for status in runs:
        done = sum(1 for node in status.nodes if node.state == "done")
        elapsed = (status.finished_at or time.time()) - status.created_at
        state = status.state + (" (stalled)" if status.stalled else "")
        rows.append(
            (
                status.pipeline_id,
                state,
                f"{done}/{len(status.nodes)}",
                _moment(status.created_at),
                f"{elapsed:.3f}",
            ),
        )
    write_table(out, rows)
    return EXIT_OK


async def _status_and_spec(storage: BaseStorageAdapter, pipeline_id: str) -> tuple[Any, RunSpec]:
    from taskiq_flow.middlewares.pipeline import RunSpec, read_status  # noqa: PLC0415

    status = await read_status(storage, pipeline_id)
    spec = await storage.get(f"pipeline:{pipeline_id}:spec", type=RunSpec)
    if status is None or spec is None:
        raise CommandError(f"no pipeline run {pipeline_id!r} in the store", EXIT_NOT_FOUND)
    return status, spec


async def _show(storage: BaseStorageAdapter, args: argparse.Namespace, out: TextIO) -> int:
    from taskiq_flow.middlewares.pipeline import render_run, to_dot, to_mermaid  # noqa: PLC0415

    status, spec = await _status_and_spec(storage, args.pipeline_id)
    if wants_json(args):
        print_json(out, status.to_dict())
        return EXIT_OK
    states = {node.name: node.state for node in status.nodes}
    if args.format == "mermaid":
        out.write(to_mermaid(spec.nodes, states))
    elif args.format == "dot":
        out.write(to_dot(spec.nodes, states))
    else:
        out.write(render_run(status, spec.nodes))
    return EXIT_OK


async def _cancel(storage: BaseStorageAdapter, args: argparse.Namespace, out: TextIO) -> int:
    from taskiq_flow.middlewares.pipeline import PipelineMiddleware  # noqa: PLC0415

    middleware = PipelineMiddleware(storage)
    cancelled = await _control(middleware.cancel(args.pipeline_id))
    if wants_json(args):
        print_json(out, {"pipeline_id": args.pipeline_id, "cancelled": cancelled})
    else:
        word = "cancelled" if cancelled else "was already cancelled"
        out.write(f"pipeline {args.pipeline_id} {word}\n")
    return EXIT_OK


async def _control(operation: Any) -> Any:
    """Await a cancel/resume, mapping its refusals to exit codes."""
    from taskiq_flow.middlewares.pipeline import (  # noqa: PLC0415
        PipelineRunNotFoundError,
        PipelineRunStateError,
    )

    try:
        return await operation
    except PipelineRunNotFoundError as exc:
        raise CommandError(str(exc), EXIT_NOT_FOUND) from exc
    except PipelineRunStateError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from exc


def _pipeline_middleware(broker: AsyncBroker, target: str) -> PipelineMiddleware:
    from taskiq_flow.middlewares.pipeline import PipelineMiddleware  # noqa: PLC0415

    for middleware in broker.middlewares:
        if isinstance(middleware, PipelineMiddleware):
            return middleware
    raise CommandError(f"the broker {target} has no PipelineMiddleware", EXIT_USAGE)


async def _resume(args: argparse.Namespace, out: TextIO) -> int:
    from taskiq_flow.middlewares.pipeline import (  # noqa: PLC0415
        DataflowRun,
        PipelineCancelledError,
        PipelineTimeoutError,
    )

    broker = load_broker(args.broker)
    middleware = _pipeline_middleware(broker, args.broker)
    await broker.startup()
    try:
        spec = await _control(middleware.resume(args.pipeline_id))
        state = "resumed"
        if args.wait is not None:
            try:
                result = await DataflowRun(spec, middleware).wait_result(timeout=args.wait)
                state = "failed" if result.is_err else "done"
            except PipelineCancelledError:
                state = "cancelled"
            except PipelineTimeoutError as exc:
                state = exc.state
        wait_all = getattr(broker, "wait_all", None)  # an InMemoryBroker runs steps here
        if wait_all is not None:
            await wait_all()
    finally:
        await broker.shutdown()
    if wants_json(args):
        print_json(out, {"pipeline_id": args.pipeline_id, "state": state})
    else:
        out.write(f"pipeline {args.pipeline_id} {state}\n")
    return EXIT_OK if state in {"resumed", "done"} else EXIT_RUN_NOT_DONE
