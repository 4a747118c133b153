"""Values msgspec refuses with a ``ValueError``: a str holding a lone surrogate.

UTF-8 cannot hold ``"\\udc80"``, so msgspec raises ``UnicodeEncodeError`` for it. A task
whose arguments, return value or error message hold one must behave as for any other
value the codec cannot encode: it runs, the caller gets its result, nothing crashes.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from taskiq import InMemoryBroker

from taskiq_flow.cache import InMemoryCacheAdapter
from taskiq_flow.middlewares import (
    CacheMiddleware,
    ResultNotSerializableError,
    StorageMiddleware,
    StorageResultBackend,
)
from taskiq_flow.middlewares._codec import (
    Unencodable,
    cache_key_digest,
    decode_payload,
    encode_error_payload,
    encode_value_payload,
    error_info,
    to_json_text,
)
from taskiq_flow.storage import BaseStorageAdapter, InMemoryStorageAdapter, SQLiteStorageAdapter

SURROGATE = "\udc80"


@pytest.fixture(autouse=True)
def _quiet_taskiq_receiver(caplog: pytest.LogCaptureFixture) -> None:
    # taskiq logs a task's exception with its traceback, the surrogate in it raw: a
    # captured log pytest-xdist cannot send back (its wire is UTF-8) and so a crashed
    # worker. The task's error is asserted on its result instead.
    caplog.set_level(logging.CRITICAL, logger="taskiq.receiver.receiver")


def _ours(caplog: pytest.LogCaptureFixture, level: int = logging.WARNING) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("taskiq_flow") and r.levelno >= level
    ]


# -- the codec ------------------------------------------------------------------------------


def test_the_codec_calls_a_surrogate_unencodable() -> None:
    def task(x: str) -> None: ...

    with pytest.raises(Unencodable):
        cache_key_digest(task, [SURROGATE], {})
    with pytest.raises(Unencodable):
        encode_value_payload(f"r{SURROGATE}")
    with pytest.raises(Unencodable):
        to_json_text([SURROGATE])


def test_an_error_message_with_a_surrogate_is_stored_escaped() -> None:
    exc = ValueError(f"bad {SURROGATE}")
    info = error_info(exc)
    assert info.message == "bad \\udc80"
    assert info.args == ["bad \\udc80"]
    stored = decode_payload(encode_error_payload(exc))
    assert stored.error is not None
    assert stored.error.message == "bad \\udc80"
    assert stored.error.type_name == "builtins.ValueError"


# -- CacheMiddleware --------------------------------------------------------------------------


async def test_a_surrogate_argument_runs_uncached_with_one_warning(
    stack: Any, caplog: pytest.LogCaptureFixture
) -> None:
    @stack.broker.task
    async def length(x: str) -> int:
        stack.runs["length"] += 1
        return len(x)

    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            sent = await length.kiq(f"a{SURROGATE}")
            res = await sent.wait_result(timeout=5)
            assert not res.is_err, res.error
            assert res.return_value == 2
    assert stack.runs["length"] == 3
    assert stack.cache.get_stats()["middleware"]["uncacheable_args"] >= 3
    messages = _ours(caplog)
    assert len(messages) == 1, messages
    assert "arguments cannot be encoded" in messages[0]
    # StorageMiddleware keeps the record, without the arguments it cannot hold.
    record = await stack.storage.storage.get(f"task:{sent.task_id}")
    assert record["return_value"] == "2"
    assert record["args"] is None
    assert record["args_omitted"].startswith("not encodable as JSON")


async def test_a_surrogate_in_the_return_value_is_returned_uncached(
    stack: Any, caplog: pytest.LogCaptureFixture
) -> None:
    @stack.broker.task
    async def odd(x: int):  # no annotation: taskiq would try to parse the str back
        stack.runs["odd"] += 1
        return f"r{SURROGATE}"

    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            sent = await odd.kiq(1)
            res = await sent.wait_result(timeout=5)
            assert not res.is_err, res.error
            assert res.return_value == f"r{SURROGATE}"
            assert "cache_hit" not in res.labels
    assert stack.runs["odd"] == 2
    assert stack.cache.get_stats()["middleware"]["uncacheable_results"] == 2
    messages = _ours(caplog)
    assert len(messages) == 1, messages
    assert "result cannot be encoded" in messages[0]
    # The record says the value could not be stored, rather than a logged traceback.
    record = await stack.storage.storage.get(f"task:{sent.task_id}")
    assert record["is_err"] is False
    assert record["return_value"] is None
    assert record["error"]["type"] == "taskiq_flow.ReturnValueNotSerializable"


async def test_a_cached_error_with_a_surrogate_keeps_the_tasks_own_error(
    stack: Any, caplog: pytest.LogCaptureFixture
) -> None:
    @stack.broker.task(cache_errors="true")
    async def boom(x: int) -> int:
        stack.runs["boom"] += 1
        raise ValueError(f"bad {SURROGATE}")

    with caplog.at_level(logging.WARNING):
        first = await (await boom.kiq(1)).wait_result(timeout=5)
        second = await (await boom.kiq(1)).wait_result(timeout=5)
    assert type(first.error) is ValueError
    assert str(first.error) == f"bad {SURROGATE}"
    # Cached with its message escaped: the hit is the same type, readable.
    assert stack.runs["boom"] == 1
    assert second.labels.get("cache_hit") == "true"
    assert type(second.error) is ValueError
    assert str(second.error) == "bad \\udc80"
    assert _ours(caplog) == []


async def test_an_uncached_error_with_a_surrogate_is_recorded(
    stack: Any, caplog: pytest.LogCaptureFixture
) -> None:
    @stack.broker.task
    async def boom(x: int) -> int:
        raise ValueError(f"bad {SURROGATE}")

    with caplog.at_level(logging.WARNING):
        sent = await boom.kiq(1)
        res = await sent.wait_result(timeout=5)
    assert type(res.error) is ValueError
    assert str(res.error) == f"bad {SURROGATE}"
    record = await stack.storage.storage.get(f"task:{sent.task_id}")
    assert record["is_err"] is True
    assert record["error"] == {"type": "builtins.ValueError", "message": "bad \\udc80"}
    assert _ours(caplog) == []


# -- StorageResultBackend ---------------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite"])
async def storage(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[BaseStorageAdapter]:
    adapter: BaseStorageAdapter
    if request.param == "memory":
        adapter = InMemoryStorageAdapter()
    else:
        adapter = SQLiteStorageAdapter(tmp_path / "store.sqlite3")
    yield adapter
    await adapter.close()


@pytest.mark.parametrize("middleware", [True, False], ids=["with_middleware", "backend_only"])
async def test_the_result_backend_reports_a_surrogate_result_as_not_serializable(
    storage: BaseStorageAdapter, middleware: bool, caplog: pytest.LogCaptureFixture
) -> None:
    broker = InMemoryBroker(await_inplace=True).with_result_backend(StorageResultBackend(storage))
    if middleware:
        broker.add_middlewares(CacheMiddleware(InMemoryCacheAdapter()), StorageMiddleware(storage))

    @broker.task
    async def odd(x: str):  # no annotation: taskiq would try to parse the str back
        return f"r{SURROGATE}"

    @broker.task
    async def boom(x: str) -> int:
        raise ValueError(f"bad {SURROGATE}")

    await broker.startup()
    try:
        with caplog.at_level(logging.WARNING):
            for arg in ("a", SURROGATE):
                sent = await odd.kiq(arg)
                res = await sent.wait_result(timeout=5)
                assert res.is_err
                assert isinstance(res.error, ResultNotSerializableError)
                assert res.error.value_type == "str"
                record = await storage.get(f"task:{sent.task_id}")
                assert record["error"]["type"] == "taskiq_flow.ReturnValueNotSerializable"

                failed = await (await boom.kiq(arg)).wait_result(timeout=5)
                assert type(failed.error) is ValueError
                assert str(failed.error) == "bad \\udc80"
    finally:
        await broker.shutdown()
    # Warnings (an uncacheable result or argument) at most; never a logged traceback.
    assert _ours(caplog, logging.ERROR) == []
