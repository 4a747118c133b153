"""``RedisCacheAdapter``: a cache shared by every process on one Redis server (or Cluster).

Keys, all under ``key_prefix`` (default ``taskiq_flow_cache:``, disjoint from the storage
package's ``taskiq_flow:``):

- ``{prefix}v:{key}`` — the encoded entry, with a native ``PX`` hard expiry;
- ``{prefix}lock:{key}`` — the lease: a unique token (see :mod:`taskiq_flow.cache._lease`
  for a claim at send's), ``SET NX PX lock_timeout``;
- ``{prefix}wake:{key}:{token}`` — the wake-up list of one lease: on release the holder
  pushes one element; every waiter blocks on it with ``BLMOVE list list LEFT RIGHT``, a
  rotation, so the single element wakes each blocked waiter in turn and stays for late
  comers until the list expires. Tied to the holder's token, a wake-up can never be
  mistaken for a later lease's;
- ``{prefix}stats`` — one hash of every process's per-task counters, each process adding
  its own at most once per ``cluster_stats_interval`` (:mod:`taskiq_flow.cache.shared_stats`).

Every call's first look is one script, read-or-acquire: the entry if there is one (a hit:
one round trip, coalesced with the other commands of its event-loop turn), else the lease
taken in the same round trip. A miss is then that and the commit: two round trips. Lease
transitions are Lua scripts too (one atomic round trip each): acquire-or-read (a waiter's
retry, a stale entry's regeneration), renew (``PEXPIRE`` only if the token matches) and
commit (store the value only if the token still holds the lease, compare-and-delete the
lease, push the wake-up).

On a Redis Cluster (``redis+cluster://``) the ``{key}`` part of the three names is a
hash tag (:func:`taskiq_flow.storage.kit.cluster.hash_tag`: ``{key}``, or a digest tag
then the key when the key holds a brace), so one key's entry, lease and wake-up list
share a slot and each script touches one slot; the prefix may not hold a ``{``. On one
server or Sentinel the names stay as above. ``clear`` and ``inventory`` scan every primary.

Listing and invalidation (``keys``, ``iter_keys``, ``delete_pattern``, ``invalidate_tag``):

- ``delete``/``invalidate`` remove the entry and its lease in one script, so that a creation
  in flight stores nothing (commit stores only while its token holds the lease);
  ``delete_pattern`` does the same for every match, leases first, in ``SCAN`` batches;
- ``{prefix}tag:{tag}`` — a set of the keys carrying ``tag`` (``SADD``), expiring with the
  longest entry added to it, so it never outlives its entries. ``invalidate_tag`` renames it
  away atomically (a key tagged meanwhile starts a new set) and pops it in batches,
  removing each member's entry and lease; on a Cluster the set has its own slot and the
  members are removed per slot;
- on one server or Sentinel a pattern goes into ``SCAN MATCH`` after the escaped prefix:
  Redis matches it. On a Cluster the key is wrapped in its hash tag (``v:{key}``, or
  ``v:{digest}key``), which a pattern cannot see through: every entry name under the
  prefix is scanned, turned back into its key (:func:`~taskiq_flow.storage.kit.cluster.untag`)
  and matched here with the same glob rules (:mod:`taskiq_flow.storage.glob`), so a
  narrow pattern costs a scan of the whole prefix there.
"""

from __future__ import annotations

import hashlib
from typing import Any, cast

from taskiq_flow.cache._redis_listing import _RedisListing
from taskiq_flow.cache._redis_scripts import (
    _ACQUIRE,
    _ADD_STATS,
    _COMMIT,
    _DELETE,
    _READ_OR_ACQUIRE,
    _RENEW,
    _TAG,
    _TAKE_TAG,
)
from taskiq_flow.cache.backend import LeaseResult
from taskiq_flow.cache.base import (
    BaseCacheAdapter,
    check_cache_key,
    check_cache_seconds,
    check_cache_ttl,
)
from taskiq_flow.cache.codec import encode_entry
from taskiq_flow.cache.errors import CacheBackendError, CacheConnectionError, CacheValueError
from taskiq_flow.cache.shared_stats import SharedStats
from taskiq_flow.storage.glob import escape_glob
from taskiq_flow.storage.kit.checks import check_key
from taskiq_flow.storage.kit.cluster import check_tag_prefix, hash_tag
from taskiq_flow.storage.kit.redis import RedisBacked, RedisConnection, RedisErrors, aioredis

__all__ = ["DEFAULT_KEY_PREFIX", "RedisCacheAdapter"]

DEFAULT_KEY_PREFIX = "taskiq_flow_cache:"


def _prefix_error(value: object, reason: str) -> Exception:
    return CacheValueError(
        f"key_prefix must be a non-empty string encodable as UTF-8, got {value!r} ({reason})"
    )


class RedisCacheAdapter(_RedisListing, BaseCacheAdapter, RedisBacked):
    """A Redis-backed cache whose ``get_or_create`` holds across processes.

    Args:
        redis_url: ``redis://``, ``rediss://``, ``unix://``, ``redis+cluster://h:p[,h:p]``
            or ``redis+sentinel://h:p[,h:p]/SERVICE[/db]`` URL; the adapter then owns (and
            closes) its client.
        client: an existing ``redis.asyncio.Redis`` or ``RedisCluster``
            (``decode_responses=False``) to use instead; the caller keeps ownership.
            Exactly one of the two.
        default_ttl: TTL in seconds when a call passes none (``None``: no expiry).
        lock_timeout: lease period in seconds. A dead holder's lease lapses after it; a
            live holder renews it every third of it.
        key_prefix: namespace of every key this adapter touches.
        max_wait: seconds a caller waits for another caller's creator before
            ``CacheLockTimeout``.
        fallback_on_error: default of ``get_or_create(fallback_on_error=...)``.
        stale_ttl: default stale-while-revalidate window of ``get_or_create``.
        poll_interval: longest a waiter blocks between re-checks (default: a quarter of
            the lease, at most 1 s). Wake-ups normally arrive by push well before.
        socket_timeout: seconds before a silent server counts as down (owned client only).
        connect_timeout: seconds to establish a connection (owned client only).
        max_connections: most commands in flight at once from this adapter (and the size
            of as many blocked waiters; the owned pool holds twice as many connections).
            Callers beyond it queue instead of failing. With a borrowed client, keep twice
            this at or below its pool size (redis-py's default pool holds 100).
        wait_replicas: confirm every write (entries and leases) with ``WAIT`` on this many
            replicas (one server or Sentinel): a failover then loses no lease, so no second
            creator starts. ``0``: asynchronous replication, as Redis does by default.
        wait_timeout: seconds a write waits for its replicas.
        cluster_stats_interval: seconds between two writes of this process's per-task
            counts (fed by ``CacheMiddleware``) to the hash ``{key_prefix}stats``, which
            ``get_stats(scope="cluster")`` reads (see
            :mod:`taskiq_flow.cache.shared_stats`); ``None``: no cluster-wide stats.
    """

    _scope = "process"

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        client: aioredis.Redis | None = None,
        default_ttl: int | None = 3600,
        lock_timeout: float = 10,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        max_wait: float = 60.0,
        fallback_on_error: bool = False,
        stale_ttl: int | None = None,
        poll_interval: float | None = None,
        socket_timeout: float = 5.0,
        connect_timeout: float = 2.0,
        retries: int = 2,
        max_connections: int = 64,
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
        cluster_stats_interval: float | None = 1.0,
    ) -> None:
        # The storage key rules: every key is key_prefix + a checked key, so a prefix
        # UTF-8 cannot hold (a lone surrogate) would fail every command.
        check_key(key_prefix, _prefix_error)
        lease = check_cache_seconds(lock_timeout, "lock_timeout")
        super().__init__(
            default_ttl=default_ttl,
            max_wait=max_wait,
            fallback_on_error=fallback_on_error,
            stale_ttl=stale_ttl,
        )
        self._redis = RedisConnection(
            redis_url,
            client=client,
            errors=RedisErrors(
                connection=self._connection_error,
                backend=self._backend_error,
                url=_url_error,
                config=CacheValueError.about,
            ),
            connect_timeout=connect_timeout,
            socket_timeout=socket_timeout,
            retries=retries,
            max_connections=max_connections,
            wait_replicas=wait_replicas,
            wait_timeout=wait_timeout,
        )
        # On a Cluster one key's three names carry one hash tag (see the module doc).
        self._tag = hash_tag if self._redis.is_cluster else _as_is
        if self._redis.is_cluster:
            check_tag_prefix(key_prefix, _prefix_error)
        self.key_prefix = key_prefix
        self.lock_timeout = lease
        self._lease_ms = max(1, int(lease * 1000))
        poll = (
            min(1.0, lease / 4)
            if poll_interval is None
            else check_cache_seconds(poll_interval, "poll_interval")
        )
        user_timeout = self._redis.socket_timeout
        if user_timeout is not None and user_timeout > 0:
            # A blocking wait must end before the socket timeout would call it a failure.
            poll = min(poll, user_timeout / 2)
        self._poll = poll
        self._value_prefix = f"{key_prefix}v:"
        self._lock_prefix = f"{key_prefix}lock:"
        self._wake_prefix = f"{key_prefix}wake:"
        self._commands = self._redis.commands
        self._acquire_script = self._redis.register_script(_ACQUIRE)
        self._read_or_acquire_script = self._redis.repeatable_script(_READ_OR_ACQUIRE)
        self._renew_script = self._redis.register_script(_RENEW)
        self._commit_script = self._redis.register_script(_COMMIT)
        self._tag_prefix = f"{key_prefix}tag:"
        self._delete_script = self._redis.register_script(_DELETE)
        self._tag_script = self._redis.register_script(_TAG)
        self._take_tag_script = self._redis.register_script(_TAKE_TAG)
        errors = self._redis.errors
        self._on_get, self._on_set, self._on_delete = errors("get"), errors("set"), errors("delete")
        self._on_acquire, self._on_renew = errors("lock acquire"), errors("lock renew")
        self._on_commit, self._on_wait = errors("lock release"), errors("lock wait")
        self._on_clear = errors("clear")
        self._on_tag = errors("tag")
        self._stats_key = f"{key_prefix}stats"
        if cluster_stats_interval is not None:
            interval = check_cache_seconds(cluster_stats_interval, "cluster_stats_interval")
            self._add_stats_script = self._redis.register_script(_ADD_STATS)
            self._on_stats = errors("stats")
            self.shared_stats = SharedStats(self._write_stats, self._read_stats, interval=interval)

    # Every mapped Redis failure passes through one of these two: counted once, here.

    def _connection_error(self, operation: str, detail: str) -> Exception:
        self._stats.backend_errors += 1
        return CacheConnectionError(operation, detail)

    def _backend_error(self, operation: str, detail: str) -> Exception:
        self._stats.backend_errors += 1
        return CacheBackendError(operation, detail)

    def __repr__(self) -> str:
        options = f"key_prefix={self.key_prefix!r}, lock_timeout={self.lock_timeout}"
        return f"RedisCacheAdapter({self.location!r}, {options})"

    # -- storage ---------------------------------------------------------------------------

    async def set(self, key: str, value: Any, ttl_seconds: int | None = None) -> None:
        """Store ``value`` under ``key`` for ``ttl_seconds`` (``None``: ``default_ttl``)."""
        check_cache_key(key)
        ttl = self.default_ttl if ttl_seconds is None else check_cache_ttl(ttl_seconds)
        payload = encode_entry(key, value)
        with self._on_set:
            await self._commands.set(
                self._value_prefix + self._tag(key), payload, px=None if ttl is None else ttl * 1000
            )

    async def delete(self, key: str) -> bool:
        """Remove ``key`` and its lease (a creation in flight stores nothing); was it there?"""
        check_cache_key(key)
        tagged = self._tag(key)
        with self._on_delete:
            removed = await self._delete_script(
                keys=[self._value_prefix + tagged, self._lock_prefix + tagged]
            )
        return bool(removed)

    async def inventory(self) -> dict[str, int]:
        """What the server holds under this prefix, for every process: entries and leases.

        Hit and miss counters (:meth:`get_stats`) are per process; these counts are the
        cluster-wide view (``SCAN``, never ``KEYS``).
        """
        counts = {"entries": 0, "leases": 0}
        for name, prefix in (("entries", self._value_prefix), ("leases", self._lock_prefix)):
            async for batch in self._redis.scan(escape_glob(prefix) + "*", 500, "inventory"):
                counts[name] += len(batch)
        return counts

    async def clear(self) -> int:
        """Remove every value under this adapter's prefix (``SCAN``, never ``KEYS``).

        Leases and wake-up lists are left to expire: deleting a live lease would let a
        second creator start. Tag sets go with the entries.
        """
        removed = 0
        async for batch in self._redis.scan(escape_glob(self._value_prefix) + "*", 500, "clear"):
            with self._on_clear:
                removed += int(await self._commands.unlink(*batch))
        async for batch in self._redis.scan(escape_glob(self._tag_prefix) + "*", 500, "clear"):
            with self._on_clear:
                await self._commands.unlink(*batch)
        return removed

    async def close(self) -> None:
        """Close the client if this adapter created it. Idempotent; errors mapped.

        Lease releases still on their way and the counts for the cluster-wide stats still
        pending are written first (best effort, bounded).
        """
        await self._lock.releases_done(2.0)
        if self.shared_stats is not None:
            await self.shared_stats.close()
        await self._redis.close()

    async def _write_stats(self, pairs: list[tuple[str, int]]) -> None:
        with self._on_stats:
            await self._add_stats_script(
                keys=[self._stats_key], args=[item for pair in pairs for item in pair]
            )

    async def _read_stats(self) -> dict[Any, Any]:
        with self._on_stats:
            return cast(dict[Any, Any], await self._commands.hgetall(self._stats_key))

    # -- lease primitives ------------------------------------------------------------------

    @property
    def _lease_seconds(self) -> float | None:
        return self.lock_timeout

    @property
    def _poll_interval(self) -> float:
        return self._poll

    async def _read_raw(self, key: str) -> bytes | None:
        with self._on_get:
            return cast(bytes | None, await self._commands.get(self._value_prefix + self._tag(key)))

    async def _read_or_acquire(self, key: str, token: str) -> LeaseResult:
        tagged = self._tag(key)
        with self._on_get:
            reply = await self._read_or_acquire_script(
                (self._value_prefix + tagged, self._lock_prefix + tagged), (token, self._lease_ms)
            )
        if type(reply) is bytes:
            return LeaseResult(reply, False, None)
        if type(reply) is list:
            return LeaseResult(None, False, bytes(reply[0]).decode("utf-8", "replace"))
        return _ACQUIRED

    async def _acquire_lease(self, key: str, token: str, *, ignore: bytes | None) -> LeaseResult:
        # Only a digest travels: the entry to ignore may be large.
        skip = "" if ignore is None else hashlib.sha1(ignore, usedforsecurity=False).hexdigest()
        with self._on_acquire:
            reply = await self._acquire_script(
                keys=[self._value_prefix + self._tag(key), self._lock_prefix + self._tag(key)],
                args=[token, self._lease_ms, skip],
            )
        kind = int(reply[0])
        if kind == 1:
            return LeaseResult(bytes(reply[1]), False, None)
        if kind == 0:
            # "replace": a foreign, non-UTF-8 lease value must not crash the waiter.
            return LeaseResult(None, False, bytes(reply[1]).decode("utf-8", "replace"))
        return LeaseResult(None, True, None)

    async def _renew_lease(self, key: str, token: str) -> bool:
        with self._on_renew:
            renewed = await self._renew_script(
                keys=[self._lock_prefix + self._tag(key)], args=[token, self._lease_ms]
            )
        return bool(renewed)

    async def _commit(
        self, key: str, token: str, payload: bytes | None, ttl_ms: int | None
    ) -> None:
        with self._on_commit:
            await self._commit_script(
                keys=[
                    self._value_prefix + self._tag(key),
                    self._lock_prefix + self._tag(key),
                    f"{self._wake_prefix}{self._tag(key)}:{token}",
                ],
                args=[
                    token,
                    b"" if payload is None else payload,
                    "" if ttl_ms is None else ttl_ms,
                    self._lease_ms,
                    "err" if payload is None else "ok",
                ],
            )

    async def _wait_for_release(self, key: str, holder: str, within: float) -> None:
        wake = f"{self._wake_prefix}{self._tag(key)}:{holder}"
        # BLMOVE runs on the connection's budget for blocked waiters (see RedisConnection).
        with self._on_wait:
            await self._commands.blmove(wake, wake, within, "LEFT", "RIGHT")  # type: ignore[arg-type]


_ACQUIRED = LeaseResult(None, True, None)


def _as_is(key: str) -> str:
    return key


def _url_error(url: str, reason: str) -> Exception:
    return CacheValueError(f"invalid Redis URL {url!r}: {reason}")
