"""A retried failure is not a run failure: the retry middleware's NoResultError skips post_save."""

from __future__ import annotations

import pytest
from taskiq.middlewares import SimpleRetryMiddleware, SmartRetryMiddleware

from taskiq_flow.middlewares import DataflowPipeline, pipeline_task


def flaky_pipeline(flow, *, via_labels: bool) -> DataflowPipeline:
    @flow.broker.task
    @pipeline_task(output="fetched")
    async def fetch(url: str) -> str:
        flow.calls["fetch"] += 1
        return url.upper()

    if via_labels:
        # taskiq's own way: retry labels at declaration.
        @flow.broker.task(retry_on_error=True, max_retries=3)
        @pipeline_task(output="cleaned")
        async def clean(fetched: str) -> str:
            flow.calls["clean"] += 1
            if flow.calls["clean"] == 1:
                raise ConnectionError("flaky upstream")
            return fetched.lower()

    else:
        # pipeline_task(retries=...) sets the same labels on the step message.
        @flow.broker.task
        @pipeline_task(output="cleaned", retries=2)
        async def clean(fetched: str) -> str:
            flow.calls["clean"] += 1
            if flow.calls["clean"] == 1:
                raise ConnectionError("flaky upstream")
            return fetched.lower()

    @flow.broker.task
    @pipeline_task(output="stored")
    async def store(cleaned: str) -> int:
        flow.calls["store"] += 1
        return len(cleaned)

    return DataflowPipeline.from_tasks(flow.broker, [fetch, clean, store])


def _retry(kind: str):
    if kind == "simple":
        return SimpleRetryMiddleware(default_retry_count=3)
    return SmartRetryMiddleware(default_retry_count=3, default_delay=0)


@pytest.mark.parametrize("kind", ["simple", "smart"])
@pytest.mark.parametrize("order", ["retry_first", "retry_last"])
@pytest.mark.parametrize("await_inplace", [True, False], ids=["await_inplace", "background"])
@pytest.mark.parametrize("via_labels", [False, True], ids=["retries_arg", "task_labels"])
async def test_fail_once_then_succeed_is_a_successful_run(
    make_flow,
    kind,
    order,
    await_inplace,
    via_labels,
) -> None:
    retry = _retry(kind)
    placement = {"before": (retry,)} if order == "retry_first" else {"after": (retry,)}
    flow = await make_flow(await_inplace=await_inplace, **placement)
    pipeline = flaky_pipeline(flow, via_labels=via_labels)

    run = await pipeline.kiq(url="http://x", pipeline_id="retry_1")
    result = await run.wait_result(timeout=5)
    assert not result.is_err, result.error
    assert result.return_value == {"fetched": "HTTP://X", "cleaned": "http://x", "stored": 8}
    await flow.broker.wait_all()
    assert flow.calls == {"fetch": 1, "clean": 2, "store": 1}
    assert not await flow.storage.exists("pipeline:retry_1:failed")
    # The retry kept the step's task id, so its record sits under the run.
    record = await flow.storage.get(f"pipeline:retry_1:task:{run.task_ids['clean']}")
    assert record["is_err"] is False


async def test_retries_exhausted_fail_the_run(make_flow) -> None:
    flow = await make_flow(before=(SimpleRetryMiddleware(),))

    @flow.broker.task
    @pipeline_task(output="never", retries=2)
    async def always_fails() -> int:
        flow.calls["always_fails"] += 1
        raise TimeoutError("still down")

    run = await DataflowPipeline.from_tasks(flow.broker, [always_fails]).kiq()
    result = await run.wait_result(timeout=5)
    assert result.is_err
    assert result.error.error_type == "TimeoutError"
    assert flow.calls["always_fails"] == 3  # first attempt + 2 retries
