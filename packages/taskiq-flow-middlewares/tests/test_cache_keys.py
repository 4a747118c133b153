"""cache_key_for: the very key CacheMiddleware uses, in the worker and at send."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

import pytest
from taskiq import InMemoryBroker

from taskiq_flow.cache import CacheKeyError, InMemoryCacheAdapter
from taskiq_flow.middlewares import CacheMiddleware, cache_key_for

# Pinned: keys of users who set none of the newer options must never change (a change
# would empty every cache on upgrade). BLAKE2b-128 of msgpack([3, 2]), person taskiq-flow-k2.
_DOUBLE_3 = "double:44ba6cecdf21534c64a7ac261e2595b7"


@pytest.fixture(params=[True, False], ids=["at_send", "worker_only"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[InMemoryBroker]:
    broker = InMemoryBroker()
    broker.add_middlewares(CacheMiddleware(InMemoryCacheAdapter(), answer_at_send=request.param))
    await broker.startup()
    yield broker
    await broker.shutdown()


def _cache(broker: InMemoryBroker) -> InMemoryCacheAdapter:
    (middleware,) = (m for m in broker.middlewares if isinstance(m, CacheMiddleware))
    assert isinstance(middleware.cache, InMemoryCacheAdapter)
    return middleware.cache


async def test_key_is_where_the_result_is_cached(broker: InMemoryBroker) -> None:
    runs: Counter[int] = Counter()

    @broker.task(task_name="double")
    async def double(x: int, y: int = 2) -> int:
        runs[x] += 1
        return x * y

    await (await double.kiq(3)).wait_result(timeout=5)
    await (await double.kiq(4)).wait_result(timeout=5)
    key = cache_key_for(double, 3)
    assert await _cache(broker).get(key) is not None
    # Every way of writing the same call is one key.
    assert cache_key_for(double, x=3) == cache_key_for(double, 3, 2) == key
    # Deleting exactly that key makes exactly that call run again (worker and send paths).
    assert await _cache(broker).delete(key)
    await (await double.kiq(3)).wait_result(timeout=5)
    await (await double.kiq(4)).wait_result(timeout=5)
    assert runs == Counter({3: 2, 4: 1})


async def test_keys_of_existing_users_do_not_change(broker: InMemoryBroker) -> None:
    @broker.task(task_name="double")
    async def double(x: int, y: int = 2) -> int:
        return x * y

    assert cache_key_for(double, 3) == _DOUBLE_3
    await (await double.kiq(3)).wait_result(timeout=5)
    assert await _cache(broker).get(_DOUBLE_3) is not None


async def test_cache_key_label_at_declaration_and_per_call(broker: InMemoryBroker) -> None:
    @broker.task(task_name="fixed", cache_key="mine")
    async def fixed(x: int) -> int:
        return x

    @broker.task(task_name="plain")
    async def plain(x: int) -> int:
        return x

    assert cache_key_for(fixed, 1) == "fixed:key:mine"
    assert cache_key_for(plain, 1, labels={"cache_key": "other"}) == "plain:key:other"
    await (await plain.kiq(1, labels={"cache_key": "other"})).wait_result(timeout=5)
    assert await _cache(broker).get("plain:key:other") is not None


async def test_wire_forms_give_the_worker_key(broker: InMemoryBroker) -> None:
    @broker.task(task_name="pairs")
    async def pairs(x: tuple[int, int]) -> int:
        return sum(x)

    # A tuple reaches the worker as a list: the key is built from the wire form.
    assert cache_key_for(pairs, (1, 2)) == cache_key_for(pairs, [1, 2])
    await (await pairs.kiq((1, 2))).wait_result(timeout=5)
    assert await _cache(broker).get(cache_key_for(pairs, (1, 2))) is not None


async def test_unencodable_arguments_and_non_tasks_are_clear_errors(
    broker: InMemoryBroker,
) -> None:
    @broker.task(task_name="big")
    async def big(x: int) -> int:
        return x

    with pytest.raises(CacheKeyError, match="cannot be encoded"):
        cache_key_for(big, 2**70)
    with pytest.raises(TypeError, match="expects a taskiq task"):
        cache_key_for(lambda x: x, 1)
