"""``pipeline_task``: declare what a task produces; its parameters say what it consumes.

The decorator only attaches a small, immutable description to the function and returns
what it was given, so it composes with ``@broker.task`` in either order, with sync
tasks and with ``TaskiqDepends`` parameters (which are never pipeline inputs).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from taskiq import TaskiqDepends
from taskiq.decor import AsyncTaskiqDecoratedTask

from taskiq_flow.middlewares.pipeline.errors import PipelineDefinitionError

__all__ = ["NodeSignature", "PipelineTaskInfo", "pipeline_task", "task_info"]

F = TypeVar("F", bound=Callable[..., Any])

_ATTR = "__taskiq_flow_pipeline__"
# taskiq renames the wrapped function (see AsyncTaskiqDecoratedTask.__init__).
_TASKIQ_SUFFIX = "__taskiq_original"
# taskiq exports only the factory; its product's class marks injected parameters.
_DEPENDENCY: type[Any] = type(TaskiqDepends())


@dataclass(frozen=True)
class NodeSignature:
    """The inputs a node consumes: ``required`` must arrive, ``optional`` may."""

    required: tuple[str, ...]
    optional: tuple[str, ...]


@dataclass(frozen=True)
class PipelineTaskInfo:
    """What ``pipeline_task`` attached to a function."""

    name: str
    output: str
    signature: NodeSignature
    retries: int
    map_over: str | None = None


def _check_name(kind: str, value: object) -> str:
    # Names become keyword arguments and storage key parts, so identifiers only.
    if not isinstance(value, str) or not value.isidentifier():
        raise PipelineDefinitionError(
            reason=f"{kind} must be a Python identifier, got {value!r}",
        )
    return value


def _is_dependency(param: inspect.Parameter, hints: dict[str, Any]) -> bool:
    if isinstance(param.default, _DEPENDENCY):
        return True
    hint = hints.get(param.name)
    return typing.get_origin(hint) is typing.Annotated and any(
        isinstance(meta, _DEPENDENCY) for meta in getattr(hint, "__metadata__", ())
    )


def _feedable_params(
    func: Callable[..., Any],
    name: str,
) -> tuple[dict[str, inspect.Parameter], bool]:
    """The parameters a pipeline can feed by name, and whether ``**kwargs`` is taken."""
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError) as exc:
        raise PipelineDefinitionError(
            reason=f"node {name!r}: cannot read the signature of {func!r}: {exc}",
        ) from exc
    try:
        hints = typing.get_type_hints(func, include_extras=True)
    except Exception:  # unresolvable annotations only matter for Annotated dependencies
        hints = {}
    accepts_any = False
    params: dict[str, inspect.Parameter] = {}
    for param in signature.parameters.values():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            accepts_any = True
        elif param.kind is inspect.Parameter.VAR_POSITIONAL or _is_dependency(param, hints):
            continue
        elif param.kind is inspect.Parameter.POSITIONAL_ONLY:
            if param.default is inspect.Parameter.empty:
                raise PipelineDefinitionError(
                    reason=f"node {name!r}: positional-only parameter {param.name!r} "
                    "cannot receive a pipeline input (inputs are passed by name)",
                )
        else:
            params[param.name] = param
    return params, accepts_any


def _explicit_inputs(
    name: str,
    inputs: Sequence[str],
    params: dict[str, inspect.Parameter],
    accepts_any: bool,
) -> list[str]:
    if isinstance(inputs, str):
        raise PipelineDefinitionError(
            reason=f"node {name!r}: inputs must be a sequence of names, not a string",
        )
    chosen = [_check_name(f"node {name!r}: input", item) for item in inputs]
    if len(set(chosen)) != len(chosen):
        raise PipelineDefinitionError(reason=f"node {name!r}: inputs repeat a name")
    unknown = [item for item in chosen if item not in params and not accepts_any]
    if unknown:
        raise PipelineDefinitionError(
            reason=f"node {name!r}: unknown input(s) {unknown}: not parameters of "
            f"{name}() (parameters: {sorted(params)})",
        )
    unfed = [
        param.name
        for param in params.values()
        if param.name not in chosen and param.default is inspect.Parameter.empty
    ]
    if unfed:
        raise PipelineDefinitionError(
            reason=f"node {name!r}: parameter(s) {unfed} are not inputs and have no default",
        )
    return chosen


def _signature_of(
    func: Callable[..., Any],
    name: str,
    inputs: Sequence[str] | None,
) -> NodeSignature:
    params, accepts_any = _feedable_params(func, name)
    chosen = list(params) if inputs is None else _explicit_inputs(name, inputs, params, accepts_any)
    required = tuple(
        item
        for item in chosen
        if item not in params or params[item].default is inspect.Parameter.empty
    )
    optional = tuple(item for item in chosen if item not in required)
    return NodeSignature(required=required, optional=optional)


def _function_of(target: Any) -> Callable[..., Any]:
    if isinstance(target, AsyncTaskiqDecoratedTask):
        func: Callable[..., Any] = target.original_func
        return func
    if not callable(target):
        raise PipelineDefinitionError(
            reason=f"pipeline_task decorates a function or a taskiq task, got {target!r}",
        )
    return target  # type: ignore[no-any-return]


def pipeline_task(
    output: str,
    inputs: Sequence[str] | None = None,
    *,
    retries: int = 0,
    name: str | None = None,
    map_over: str | None = None,
) -> Callable[[F], F]:
    """Declare a pipeline node: the task produces ``output``; its parameters are inputs.

    Use it with ``@broker.task`` in either order. A parameter with a default is an
    optional input; ``TaskiqDepends`` parameters are injected by taskiq as usual.

    Args:
        output: name of the value this task's return value becomes.
        inputs: the parameter names to feed from the pipeline (default: every
            parameter that is not a dependency). A function taking ``**kwargs`` may
            list any names.
        retries: re-executions after a failure, carried as taskiq's
            ``retry_on_error``/``max_retries`` labels (the broker needs a retry
            middleware such as ``SimpleRetryMiddleware``).
        name: the node's name (default: the function's name).
        map_over: a required input holding a list: the task runs once per element
            (that parameter receives one element), in parallel, and ``output`` is the
            list of results in input order (at most ``MAX_MAP_ELEMENTS`` elements).

    Returns:
        A decorator returning its argument unchanged, with the description attached.

    Raises:
        PipelineDefinitionError: a name is not an identifier, an input is not a
            parameter, a parameter can never be fed, or ``map_over`` is not a
            required input.
    """
    _check_name("output", output)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise PipelineDefinitionError(
            reason=f"retries must be an integer >= 0, got {retries!r}",
        )
    if name is not None:
        _check_name("name", name)
    if map_over is not None:
        _check_name("map_over", map_over)

    def decorate(target: F) -> F:
        func = _function_of(target)
        node_name = name or func.__name__.removesuffix(_TASKIQ_SUFFIX)
        signature = _signature_of(func, node_name, inputs)
        if map_over is not None and map_over not in signature.required:
            raise PipelineDefinitionError(
                reason=f"node {node_name!r}: map_over={map_over!r} must name a required "
                f"input (required inputs: {list(signature.required)})",
            )
        info = PipelineTaskInfo(
            name=node_name,
            output=output,
            signature=signature,
            retries=retries,
            map_over=map_over,
        )
        setattr(func, _ATTR, info)
        return target

    return decorate


def task_info(task: Any) -> PipelineTaskInfo | None:
    """The ``pipeline_task`` description of a task or function, if it has one."""
    candidate: Any = task
    if isinstance(task, AsyncTaskiqDecoratedTask):
        candidate = task.original_func
    # Other middlewares may wrap the function in place (functools.wraps keeps __wrapped__).
    for _ in range(32):
        info = getattr(candidate, _ATTR, None)
        if isinstance(info, PipelineTaskInfo):
            return info
        candidate = getattr(candidate, "__wrapped__", None)
        if candidate is None:
            return None
    return None
