"""One error root: every bad argument raises a MiddlewareError that is also its old builtin."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from taskiq.exceptions import TaskiqError

import taskiq_flow.middlewares as middlewares
from taskiq_flow.middlewares import (
    CacheMiddleware,
    MiddlewareConfigError,
    MiddlewareConfigTypeError,
    MiddlewareError,
    PipelineMiddleware,
    StorageMiddleware,
)
from taskiq_flow.middlewares.pipeline import DataflowRun
from taskiq_flow.middlewares.pipeline.graph import RunSpec
from taskiq_flow.storage import InMemoryStorageAdapter


async def _wait_with_poll_interval(poll_interval: Any) -> None:
    spec = RunSpec(pipeline_id="p", created_at=0.0, ttl_seconds=None, given=(), nodes=())
    await DataflowRun(spec, InMemoryStorageAdapter()).wait_result(poll_interval=poll_interval)


# (what is called, the builtin it raised before, the leaf, words of the message)
CASES: list[tuple[str, Callable[[], Any], type[Exception], type[Exception], str]] = [
    ("cache-type", lambda: CacheMiddleware(cache="redis://x"), TypeError,
     MiddlewareConfigTypeError, "BaseCacheAdapter"),
    ("cache-ttl-negative", lambda: CacheMiddleware(default_ttl=-1), ValueError,
     MiddlewareConfigError, "default_ttl"),
    ("cache-ttl-float", lambda: CacheMiddleware(default_ttl=1.5), ValueError,
     MiddlewareConfigError, "default_ttl"),
    ("storage-type", lambda: StorageMiddleware(storage={}), TypeError,
     MiddlewareConfigTypeError, "BaseStorageAdapter"),
    ("storage-ttl", lambda: StorageMiddleware(ttl_seconds=0), ValueError,
     MiddlewareConfigError, "ttl_seconds"),
    ("storage-buffer-size", lambda: StorageMiddleware(buffer_size=0), ValueError,
     MiddlewareConfigError, "buffer_size"),
    ("storage-buffer-size-type", lambda: StorageMiddleware(buffer_size="10"), TypeError,
     MiddlewareConfigTypeError, "buffer_size"),
    ("pipeline-type", lambda: PipelineMiddleware(storage=object()), TypeError,
     MiddlewareConfigTypeError, "BaseStorageAdapter"),
    ("pipeline-ttl", lambda: PipelineMiddleware(ttl_seconds=True), ValueError,
     MiddlewareConfigError, "ttl_seconds"),
    ("pipeline-spec-cache-size-type", lambda: PipelineMiddleware(spec_cache_size=None),
     TypeError, MiddlewareConfigTypeError, "spec_cache_size"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("call", "builtin", "leaf", "words"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_bad_constructor_argument_raises_a_middleware_error(
    call: Callable[[], Any], builtin: type[Exception], leaf: type[Exception], words: str
) -> None:
    with pytest.raises(leaf, match=words) as raised:
        call()
    assert isinstance(raised.value, MiddlewareError)
    assert isinstance(raised.value, TaskiqError)
    assert isinstance(raised.value, builtin)  # `except ValueError/TypeError` still works


@pytest.mark.parametrize(
    ("poll_interval", "builtin", "leaf"),
    [
        (0, ValueError, MiddlewareConfigError),
        (float("nan"), ValueError, MiddlewareConfigError),
        ("0.1", TypeError, MiddlewareConfigTypeError),
    ],
)
async def test_bad_poll_interval_raises_a_middleware_error(
    poll_interval: Any, builtin: type[Exception], leaf: type[Exception]
) -> None:
    with pytest.raises(leaf, match="poll_interval must be") as raised:
        await _wait_with_poll_interval(poll_interval)
    assert isinstance(raised.value, builtin)


def test_a_config_type_error_is_a_config_error() -> None:
    # One `except MiddlewareConfigError` catches every bad argument, whatever its kind.
    assert issubclass(MiddlewareConfigTypeError, MiddlewareConfigError)
    assert issubclass(MiddlewareConfigTypeError, TypeError)
    error = MiddlewareConfigError(name="x", expected="> 0", got="-1")
    assert str(error) == "x must be > 0, got -1"
    assert error.name == "x"


def test_error_classes_are_exported() -> None:
    for name in ("MiddlewareError", "MiddlewareConfigError", "MiddlewareConfigTypeError"):
        assert name in middlewares.__all__
        assert issubclass(getattr(middlewares, name), MiddlewareError)
