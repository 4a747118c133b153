"""Listing and invalidation on Redis: the part of the Redis cache adapter that scans.

``iter_keys``, ``delete_pattern``, ``tag``, ``iter_tagged`` and ``invalidate_tag`` of
:class:`~taskiq_flow.cache.redis.RedisCacheAdapter` (its module docstring describes the
key layout and the Cluster rules they follow). They touch neither the lock nor its
lease hooks, only key names, ``SCAN`` batches and tag sets, so they read on their own;
:class:`_RedisListing` is a base of the adapter, which sets the attributes it declares.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, cast

from taskiq_flow.cache.base import (
    BaseCacheAdapter,
    check_cache_key,
    check_cache_pattern,
    check_cache_tag,
    check_cache_tags,
)
from taskiq_flow.storage.glob import compile_glob, escape_glob
from taskiq_flow.storage.kit.cluster import untag

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

    from taskiq_flow.storage.kit.redis import AnyRedis, RedisConnection

_BATCH = 500
# _TAKE_TAG's ARGV: how long a taken tag set may linger if its invalidation dies half-way.
_TAKEN_TAG_MS = 3_600_000


class _RedisListing(BaseCacheAdapter):
    """Keys, patterns and tags on Redis (see the module doc); abstract, a base only."""

    # Set by RedisCacheAdapter.__init__ (see there): declared for the type checker only.
    _redis: RedisConnection
    _commands: AnyRedis
    _tag: Callable[[str], str]
    key_prefix: str
    _value_prefix: str
    _lock_prefix: str
    _tag_prefix: str
    _tag_script: AsyncScript
    _take_tag_script: AsyncScript
    _on_delete: AbstractContextManager[None, None]
    _on_tag: AbstractContextManager[None, None]

    async def iter_keys(self, pattern: str = "*") -> AsyncIterator[str]:
        """Iterate the keys matching ``pattern`` with ``SCAN`` (may repeat a key).

        One server or Sentinel: ``SCAN MATCH`` with the pattern. Cluster: the whole
        prefix, matched here (see :mod:`taskiq_flow.cache.redis`).
        """
        check_cache_pattern(pattern)
        async for batch in self._scan_keys(self._value_prefix, pattern, "keys"):
            for key in batch:
                yield key

    async def delete_pattern(self, pattern: str) -> int:
        """Remove every entry (and lease) whose key matches ``pattern``; how many entries."""
        check_cache_pattern(pattern)
        removed = 0
        # Leases first: a creation in flight then stores nothing, whenever it commits; one
        # that committed before its lease was reached has its entry removed by the second
        # pass. (Entries first would let a commit land between the two passes.)
        async for batch in self._scan_keys(self._lock_prefix, pattern, "delete pattern"):
            removed += await self._remove(batch)
        async for batch in self._scan_keys(self._value_prefix, pattern, "delete pattern"):
            removed += await self._remove(batch)
        return removed

    async def tag(self, key: str, tags: Iterable[str], ttl_seconds: int | None = None) -> None:
        """Add ``key`` to the set of each of ``tags`` (see :meth:`BaseCacheAdapter.tag`)."""
        check_cache_key(key)
        checked = check_cache_tags(tags)
        ttl = self._tag_ttl(ttl_seconds)
        ttl_ms = "" if ttl is None else ttl * 1000
        with self._on_tag:
            for tag in checked:
                await self._tag_script(keys=[self._tag_name(tag)], args=[key, ttl_ms])

    async def iter_tagged(self, tag: str) -> AsyncIterator[str]:
        """Iterate the keys of the entries carrying ``tag`` (``SSCAN``, may repeat a key)."""
        name = self._tag_name(check_cache_tag(tag))
        cursor = 0
        while True:
            with self._on_tag:
                cursor, members = await self._commands.sscan(name, cursor, count=_BATCH)
                keys = _decoded(cast("list[bytes]", members))
                found = await asyncio.gather(
                    *(self._commands.exists(self._value_prefix + self._tag(k)) for k in keys)
                )
            for key, exists in zip(keys, found, strict=True):
                if exists:
                    yield key
            if not cursor:
                return

    async def invalidate_tag(self, tag: str) -> int:
        """Remove every entry (and lease) tagged ``tag``, in batches; how many entries."""
        tagged = self._tag(check_cache_tag(tag))
        name = self._tag_prefix + tagged
        taken = f"{self.key_prefix}tagdel:{tagged}:{secrets.token_hex(8)}"
        with self._on_tag:
            if not await self._take_tag_script(keys=[name, taken], args=[_TAKEN_TAG_MS]):
                return 0
        removed = 0
        while True:
            with self._on_tag:
                members = await self._commands.spop(taken, _BATCH)
            if not members:
                return removed
            removed += await self._remove(_decoded(cast("list[bytes]", members)))

    def _tag_name(self, tag: str) -> str:
        return self._tag_prefix + self._tag(tag)

    async def _remove(self, keys: list[str]) -> int:
        """Remove the leases, then the entries, of ``keys``; how many entries were there.

        Leases first: a creation committing between the two commands finds its lease
        gone and stores nothing; one that committed before has its entry removed next.
        """
        if not keys:
            return 0
        tagged = [self._tag(key) for key in keys]
        with self._on_delete:
            await self._commands.unlink(*(self._lock_prefix + name for name in tagged))
            return int(await self._commands.unlink(*(self._value_prefix + n for n in tagged)))

    async def _scan_keys(
        self, prefix: str, pattern: str, operation: str
    ) -> AsyncIterator[list[str]]:
        """Batches of the keys under ``prefix`` matching ``pattern`` (see the module doc)."""
        if not pattern:
            return
        cut = len(prefix.encode("utf-8"))
        if not self._redis.is_cluster:
            async for batch in self._redis.scan(escape_glob(prefix) + pattern, _BATCH, operation):
                yield [raw[cut:].decode("utf-8", "surrogateescape") for raw in batch]
            return
        match = compile_glob(pattern)
        async for batch in self._redis.scan(escape_glob(prefix) + "*", _BATCH, operation):
            keys = []
            for raw in batch:
                try:
                    key = untag(raw[cut:].decode("utf-8", "surrogateescape"))
                except ValueError:
                    continue  # not a name this adapter wrote
                if match(key):
                    keys.append(key)
            if keys:
                yield keys


def _decoded(members: list[bytes]) -> list[str]:
    return [member.decode("utf-8", "surrogateescape") for member in members]
