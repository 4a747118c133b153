"""Prometheus metrics and OpenTelemetry span attributes of the middlewares (real brokers)."""

from __future__ import annotations

import asyncio
import functools
import re
import subprocess
import sys
import textwrap
import threading
import urllib.request
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
    start_http_server,
)
from prometheus_client.parser import text_string_to_metric_families
from taskiq import InMemoryBroker

from taskiq_flow.cache import InMemoryCacheAdapter
from taskiq_flow.middlewares import (
    CacheMiddleware,
    DataflowPipeline,
    PipelineMiddleware,
    StorageMiddleware,
    StorageResultBackend,
    _metrics,
    pipeline_task,
)
from taskiq_flow.middlewares._metrics import _metric
from taskiq_flow.middlewares.errors import MiddlewareConfigError
from taskiq_flow.storage import InMemoryStorageAdapter, SQLiteStorageAdapter
from taskiq_flow.storage.kit.spool import SPOOL_SUPPORTED


def requests(task_name: str, result: str) -> float:
    value = REGISTRY.get_sample_value(
        "taskiq_flow_cache_requests_total", {"task_name": task_name, "result": result}
    )
    return value or 0.0


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


async def cached_broker(**options) -> tuple[InMemoryBroker, CacheMiddleware]:
    broker = InMemoryBroker(await_inplace=True)
    cache_mw = CacheMiddleware(cache=InMemoryCacheAdapter(), **options)
    broker.add_middlewares(cache_mw, StorageMiddleware(storage=InMemoryStorageAdapter()))
    return broker, cache_mw


def unique(prefix: str) -> str:
    """A task name no other test uses: the default registry lives as long as the process."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


async def test_hits_and_misses_are_counted_per_task() -> None:
    broker, _ = await cached_broker(answer_at_send=False)
    name = unique("square")

    @broker.task(task_name=name)
    async def square(x: int) -> int:
        return x * x

    await broker.startup()
    try:
        for i in range(10):
            task = await square.kiq(i % 2)
            assert (await task.wait_result(timeout=5)).return_value == (i % 2) ** 2
        bypassed = await square.kicker().with_labels(cache="false").kiq(3)
        await bypassed.wait_result(timeout=5)
    finally:
        await broker.shutdown()
    assert requests(name, "miss") == 2
    assert requests(name, "hit") == 8
    assert requests(name, "bypass") == 1


async def test_answered_at_send_is_its_own_result() -> None:
    broker, _ = await cached_broker()
    name = unique("at_send")

    @broker.task(task_name=name)
    async def double(x: int) -> int:
        return 2 * x

    await broker.startup()
    try:
        for _ in range(3):
            task = await double.kiq(21)
            assert (await task.wait_result(timeout=5)).return_value == 42
    finally:
        await broker.shutdown()
    assert requests(name, "miss") == 1
    assert requests(name, "at_send") == 2
    assert requests(name, "hit") == 0


async def test_creator_errors_are_counted() -> None:
    broker, _ = await cached_broker(answer_at_send=False)
    name = unique("boom")

    @broker.task(task_name=name)
    async def boom(x: int) -> int:
        raise RuntimeError(x)

    await broker.startup()
    try:
        task = await boom.kiq(1)
        assert (await task.wait_result(timeout=5)).is_err
    finally:
        await broker.shutdown()
    assert sample("taskiq_flow_cache_creator_errors_total", {"task_name": name}) == 1
    assert requests(name, "miss") == 1


async def test_metrics_false_counts_nothing() -> None:
    broker, cache_mw = await cached_broker(metrics=False, answer_at_send=False)
    assert cache_mw._metrics is None
    name = unique("quiet")

    @broker.task(task_name=name)
    async def quiet(x: int) -> int:
        return x

    await broker.startup()
    try:
        for _ in range(2):
            await (await quiet.kiq(1)).wait_result(timeout=5)
    finally:
        await broker.shutdown()
    assert requests(name, "miss") == 0
    assert requests(name, "hit") == 0
    assert cache_mw.get_stats()["middleware"]["hits"] == 1


def test_many_middlewares_share_one_set_of_metrics() -> None:
    first, second = CacheMiddleware(), CacheMiddleware()
    assert first._metrics is not None
    assert first._metrics is second._metrics
    assert PipelineMiddleware()._metrics is first._metrics


def test_a_same_metric_already_registered_is_reused() -> None:
    registry = CollectorRegistry()
    prom = SimpleNamespace(
        Counter=functools.partial(Counter, registry=registry),
        Gauge=functools.partial(Gauge, registry=registry),
        REGISTRY=registry,
    )
    ours = _metric(prom, "Counter", "taskiq_flow_x", "doc", ("task_name",))
    assert _metric(prom, "Counter", "taskiq_flow_x", "doc", ("task_name",)) is ours


def test_a_foreign_metric_of_the_same_name_is_a_clear_error() -> None:
    registry = CollectorRegistry()
    Gauge("taskiq_flow_cache_requests_total", "someone else's", registry=registry)
    prom = SimpleNamespace(Counter=functools.partial(Counter, registry=registry), REGISTRY=registry)
    with pytest.raises(MiddlewareConfigError, match="taskiq_flow_cache_requests"):
        _metric(prom, "Counter", "taskiq_flow_cache_requests", "doc", ("task_name", "result"))


async def test_hit_and_miss_spans_carry_the_attributes() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    broker, _ = await cached_broker(answer_at_send=False)
    name = unique("traced")

    @broker.task(task_name=name)
    async def traced(x: int) -> int:
        return x + 1

    await broker.startup()
    try:
        for span_name in ("first", "second"):
            # InMemoryBroker(await_inplace=True) runs the task in this context: the
            # span stands in for the one taskiq's OpenTelemetryMiddleware opens.
            with tracer.start_as_current_span(span_name):
                await (await traced.kiq(1)).wait_result(timeout=5)
    finally:
        await broker.shutdown()
        provider.shutdown()
    spans = {span.name: dict(span.attributes or {}) for span in exporter.get_finished_spans()}
    assert spans["first"]["taskiq_flow.cache.hit"] is False
    assert spans["second"]["taskiq_flow.cache.hit"] is True
    assert str(spans["second"]["taskiq_flow.cache.key"]).startswith(f"{name}:")


async def test_pipeline_runs_and_steps_are_counted() -> None:
    broker = InMemoryBroker(await_inplace=True, max_stored_results=-1)
    store = InMemoryStorageAdapter()
    broker.add_middlewares(StorageMiddleware(storage=store), PipelineMiddleware())

    @broker.task
    @pipeline_task(output="total")
    async def total(data: list[int]) -> int:
        return sum(data)

    before = {
        state: sample("taskiq_flow_pipeline_runs_total", {"state": state})
        for state in ("started", "done")
    }
    steps_before = sample("taskiq_flow_pipeline_steps_total", {"result": "ok"})
    await broker.startup()
    try:
        run = await DataflowPipeline.from_tasks(broker, [total]).kiq(data=[1, 2])
        assert (await run.wait_result(timeout=5)).return_value == {"total": 3}
    finally:
        await broker.wait_all()
        await broker.shutdown()
    for state, value in before.items():
        assert sample("taskiq_flow_pipeline_runs_total", {"state": state}) == value + 1
    assert sample("taskiq_flow_pipeline_steps_total", {"result": "ok"}) == steps_before + 1


def test_without_the_extras_nothing_is_imported_and_nothing_changes() -> None:
    code = textwrap.dedent(
        """
        import asyncio, sys
        sys.modules["prometheus_client"] = None  # blocked: import raises ImportError
        sys.modules["opentelemetry"] = None
        sys.modules["opentelemetry.trace"] = None
        from taskiq import InMemoryBroker
        from taskiq_flow.middlewares import CacheMiddleware, PipelineMiddleware

        async def main():
            broker = InMemoryBroker(await_inplace=True)
            mw = CacheMiddleware(answer_at_send=False)
            assert mw._metrics is None and PipelineMiddleware()._metrics is None
            broker.add_middlewares(mw)

            @broker.task
            async def one(x: int) -> int:
                return x

            await broker.startup()
            for _ in range(2):
                assert (await (await one.kiq(5)).wait_result(timeout=5)).return_value == 5
            await broker.shutdown()
            assert mw.get_stats()["middleware"]["hits"] == 1

        asyncio.run(main())
        loaded = [m for m in sys.modules if m.startswith(("prometheus_client", "opentelemetry"))]
        assert all(sys.modules[m] is None for m in loaded), loaded
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_the_monitoring_docs_name_exactly_the_registered_metrics() -> None:
    docs = Path(__file__).parents[3] / "docs" / "middlewares.md"
    if not docs.exists():
        pytest.skip("docs/ is not part of this checkout")
    text = docs.read_text(encoding="utf-8").split("## Monitoring", 1)[1].split("\n## ", 1)[0]
    CacheMiddleware()  # make sure the metrics exist in this process
    registered = {
        metric.name + ("_total" if metric.type == "counter" else "")
        for metric in REGISTRY.collect()
        if metric.name.startswith("taskiq_flow_")
    }
    queryable = registered | {
        metric.name + suffix
        for metric in REGISTRY.collect()
        if metric.name.startswith("taskiq_flow_") and metric.type == "histogram"
        for suffix in ("_bucket", "_sum", "_count")
    }
    in_table = set(re.findall(r"^\| `(taskiq_flow_\w+)`", text, flags=re.MULTILINE))
    in_queries = set(re.findall(r"\b(taskiq_flow_\w+)", text.split("```promql", 1)[1]))
    assert in_table == registered
    assert in_queries <= queryable


async def test_a_real_scrape_serves_the_counts() -> None:
    broker, _ = await cached_broker(answer_at_send=False)
    name = unique("scraped")

    @broker.task(task_name=name)
    async def scraped(x: int) -> int:
        return x

    await broker.startup()
    try:
        for i in range(20):
            await (await scraped.kiq(i % 4)).wait_result(timeout=5)
    finally:
        await broker.shutdown()
    server, thread = start_http_server(0, addr="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    scraped_counts = {
        found.labels["result"]: found.value
        for family in text_string_to_metric_families(body.decode())
        for found in family.samples
        if found.name == "taskiq_flow_cache_requests_total"
        and found.labels.get("task_name") == name
    }
    assert scraped_counts == {"hit": 16.0, "miss": 4.0}


async def test_lock_timeouts_are_counted() -> None:
    broker = InMemoryBroker()
    broker.add_middlewares(
        CacheMiddleware(InMemoryCacheAdapter(max_wait=0.2), answer_at_send=False)
    )
    name = unique("slow")

    @broker.task(task_name=name)
    async def slow(x: int) -> int:
        await asyncio.sleep(0.6)
        return x

    before = sample("taskiq_flow_cache_lock_timeouts_total")
    await broker.startup()
    try:
        sent = await asyncio.gather(*(slow.kiq(1) for _ in range(3)))
        results = await asyncio.gather(*(t.wait_result(timeout=10) for t in sent))
    finally:
        await broker.shutdown()
    assert [r.return_value for r in results] == [1] * 3
    assert sample("taskiq_flow_cache_lock_timeouts_total") - before >= 2
    assert requests(name, "miss") == 1
    assert requests(name, "hit") == 2


def writes(result: str) -> float:
    return sample("taskiq_flow_storage_writes_total", {"result": result})


def storage_samples() -> dict[str, float]:
    return {
        **{result: writes(result) for result in ("ok", "buffered", "spooled", "dropped")},
        "gauge": sample("taskiq_flow_storage_buffer_records"),
        "timed": sample("taskiq_flow_storage_write_seconds_count"),
    }


def stored_app(middleware: StorageMiddleware) -> tuple[InMemoryBroker, object]:
    broker = InMemoryBroker(await_inplace=True)
    broker.add_middlewares(middleware)

    @broker.task(task_name=unique("stored"))
    async def echo(x: int) -> int:
        return x

    return broker, echo


async def test_storage_writes_are_counted_and_timed() -> None:
    broker, echo = stored_app(StorageMiddleware(storage=InMemoryStorageAdapter()))
    before = storage_samples()
    await broker.startup()
    try:
        for i in range(5):
            await (await echo.kiq(i)).wait_result(timeout=5)
    finally:
        await broker.shutdown()
    after = storage_samples()
    assert after["ok"] - before["ok"] == 5
    assert after["timed"] - before["timed"] == 5
    assert after["gauge"] == before["gauge"]
    for result in ("buffered", "spooled", "dropped"):
        assert after[result] == before[result]


@pytest.mark.skipif(not SPOOL_SUPPORTED, reason="spools need fcntl.flock")
async def test_a_failing_store_is_spooled_gauged_and_traced_then_written(
    tmp_path: Path,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    # A SQLite file in a directory that does not exist yet: every write fails for real.
    storage = SQLiteStorageAdapter(tmp_path / "later" / "store.sqlite3")
    middleware = StorageMiddleware(storage, spool_dir=tmp_path / "spool", retry_interval=30)
    broker, echo = stored_app(middleware)
    before = storage_samples()
    await broker.startup()
    try:
        for i in range(3):
            with tracer.start_as_current_span(f"failed-{i}"):
                await echo.kiq(i)
        mid = storage_samples()
        assert mid["spooled"] - before["spooled"] == 3
        assert mid["gauge"] - before["gauge"] == 3
        assert mid["ok"] == before["ok"]
        assert mid["timed"] - before["timed"] == 1  # later writes queue behind the first
        (tmp_path / "later").mkdir()
        assert await middleware.flush()
        with tracer.start_as_current_span("written"):
            await (await echo.kiq(9)).wait_result(timeout=5)
    finally:
        await broker.shutdown()
        provider.shutdown()
    after = storage_samples()
    assert after["ok"] - before["ok"] == 4
    assert after["gauge"] == before["gauge"]
    assert after["timed"] - before["timed"] >= 3
    assert after["buffered"] == before["buffered"]
    assert after["dropped"] == before["dropped"]
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert spans["failed-0"].attributes["taskiq_flow.storage.written"] is False
    assert [e.name for e in spans["failed-0"].events] == ["taskiq_flow.storage.failure"]
    assert spans["failed-1"].attributes["taskiq_flow.storage.written"] is False
    assert spans["written"].attributes["taskiq_flow.storage.written"] is True
    assert not spans["written"].events


async def test_records_kept_in_memory_count_buffered_and_dropped(tmp_path: Path) -> None:
    storage = SQLiteStorageAdapter(tmp_path / "later" / "store.sqlite3")
    middleware = StorageMiddleware(storage, spool=False, buffer_size=2, retry_interval=30)
    broker, echo = stored_app(middleware)
    before = storage_samples()
    await broker.startup()
    try:
        for i in range(3):
            await echo.kiq(i)
        mid = storage_samples()
        assert mid["buffered"] - before["buffered"] == 3
        assert mid["dropped"] - before["dropped"] == 1
        assert mid["dropped"] - before["dropped"] == middleware.get_stats()["records_dropped"]
        assert mid["gauge"] - before["gauge"] == 2
        (tmp_path / "later").mkdir()
        assert await middleware.flush()
    finally:
        await broker.shutdown()
    after = storage_samples()
    assert after["ok"] - before["ok"] == 2
    assert after["gauge"] == before["gauge"]


async def test_the_result_backend_counts_its_writes(tmp_path: Path) -> None:
    broker = InMemoryBroker(await_inplace=True).with_result_backend(
        StorageResultBackend(InMemoryStorageAdapter())
    )

    @broker.task(task_name=unique("result"))
    async def echo(x: int) -> int:
        return x

    before = writes("ok")
    await broker.startup()
    try:
        for i in range(2):
            assert (await (await echo.kiq(i)).wait_result(timeout=5)).return_value == i
    finally:
        await broker.shutdown()
    assert writes("ok") - before == 2


async def test_storage_metrics_false_counts_nothing() -> None:
    middleware = StorageMiddleware(storage=InMemoryStorageAdapter(), metrics=False)
    assert middleware.writer.metrics is None
    assert StorageResultBackend(InMemoryStorageAdapter(), metrics=False).writer.metrics is None
    broker, echo = stored_app(middleware)
    before = storage_samples()
    await broker.startup()
    try:
        await (await echo.kiq(1)).wait_result(timeout=5)
    finally:
        await broker.shutdown()
    assert storage_samples() == before
    assert middleware.get_stats()["records_written"] == 1


def test_hot_path_events_from_many_threads_are_exact_at_every_collection() -> None:
    # Answers and written records are pushed to prometheus-client in batches; the default
    # registry's collection pushes what is pending first, whatever thread recorded it.
    recorder = _metrics.recorder()
    assert recorder is not None
    name = unique("threads")

    def hammer() -> None:
        for _ in range(5000):
            recorder.cache_request(name, "hit")

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert requests(name, "hit") == 20_000
    written = sample("taskiq_flow_storage_write_seconds_count")
    recorder.storage_written(0.002)
    recorder.storage_written(1)  # an int is a duration too
    assert sample("taskiq_flow_storage_write_seconds_count") == written + 2


async def test_hot_path_events_reach_prometheus_client_within_the_interval() -> None:
    # What a multiprocess scrape reads (another process: no collection here to push
    # first) is the metric values themselves: pushed within FLUSH_INTERVAL on the loop.
    recorder = _metrics.recorder()
    assert recorder is not None
    name = unique("timer")
    child = recorder.cache_requests.labels(name, "miss")
    for _ in range(3):
        recorder.cache_request(name, "miss")
    assert child._value.get() == 0  # pending, not pushed yet
    await asyncio.sleep(_metrics.FLUSH_INTERVAL + 0.2)
    assert child._value.get() == 3
    # Past MAX_PENDING events they are pushed at once, timer or not.
    for _ in range(_metrics.MAX_PENDING):
        recorder.cache_request(name, "miss")
    assert child._value.get() >= 3 + _metrics.MAX_PENDING - 1
    await asyncio.sleep(_metrics.FLUSH_INTERVAL + 0.2)
    assert child._value.get() == 3 + _metrics.MAX_PENDING


def test_a_timer_lost_with_its_loop_is_armed_again_on_the_next() -> None:
    # A producer calling asyncio.run(...) per request: the loop that armed the timer
    # closes before it fires; the next loop's events must still be pushed on time.
    recorder = _metrics.recorder()
    assert recorder is not None
    name = unique("loops")
    child = recorder.cache_requests.labels(name, "hit")

    async def one(hits: int, wait: float) -> None:
        for _ in range(hits):
            recorder.cache_request(name, "hit")
        await asyncio.sleep(wait)

    asyncio.run(one(1, 0))  # closes with its timer pending
    asyncio.run(one(10, _metrics.FLUSH_INTERVAL + 0.3))
    assert child._value.get() == 11


def test_a_filtered_scrape_sees_the_pending_events() -> None:
    # ?name[]=... scrapes collect through restricted_registry: only the named metrics.
    recorder = _metrics.recorder()
    assert recorder is not None
    name = unique("filtered")
    for _ in range(3):
        recorder.cache_request(name, "hit")
    registry = REGISTRY.restricted_registry(["taskiq_flow_cache_requests_total"])
    served = generate_latest(registry).decode()  # what ?name[]=... serves
    assert f'taskiq_flow_cache_requests_total{{result="hit",task_name="{name}"}} 3.0' in served


def test_a_failed_push_is_logged_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    recorder = _metrics.recorder()
    assert recorder is not None

    def broken(_amount: float) -> None:
        raise OSError("the multiprocess directory is gone")

    recorder._events.append(broken)
    recorder.flush()  # no exception
    assert "pushing metrics to prometheus-client failed" in caplog.text
    assert "the multiprocess directory is gone" in caplog.text
    recorder.cache_request(unique("after"), "hit")
    recorder.flush()
    assert "recovered" in caplog.text
