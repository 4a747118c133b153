"""Hostile input against real workers: they answer right or fail that one task, never crash.

Two ``taskiq worker`` processes with both middlewares over Redis receive: garbage bytes
pushed straight onto their queue, arguments of the wrong type, malformed and spoofed
labels, garbage under the cache entry and the cache lease a task is about to use. Then
ordinary tasks must still get the right answers, with their records.
"""

from __future__ import annotations

import json

import pytest
import redis.asyncio as aioredis

from taskiq_flow_testing import RedisServer

from .conftest import StartCluster, wait_result

pytestmark = [pytest.mark.redis, pytest.mark.slow]

HOSTILE_LABELS = [
    {"cache_ttl": "abc"},
    {"cache_ttl": "-1"},
    {"cache_ttl": 10**30},
    {"cache_ttl": "1e9"},
    {"cache_errors": "maybe"},
    {"cache": "banana"},
    {"cache_hit": "true"},
    {"pipeline_id": "*?[\\]\x00漢"},
    {"pipeline_id": ""},
    {"cache_key": "*[" * 50},
]


async def test_hostile_input_never_crashes_a_worker(
    start_cluster: StartCluster, redis_server: RedisServer
) -> None:
    cluster = await start_cluster(redis_server.url, FAULT_LOCK_TIMEOUT="2")
    compute = cluster.app.tasks["compute"]
    raw = aioredis.from_url(redis_server.url)
    queue = cluster.settings["FAULT_QUEUE"]
    try:
        # Garbage on the queue itself.
        for junk in (b"", b"\x00\xff" * 10, b"{}", b'{"task_name": 1}', b"null", b"[" * 1000):
            await raw.lpush(queue, junk)

        # Wrong argument types: that task fails, clearly; nothing else does.
        bad = await compute.kiq("not a number", {"a": 1})
        bad_result = await wait_result(bad, timeout=30)
        assert bad_result is not None
        assert bad_result.is_err

        # Garbage where the cache entry of a call will be read, and a foreign lease.
        await raw.set("taskiq_flow_cache:v:fault.compute:key:corrupt", b"\xc1garbage")
        await raw.set("taskiq_flow_cache:lock:fault.compute:key:leased", b"\xffnot-ours", px=1500)
        checks = []
        for n, labels in enumerate(
            [*HOSTILE_LABELS, {"cache_key": "corrupt"}, {"cache_key": "leased"}]
        ):
            task = await compute.kicker().with_labels(**labels).kiq(1000 + n, "hostile")
            checks.append((1000 + n, labels, task))
        for x, labels, task in checks:
            result = await wait_result(task, timeout=30)
            assert result is not None, labels
            assert not result.is_err, (labels, result.error)
            assert result.return_value == {"x": x, "sq": x * x, "salt": "hostile"}, labels

        # The spoofed cache_hit did not hide its record.
        spoofed = next(t for _, labels, t in checks if labels.get("cache_hit"))
        assert await cluster.app.storage.get(f"task:{spoofed.task_id}") is not None

        # Ordinary work goes on, on both workers.
        normal = [await compute.kiq(i, "after") for i in range(40)]
        for i, task in enumerate(normal):
            result = await wait_result(task, timeout=30)
            assert result is not None
            assert result.return_value == {"x": i, "sq": i * i, "salt": "after"}
        records = await cluster.app.storage.get_many([f"task:{t.task_id}" for t in normal])
        assert len(records) == len(normal)
        assert all(json.loads(r["return_value"])["salt"] == "after" for r in records.values())
        assert all(w.alive for w in cluster.workers), cluster.logs()[-3000:]
        logs = cluster.logs()
        # Each malformed label was named in a warning, and the corrupt entry too.
        for name in ("cache_ttl='abc'", "cache_errors='maybe'", "cache='banana'"):
            assert name in logs
        assert "ignoring corrupt cache entry under key 'fault.compute:key:corrupt'" in logs
    finally:
        await raw.aclose()
