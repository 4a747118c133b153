"""CacheMiddleware through a real taskiq InMemoryBroker: execution counts, labels, errors."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Annotated

import pydantic
import pytest
from taskiq import Context, InMemoryBroker, TaskiqDepends
from taskiq.middlewares import SimpleRetryMiddleware

from taskiq_flow.cache import (
    CacheConnectionError,
    CacheError,
    CacheLockTimeout,
    CacheValueError,
    InMemoryCacheAdapter,
)
from taskiq_flow.middlewares import CacheMiddleware, StorageMiddleware
from taskiq_flow.storage import InMemoryStorageAdapter


async def test_same_args_twice_runs_once(stack) -> None:
    @stack.broker.task
    async def double(x: int) -> int:
        stack.runs["double"] += 1
        return x * 2

    first = await (await double.kiq(21)).wait_result(timeout=5)
    second = await (await double.kiq(21)).wait_result(timeout=5)
    assert first.return_value == second.return_value == 42
    assert stack.runs["double"] == 1
    assert second.labels.get("cache_hit") == "true"
    assert "cache_hit" not in first.labels


async def test_different_args_run_twice(stack) -> None:
    @stack.broker.task
    async def double(x: int) -> int:
        stack.runs["double"] += 1
        return x * 2

    assert (await (await double.kiq(1)).wait_result(timeout=5)).return_value == 2
    assert (await (await double.kiq(2)).wait_result(timeout=5)).return_value == 4
    assert stack.runs["double"] == 2


async def test_kwarg_order_and_positional_form_are_one_call(stack) -> None:
    @stack.broker.task
    async def sub(a: int, b: int, c: int = 10) -> int:
        stack.runs["sub"] += 1
        return a - b + c

    results = [
        await (await sub.kiq(a=5, b=2)).wait_result(timeout=5),
        await (await sub.kiq(b=2, a=5)).wait_result(timeout=5),
        await (await sub.kiq(5, 2)).wait_result(timeout=5),
        await (await sub.kiq(5, b=2, c=10)).wait_result(timeout=5),
    ]
    assert [r.return_value for r in results] == [13, 13, 13, 13]
    assert stack.runs["sub"] == 1


async def test_cache_false_label_bypasses(stack) -> None:
    @stack.broker.task
    async def task(x: int) -> int:
        stack.runs["t"] += 1
        return x

    for _ in range(2):
        await (await task.kicker().with_labels(cache="false").kiq(1)).wait_result(timeout=5)
    assert stack.runs["t"] == 2


async def test_cache_ttl_zero_does_not_cache(stack) -> None:
    @stack.broker.task
    async def task(x: int) -> int:
        stack.runs["t"] += 1
        return x

    for _ in range(2):
        await (await task.kicker().with_labels(cache_ttl="0").kiq(1)).wait_result(timeout=5)
    assert stack.runs["t"] == 2


async def test_guide_labels_kwarg_form(stack) -> None:
    @stack.broker.task
    async def task(x: int) -> int:
        stack.runs["t"] += 1
        return x + 1

    for _ in range(2):
        res = await (await task.kiq(1, labels={"cache_ttl": "0"})).wait_result(timeout=5)
        assert res.return_value == 2
        assert not res.is_err
    assert stack.runs["t"] == 2


async def test_declaration_labels(stack) -> None:
    @stack.broker.task(cache_ttl=0)
    async def never(x: int) -> int:
        stack.runs["never"] += 1
        return x

    @stack.broker.task(cache="false")
    async def bypass(x: int) -> int:
        stack.runs["bypass"] += 1
        return x

    for _ in range(2):
        await (await never.kiq(1)).wait_result(timeout=5)
        await (await bypass.kiq(1)).wait_result(timeout=5)
    assert stack.runs == {"never": 2, "bypass": 2}


async def test_per_call_labels_override_declaration(stack) -> None:
    @stack.broker.task(cache_ttl=0)
    async def task(x: int) -> int:
        stack.runs["t"] += 1
        return x

    for _ in range(2):
        await (await task.kiq(1, labels={"cache_ttl": "60"})).wait_result(timeout=5)
    assert stack.runs["t"] == 1


async def test_task_with_its_own_labels_parameter_keeps_it(stack) -> None:
    @stack.broker.task
    async def tag(labels: dict[str, str]) -> list[str]:
        stack.runs["tag"] += 1
        return sorted(labels)

    res = await (await tag.kiq(labels={"cache_ttl": "0", "b": "x"})).wait_result(timeout=5)
    assert res.return_value == ["b", "cache_ttl"]
    await (await tag.kiq(labels={"cache_ttl": "0", "b": "x"})).wait_result(timeout=5)
    assert stack.runs["tag"] == 1  # cached: the dict was an argument, not labels


async def test_ttl_expiry_runs_again(stack) -> None:
    @stack.broker.task(cache_ttl=1)
    async def task(x: int) -> int:
        stack.runs["t"] += 1
        return x

    await (await task.kiq(1)).wait_result(timeout=5)
    await (await task.kiq(1)).wait_result(timeout=5)
    assert stack.runs["t"] == 1
    await asyncio.sleep(1.1)
    await (await task.kiq(1)).wait_result(timeout=5)
    assert stack.runs["t"] == 2


async def test_raising_task_is_not_cached_by_default(stack) -> None:
    @stack.broker.task
    async def boom(x: int) -> int:
        stack.runs["boom"] += 1
        raise KeyError(x)

    for _ in range(2):
        res = await (await boom.kiq(1)).wait_result(timeout=5)
        assert res.is_err
        assert isinstance(res.error, KeyError)
    assert stack.runs["boom"] == 2


class DomainError(Exception):
    pass


async def test_cached_error_reraises_same_type(stack) -> None:
    @stack.broker.task(cache_errors="true")
    async def boom(x: int) -> int:
        stack.runs["boom"] += 1
        raise DomainError(f"bad {x}")

    first = await (await boom.kiq(1)).wait_result(timeout=5)
    second = await (await boom.kiq(1)).wait_result(timeout=5)
    assert stack.runs["boom"] == 1
    assert isinstance(first.error, DomainError)
    assert isinstance(second.error, DomainError)
    assert str(second.error) == "bad 1"
    assert second.labels.get("cache_hit") == "true"
    with pytest.raises(DomainError):
        second.raise_for_error()


async def test_malformed_labels_warn_and_use_default(stack, caplog) -> None:
    @stack.broker.task
    async def task(x: int) -> int:
        stack.runs["t"] += 1
        return x

    with caplog.at_level(logging.WARNING, logger="taskiq_flow.middlewares"):
        for bad in ("abc", "-5", "1.5"):
            res = await (await task.kicker().with_labels(cache_ttl=bad).kiq(1)).wait_result(
                timeout=5,
            )
            assert res.return_value == 1
            assert not res.is_err
        res = await (await task.kicker().with_labels(cache_errors="maybe").kiq(1)).wait_result(
            timeout=5,
        )
        assert not res.is_err
    assert stack.runs["t"] == 1  # the default TTL applied: cached after the first run
    assert "cache_ttl='abc'" in caplog.text
    assert "cache_ttl='-5'" in caplog.text
    assert "cache_errors='maybe'" in caplog.text


async def test_unencodable_arguments_run_uncached_with_one_warning(stack, caplog) -> None:
    @stack.broker.task
    async def big(x: int) -> int:
        stack.runs["big"] += 1
        return 1

    huge = 2**70  # JSON carries it; msgpack cannot
    with caplog.at_level(logging.WARNING, logger="taskiq_flow.middlewares"):
        for _ in range(3):
            res = await (await big.kiq(huge)).wait_result(timeout=5)
            assert res.return_value == 1
    assert stack.runs["big"] == 3
    warnings = [r for r in caplog.records if "arguments cannot be encoded" in r.getMessage()]
    assert len(warnings) == 1


class Opaque:
    def __init__(self, n: int) -> None:
        self.n = n


async def test_unencodable_return_value(stack) -> None:
    @stack.broker.task
    async def make(n: int):  # no annotation: taskiq would try to parse Opaque with pydantic
        stack.runs["make"] += 1
        return Opaque(n)

    sent = await make.kiq(3)
    first = await sent.wait_result(timeout=5)
    second = await (await make.kiq(3)).wait_result(timeout=5)
    assert not first.is_err
    assert not second.is_err
    assert isinstance(first.return_value, Opaque)
    assert first.return_value.n == 3
    assert stack.runs["make"] == 2  # nothing cached
    record = await stack.storage.storage.get(f"task:{sent.task_id}")
    assert record["is_err"] is False
    assert record["return_value"] is None
    assert record["error"]["type"] == "taskiq_flow.ReturnValueNotSerializable"


async def test_sync_task_runs_in_executor_and_is_cached(stack) -> None:
    loop_thread = threading.get_ident()
    threads: list[int] = []

    @stack.broker.task
    def square(x: int) -> int:
        threads.append(threading.get_ident())
        stack.runs["square"] += 1
        return x * x

    results = [await (await square.kiq(7)).wait_result(timeout=5) for _ in range(3)]
    assert [r.return_value for r in results] == [49, 49, 49]
    assert stack.runs["square"] == 1
    assert threads
    assert all(t != loop_thread for t in threads)


async def test_sync_task_error_and_cached_error(stack) -> None:
    @stack.broker.task(cache_errors="true")
    def fail(x: int) -> int:
        stack.runs["fail"] += 1
        raise ValueError(x)

    for _ in range(2):
        res = await (await fail.kiq(2)).wait_result(timeout=5)
        assert isinstance(res.error, ValueError)
    assert stack.runs["fail"] == 1


def multiplier() -> int:
    return 3


async def test_taskiq_depends_still_injected(stack) -> None:
    @stack.broker.task
    async def scaled(
        x: int, m: Annotated[int, TaskiqDepends(multiplier)], ctx: Context = TaskiqDepends()
    ) -> int:
        stack.runs["scaled"] += 1
        assert ctx.message.task_name.endswith("scaled")
        return x * m

    for _ in range(2):
        assert (await (await scaled.kiq(5)).wait_result(timeout=5)).return_value == 15
    assert stack.runs["scaled"] == 1


class Point(pydantic.BaseModel):
    x: int
    y: int


async def test_result_typed_by_return_annotation_on_a_hit(stack) -> None:
    @stack.broker.task
    async def point(x: int) -> Point:
        stack.runs["p"] += 1
        return Point(x=x, y=-x)

    first = await (await point.kiq(4)).wait_result(timeout=5)
    second = await (await point.kiq(4)).wait_result(timeout=5)
    assert stack.runs["p"] == 1
    assert isinstance(second.return_value, Point)
    assert second.return_value == first.return_value == Point(x=4, y=-4)


async def test_timeout_label_still_applies(stack) -> None:
    @stack.broker.task(timeout=0.2)
    async def slow(x: int) -> int:
        stack.runs["slow"] += 1
        await asyncio.sleep(5)
        return x

    res = await (await slow.kiq(1)).wait_result(timeout=5)
    assert res.is_err
    assert isinstance(res.error, TimeoutError)
    res = await (await slow.kiq(1)).wait_result(timeout=5)
    assert stack.runs["slow"] == 2  # a timeout is not cached


async def test_direct_call_bypasses_cache(stack) -> None:
    @stack.broker.task
    async def task(x: int) -> int:
        stack.runs["t"] += 1
        return x

    await (await task.kiq(1)).wait_result(timeout=5)
    assert await task(1) == 1
    assert await task(1) == 1
    assert stack.runs["t"] == 3


async def test_concurrent_identical_tasks_execute_once() -> None:
    broker = InMemoryBroker()  # callbacks run concurrently in background tasks
    broker.add_middlewares(CacheMiddleware(InMemoryCacheAdapter()), StorageMiddleware())
    runs = 0

    @broker.task
    async def slow(x: int) -> int:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.2)
        return x + 1

    await broker.startup()
    try:
        tasks = await asyncio.gather(*(slow.kiq(1) for _ in range(50)))
        results = await asyncio.gather(*(t.wait_result(timeout=10) for t in tasks))
    finally:
        await broker.shutdown()
    assert runs == 1
    assert {r.return_value for r in results} == {2}
    assert sum(r.labels.get("cache_hit") == "true" for r in results) == 49


@pytest.mark.parametrize("order", ["retry_first", "retry_last"])
async def test_retry_middleware_still_retries(order: str) -> None:
    broker = InMemoryBroker(await_inplace=True)
    retry = SimpleRetryMiddleware(default_retry_count=3)
    cache_mw = CacheMiddleware(InMemoryCacheAdapter())
    storage_mw = StorageMiddleware(InMemoryStorageAdapter())
    if order == "retry_first":
        broker.add_middlewares(retry, cache_mw, storage_mw)
    else:
        broker.add_middlewares(cache_mw, storage_mw, retry)
    attempts = 0

    @broker.task(retry_on_error=True)
    async def flaky(x: int) -> int:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise RuntimeError("first attempt fails")
        return x

    await broker.startup()
    try:
        task = await flaky.kiq(9)
        await broker.wait_all()
        res = await task.wait_result(timeout=5)
        assert res.return_value == 9
        assert attempts == 2
        again = await (await flaky.kiq(9)).wait_result(timeout=5)
        assert again.return_value == 9
        assert attempts == 2  # the successful retry was cached
        keys = await storage_mw.storage.keys("task:*")
        assert keys == [f"task:{task.task_id}"]  # the retried failure left no record
    finally:
        await broker.shutdown()


async def test_disabled_middleware_is_a_no_op() -> None:
    broker = InMemoryBroker(await_inplace=True)
    broker.add_middlewares(CacheMiddleware(enabled=False))
    runs = 0

    @broker.task
    async def task(x: int) -> int:
        nonlocal runs
        runs += 1
        return x

    await broker.startup()
    for _ in range(2):
        await (await task.kiq(1)).wait_result(timeout=5)
    await broker.shutdown()
    assert runs == 2


def test_constructor_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError, match="BaseCacheAdapter"):
        CacheMiddleware(cache="redis://localhost")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="default_ttl"):
        CacheMiddleware(default_ttl=-1)


class DependencyFailed(Exception):
    pass


_dependency_calls = 0


def flaky_dependency() -> int:
    global _dependency_calls  # noqa: PLW0603 - a per-test counter, reset by the test
    _dependency_calls += 1
    if _dependency_calls == 1:
        raise DependencyFailed
    return 0


async def test_unused_decision_never_reaches_another_call() -> None:
    # await_inplace runs pre_execute in the caller's context; when the function is never
    # called (its dependency raised), the decision must not be used by a later direct call.
    global _dependency_calls  # noqa: PLW0603
    _dependency_calls = 0
    broker = InMemoryBroker(await_inplace=True)
    broker.add_middlewares(CacheMiddleware(InMemoryCacheAdapter()))

    @broker.task
    async def square(x: int, d: Annotated[int, TaskiqDepends(flaky_dependency)]) -> int:
        return x * x

    await broker.startup()
    try:
        res = await (await square.kiq(3)).wait_result(timeout=5)
        assert isinstance(res.error, DependencyFailed)
        assert await square(5, 0) == 25  # a direct call: must not fill the key of square(3)
        res = await (await square.kiq(3)).wait_result(timeout=5)
        assert res.return_value == 9
        assert "cache_hit" not in res.labels
    finally:
        await broker.shutdown()


async def test_waiters_outlasting_max_wait_keep_waiting_instead_of_running() -> None:
    cache = InMemoryCacheAdapter(max_wait=0.3)  # far shorter than the task
    broker = InMemoryBroker()
    middleware = CacheMiddleware(cache)
    broker.add_middlewares(middleware)
    runs = 0

    @broker.task
    async def slow(x: int) -> int:
        nonlocal runs
        runs += 1
        await asyncio.sleep(1.0)
        return x

    await broker.startup()
    try:
        sent = await asyncio.gather(*(slow.kiq(1) for _ in range(5)))
        results = await asyncio.gather(*(t.wait_result(timeout=10) for t in sent))
    finally:
        await broker.shutdown()
    assert [r.return_value for r in results] == [1] * 5
    assert runs == 1
    assert middleware.get_stats()["middleware"]["lock_timeouts"] >= 4


@pytest.mark.parametrize(
    "own_error",
    [
        CacheLockTimeout("the task's own key", 1.0),
        CacheValueError("the task's own bad TTL"),
        CacheConnectionError("get", "the task's own cache is down"),
    ],
    ids=lambda exc: type(exc).__name__,
)
async def test_a_cache_error_raised_by_the_task_itself_is_its_error(
    stack, caplog, own_error: CacheError
) -> None:
    # A task that uses a cache itself may fail with a CacheError of its own. That is the
    # task's error, not this middleware's cache failing: the caller gets it after one
    # run, never a re-run (as a lock wait, or "uncached"), nothing counted as our failure.
    @stack.broker.task
    async def uses_a_cache(x: int) -> int:
        stack.runs["t"] += 1
        raise own_error

    with caplog.at_level(logging.WARNING, logger="taskiq_flow.middlewares"):
        res = await (await uses_a_cache.kiq(1)).wait_result(timeout=5)
    assert res.is_err
    assert type(res.error) is type(own_error)
    assert str(res.error) == str(own_error)
    assert stack.runs["t"] == 1
    counters = stack.cache.get_stats()["middleware"]
    assert counters["executions"] == 1
    assert counters["lock_timeouts"] == counters["cache_failures"] == 0
    assert counters["uncacheable_keys"] == 0
    assert [r for r in caplog.records if r.name == "taskiq_flow.middlewares"] == []


async def test_a_cache_error_raised_by_the_task_is_cached_with_cache_errors(stack) -> None:
    @stack.broker.task(cache_errors="true")
    async def uses_a_cache(x: int) -> int:
        stack.runs["t"] += 1
        raise CacheLockTimeout("the task's own key", 1.0)

    first = await (await uses_a_cache.kiq(1)).wait_result(timeout=5)
    assert type(first.error) is CacheLockTimeout
    assert first.error.key == "the task's own key"
    second = await (await uses_a_cache.kiq(1)).wait_result(timeout=5)
    assert second.labels.get("cache_hit") == "true"
    assert "CacheLockTimeout" in str(second.error)
    assert stack.runs["t"] == 1
    assert stack.cache.get_stats()["middleware"]["lock_timeouts"] == 0


async def test_absurd_ttl_label_falls_back_to_default(stack, caplog) -> None:
    @stack.broker.task
    async def task(x: int) -> int:
        stack.runs["t"] += 1
        return x

    with caplog.at_level(logging.WARNING, logger="taskiq_flow.middlewares"):
        for _ in range(2):
            sent = await task.kiq(1, labels={"cache_ttl": str(10**20)})
            res = await sent.wait_result(timeout=5)
            assert res.return_value == 1
    assert stack.runs["t"] == 1
    assert "cache_ttl" in caplog.text


def test_key_forms_never_collide() -> None:
    from taskiq_flow.middlewares._codec import cache_key_digest

    def pair(a: object, b: object) -> None: ...

    # A two-parameter call binds to [a, b]; a call that cannot bind keeps its raw
    # arguments under "": the two can hold the same values and still differ.
    bound = cache_key_digest(pair, [[1, 2, 3], {}], {})
    unbindable = cache_key_digest(pair, [1, 2, 3], {})
    assert bound != unbindable
    assert cache_key_digest(pair, [1, 2], {}) == cache_key_digest(pair, [], {"b": 2, "a": 1})


async def _twice_uncached_with_one_warning(
    cache: InMemoryCacheAdapter, caplog: pytest.LogCaptureFixture, **labels: str
) -> dict[str, int]:
    """Send ``inc(1)`` twice with ``labels``; check both ran, uncached, with one warning.

    Returns the middleware's counters. The first call passes the labels in the guide's
    ``kiq(..., labels={...})`` form, the second with ``kicker().with_labels(...)``.
    """
    broker = InMemoryBroker(await_inplace=True)
    middleware = CacheMiddleware(cache)
    broker.add_middlewares(middleware)
    runs = 0

    @broker.task
    async def inc(x: int) -> int:
        nonlocal runs
        runs += 1
        return x + 1

    await broker.startup()
    try:
        with caplog.at_level(logging.WARNING, logger="taskiq_flow.middlewares"):
            for sent in (
                await inc.kiq(1, labels=labels),
                await inc.kicker().with_labels(**labels).kiq(1),
            ):
                res = await sent.wait_result(timeout=5)
                assert not res.is_err
                assert res.return_value == 2
                assert "cache_hit" not in res.labels
    finally:
        await broker.shutdown()
    assert runs == 2
    ours = [r for r in caplog.records if r.name == "taskiq_flow.middlewares"]
    assert len(ours) == 1, [r.getMessage() for r in ours]
    assert inc.task_name in ours[0].getMessage()
    assert ours[0].exc_info is None  # a warning, not a traceback
    return middleware.get_stats()["middleware"]


async def test_unencodable_cache_key_label_runs_uncached_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A lone surrogate cannot be encoded as UTF-8, so no backend can hold the key: the
    # task must still succeed, uncached, with one warning (not one, or a traceback, per call).
    counters = await _twice_uncached_with_one_warning(
        InMemoryCacheAdapter(), caplog, cache_key="\udc80"
    )
    assert counters["uncacheable_keys"] == 2
    assert counters["cache_failures"] == 0


class _RefusingCache(InMemoryCacheAdapter):
    """Refuses every key in get_or_create, as an adapter does for a key it cannot hold."""

    async def get_or_create(self, key, creator, ttl_seconds=None, **kwargs):  # type: ignore[no-untyped-def]
        raise CacheValueError(f"cannot hold key {key!r}")


async def test_key_refused_by_the_cache_runs_uncached_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Whatever else an adapter refuses (a CacheValueError before the creator runs) is a
    # property of the call, not an outage: the same one warning, no traceback per call.
    counters = await _twice_uncached_with_one_warning(_RefusingCache(), caplog, cache_key="fine")
    assert counters["uncacheable_keys"] == 2
    assert counters["cache_failures"] == 0
