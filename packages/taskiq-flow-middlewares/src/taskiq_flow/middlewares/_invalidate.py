"""Invalidation by call, by task and by tag: what ``CacheMiddleware.invalidate*`` do.

The keys a task's calls are stored under (see :mod:`taskiq_flow.middlewares._keys`) are
``{task_name}:{32 hex digits}`` and, with a ``cache_key`` label,
``{task_name}:key:{key}[@{version}]``. :func:`task_patterns` gives the two Redis globs
that match exactly those (the task name escaped), so ``invalidate_task`` is two
``delete_pattern`` calls on the adapter and never touches another task's entries, even
one whose name starts with this one's.

Tags (the ``cache_tags`` label) are recorded by :func:`tagging`, on a miss only: it
wraps the creator of a call, so the tags are written while the entry is being created,
before it is stored. A tag invalidated at any moment after that reaches the entry (or
stops its creation from storing it: the adapters' no-resurrection rule).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from taskiq_flow.cache import BaseCacheAdapter, Expiring
from taskiq_flow.cache.base import check_cache_key
from taskiq_flow.middlewares import _labels
from taskiq_flow.middlewares._keys import cache_key_for
from taskiq_flow.middlewares._wrapping import CacheCall
from taskiq_flow.storage.glob import escape_glob

__all__ = [
    "invalidate_call",
    "invalidate_task",
    "tagging",
    "task_keys",
    "task_name_of",
    "task_patterns",
]

_DIGEST_PATTERN = "[0-9a-f]" * 32


def task_name_of(task_or_name: object) -> str:
    """The task name of a taskiq task, or the name itself.

    Raises:
        TypeError: neither a task nor a ``str``.
        CacheKeyError: an empty name, or one not encodable as UTF-8.
    """
    name = getattr(task_or_name, "task_name", task_or_name)
    if not isinstance(name, str):
        msg = f"expected a taskiq task or a task name, got {type(task_or_name).__qualname__}"
        raise TypeError(msg)
    return check_cache_key(name)


def task_patterns(task_name: str) -> tuple[str, str]:
    """The globs matching every key of ``task_name``'s calls, and no other task's."""
    name = escape_glob(task_name)
    return f"{name}:{_DIGEST_PATTERN}", f"{name}:key:*"


async def invalidate_call(cache: BaseCacheAdapter, task: Any, *args: Any, **kwargs: Any) -> bool:
    """Remove the entry of ``task.kiq(*args, **kwargs)``; whether there was one."""
    return await cache.invalidate(cache_key_for(task, *args, **kwargs))


async def invalidate_task(cache: BaseCacheAdapter, task_or_name: object) -> int:
    """Remove every entry of one task's calls; how many there were."""
    removed = 0
    for pattern in task_patterns(task_name_of(task_or_name)):
        removed += await cache.delete_pattern(pattern)
    return removed


async def task_keys(cache: BaseCacheAdapter, task_or_name: object) -> AsyncIterator[str]:
    """Iterate the keys :func:`invalidate_task` would remove now (a key may repeat)."""
    for pattern in task_patterns(task_name_of(task_or_name)):
        async for key in cache.iter_keys(pattern):
            yield key


def tagging(
    cache: BaseCacheAdapter, call: CacheCall, creator: Callable[[], Any]
) -> Callable[[], Any]:
    """``creator``, recording the call's ``cache_tags`` before it runs.

    Only a creator is wrapped, so a hit never writes a tag. The tags are written before
    the function runs, so an ``invalidate_tag`` during the run finds the key and removes
    its lease: the outdated result is not stored (the no-resurrection rule). They are
    written again after, with the entry's own TTL (an ``Expiring`` may change it) counted
    from then, so the tag set never expires before the entry. The tags were checked when
    the call was decided (a bad label runs the call uncached); a tag that cannot be
    written (the backend is down) fails the creation like its commit would.
    """
    tags = _labels.parse_tags(call.message.labels[_labels.LABEL_CACHE_TAGS])

    async def tagged() -> Any:
        await cache.tag(call.key, tags, call.ttl)
        entry = await creator()
        await cache.tag(
            call.key, tags, entry.ttl_seconds if isinstance(entry, Expiring) else call.ttl
        )
        return entry

    return tagged
