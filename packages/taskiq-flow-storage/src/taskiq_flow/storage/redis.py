"""``RedisStorageAdapter``: entries as Redis strings under a key prefix, with native expiry.

Needs the ``redis`` extra: ``pip install 'taskiq-flow-storage[redis]'``.

Each value is stored as a 17-byte header (format version, ``created_at`` and
``expires_at`` as big-endian doubles of epoch seconds, ``0`` for none) followed by the
msgpack bytes, so ``get_entry`` is one ``GET`` and ``cleanup(ttl_seconds=...)`` can judge
age on the server. Expiry is Redis's own (``SET ... PX``); listing uses ``SCAN``, never
``KEYS``; batches are pipelined. The connection is the storage package's one Redis layer,
:mod:`taskiq_flow.storage.kit.redis`: one server, a Sentinel service or a Redis Cluster.

On a Cluster each record is one key, so nothing needs a hash tag: the batch forms split
their keys by slot (one command per slot, in one cluster pipeline: a round trip per
node), each slot's part atomic; listing and ``cleanup`` scan every primary.
"""

from __future__ import annotations

import struct
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any, ClassVar

from taskiq_flow.storage.base import BaseStorageAdapter, RawEntry
from taskiq_flow.storage.codec import decode, encode
from taskiq_flow.storage.errors import (
    InvalidStorageURLError,
    StorageConfigError,
    StorageConnectionError,
    StorageCorruptError,
    StorageError,
)
from taskiq_flow.storage.glob import escape_glob
from taskiq_flow.storage.kit.checks import check_key, check_keys, check_pattern, check_ttl
from taskiq_flow.storage.kit.cluster import by_slot
from taskiq_flow.storage.kit.redis import (
    AnyRedis,
    RedisBacked,
    RedisCluster,
    RedisConnection,
    RedisErrors,
)

__all__ = ["RedisStorageAdapter"]

_HEADER = struct.Struct(">Bdd")
_HEADER_SIZE = _HEADER.size
_VERSION = 1
_BATCH = 1000  # keys per command inside one pipeline, and the SCAN COUNT hint

# Deletes, atomically per SCAN batch, the entries created at or before ARGV[1] or
# expired at ARGV[2] (by the writers' clock); skips keys this package did not write.
_CLEANUP_LUA = """
local removed = 0
local born_before = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
for _, key in ipairs(KEYS) do
  local head = redis.pcall('GETRANGE', key, 0, 16)
  if type(head) == 'string' and #head == 17 and string.byte(head, 1) == 1 then
    local created, expires = struct.unpack('>dd', string.sub(head, 2))
    if created <= born_before or (expires > 0 and expires <= now) then
      redis.call('DEL', key)
      removed = removed + 1
    end
  end
end
return removed
"""

# SET ... PX for every key in one command: redis-py spends far more per pipelined command
# than Redis spends per SET, so one script call beats a pipeline of SETs several times.
_SET_MANY_LUA = """
local px = ARGV[1]
for i, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[i + 1], 'PX', px)
end
return #KEYS
"""


def _config_error(value: object, reason: str) -> Exception:
    return StorageConfigError(reason)


def _prefix_error(value: object, reason: str) -> Exception:
    return StorageConfigError(f"key_prefix {value!r} cannot prefix keys: {reason}")


def _connection_error(operation: str, detail: str) -> Exception:
    return StorageConnectionError(f"Redis {operation} failed: {detail}")


def _backend_error(operation: str, detail: str) -> Exception:
    return StorageError(f"Redis {operation} failed: {detail}")


STORAGE_REDIS_ERRORS = RedisErrors(
    connection=_connection_error,
    backend=_backend_error,
    url=InvalidStorageURLError,
    config=_config_error,
)
"""How the storage package names Redis failures (for :class:`RedisConnection`)."""


class RedisStorageAdapter(BaseStorageAdapter, RedisBacked):
    """Entries in Redis, as strings under ``key_prefix``, expiring natively.

    The connection (URL parsing, retries, concurrency limit, error mapping) is a
    :class:`~taskiq_flow.storage.kit.redis.RedisConnection`.

    Args:
        redis_url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` or
            ``unix://`` URL; ``redis+cluster://host:port[,host:port...]`` for a Redis
            Cluster; ``redis+sentinel://host:port[,host:port...]/SERVICE[/db]`` for the
            master of a Sentinel service. Give this or ``client``.
        client: An existing ``redis.asyncio.Redis`` or ``RedisCluster``
            (``decode_responses`` must be off). The adapter does not close a client it
            was given.
        ttl_seconds: Default TTL for writes that pass none; ``None`` keeps forever.
        key_prefix: Prepended to every key, so several apps can share a database.
        connect_timeout: Seconds to wait for a TCP connection (URL only).
        socket_timeout: Seconds to wait for a reply (URL only).
        retries: How often a command is retried after a connection error, with a short
            backoff (URL only); small, so that a down server is reported promptly.
        max_connections: Commands the adapter has in flight at most; more concurrent
            calls wait for a free slot.
        coalesce: Send the ``set``/``get``/``exists``/``delete`` commands that concurrent
            tasks issue in the same event-loop turn as one pipeline (one round trip), each
            caller still getting its own reply or error; ``add`` and scripts always go
            alone. See :mod:`taskiq_flow.storage.kit.coalesce`.
        wait_replicas: Confirm every write with ``WAIT`` on this many replicas (one
            server or Sentinel), so a failover loses no acknowledged write; a write
            short of them within ``wait_timeout`` seconds raises
            ``StorageConnectionError``. See docs/reliability.md.
        wait_timeout: Seconds a write waits for its replicas.

    Raises:
        InvalidStorageURLError: the URL cannot be parsed (the message hides any password).
        StorageConfigError: neither or both of ``redis_url`` and ``client``, a client
            that decodes responses, a ``key_prefix`` UTF-8 cannot hold, or a bad option.
    """

    expires_natively: ClassVar[bool] = True

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        client: AnyRedis | None = None,
        ttl_seconds: int | None = None,
        key_prefix: str = "taskiq_flow:",
        connect_timeout: float = 2.0,
        socket_timeout: float = 5.0,
        retries: int = 2,
        max_connections: int = 64,
        coalesce: bool = True,
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
    ) -> None:
        super().__init__(ttl_seconds)
        if not isinstance(key_prefix, str):
            msg = f"key_prefix must be a str, got {type(key_prefix).__name__}"
            raise StorageConfigError(msg)
        if key_prefix:  # "" is a valid prefix (none); otherwise the key rules hold
            check_key(key_prefix, _prefix_error)
        self.key_prefix = key_prefix
        self._match_prefix = escape_glob(key_prefix)
        self._prefix_len = len(key_prefix.encode("utf-8"))
        self._redis = RedisConnection(
            redis_url,
            client=client,
            errors=STORAGE_REDIS_ERRORS,
            connect_timeout=connect_timeout,
            socket_timeout=socket_timeout,
            retries=retries,
            max_connections=max_connections,
            coalesce=coalesce,
            wait_replicas=wait_replicas,
            wait_timeout=wait_timeout,
        )
        self._commands = self._redis.commands
        self._cluster = self._redis.is_cluster
        errors = self._redis.errors
        self._on_set, self._on_add, self._on_get = errors("set"), errors("add"), errors("get")
        self._on_exists, self._on_delete = errors("exists"), errors("delete")
        self._on_get_many, self._on_set_many = errors("get_many"), errors("set_many")
        self._on_delete_many, self._on_cleanup = errors("delete_many"), errors("cleanup")
        self._cleanup_script = self._redis.register_script(_CLEANUP_LUA)
        self._set_many_script = self._redis.register_script(_SET_MANY_LUA)

    def __repr__(self) -> str:
        return (
            f"RedisStorageAdapter({self.location!r}, key_prefix={self.key_prefix!r}, "
            f"ttl_seconds={self.ttl_seconds!r})"
        )

    def _pack(self, key: str, value: Any, ttl: int | None, now: float) -> bytes:
        return _HEADER.pack(_VERSION, now, 0.0 if ttl is None else now + ttl) + encode(key, value)

    @staticmethod
    def _unpack(key: str, data: bytes | str) -> tuple[memoryview, float, float | None]:
        if isinstance(data, str) or len(data) < _HEADER_SIZE or data[0] != _VERSION:
            raise StorageCorruptError(key, "not written by taskiq-flow-storage (bad header)")
        _, created, expires = _HEADER.unpack_from(data)
        return memoryview(data)[_HEADER_SIZE:], created, (expires or None)

    async def set(self, key: str, value: Any, ttl_seconds: int | None = None) -> None:
        """Store ``value`` under ``key`` (``SET`` with ``PX`` when there is a TTL)."""
        check_key(key)
        ttl = self._ttl(ttl_seconds)
        data = self._pack(key, value, ttl, time.time())
        with self._on_set:
            await self._commands.set(
                self.key_prefix + key, data, px=None if ttl is None else ttl * 1000
            )

    async def add(self, key: str, value: Any, ttl_seconds: int | None = None) -> bool:
        """Store only if absent or expired: one ``SET NX PX``, atomic for every client."""
        check_key(key)
        ttl = self._ttl(ttl_seconds)
        data = self._pack(key, value, ttl, time.time())
        with self._on_add:
            done = await self._commands.set(
                self.key_prefix + key, data, nx=True, px=None if ttl is None else ttl * 1000
            )
        return bool(done)

    async def _read(self, key: str) -> RawEntry | None:
        with self._on_get:
            data = await self._commands.get(self.key_prefix + key)
        if data is None:
            return None
        body, created, expires = self._unpack(key, data)
        # Redis expires by its clock; the header makes the edge now >= expires_at exact.
        if expires is not None and time.time() >= expires:
            return None
        return body, created, expires

    async def exists(self, key: str) -> bool:
        """Whether a live entry exists: reads only the header (``GETRANGE``)."""
        check_key(key)
        with self._on_exists:
            head = await self._commands.getrange(self.key_prefix + key, 0, _HEADER_SIZE - 1)
        if not head:
            return False
        expires = self._unpack(key, head)[2]
        return expires is None or time.time() < expires

    async def delete(self, key: str) -> bool:
        """Remove ``key``; whether it was there (``DEL``)."""
        check_key(key)
        with self._on_delete:
            return bool(await self._commands.delete(self.key_prefix + key))

    async def iter_keys(self, pattern: str = "*") -> AsyncIterator[str]:
        """Iterate live keys matching ``pattern`` with ``SCAN MATCH`` (may repeat a key)."""
        check_pattern(pattern)
        if not pattern:
            return
        cut = self._prefix_len
        async for batch in self._redis.scan(self._match_prefix + pattern, _BATCH, "scan"):
            for raw in batch:
                yield raw[cut:].decode("utf-8", "surrogateescape")

    async def get_many(self, keys: Iterable[str], *, type: Any = None) -> dict[str, Any]:
        """Values of the live keys among ``keys``: ``MGET`` batches in one round trip."""
        wanted = list(dict.fromkeys(check_keys(keys)))
        if not wanted:
            return {}
        prefix = self.key_prefix
        with self._on_get_many:
            if isinstance(self._commands, RedisCluster):  # one MGET per slot
                replies = [await self._commands.mget_nonatomic([prefix + k for k in wanted])]
            elif len(wanted) <= _BATCH:
                replies = [await self._commands.mget([prefix + key for key in wanted])]
            else:
                async with self._commands.pipeline(transaction=False) as pipe:
                    for start in range(0, len(wanted), _BATCH):
                        pipe.mget([prefix + key for key in wanted[start : start + _BATCH]])
                    replies = await pipe.execute()
        found: dict[str, Any] = {}
        now = time.time()
        values = (data for reply in replies for data in reply)
        for key, data in zip(wanted, values, strict=True):
            if data is None:
                continue
            body, _, expires = self._unpack(key, data)
            if expires is None or now < expires:
                found[key] = decode(key, body, type)
        return found

    async def set_many(self, items: Mapping[str, Any], ttl_seconds: int | None = None) -> None:
        """Store every item atomically in one round trip (``MSET``, or a ``SET PX`` script)."""
        ttl = self._ttl(ttl_seconds)
        now = time.time()
        prefix = self.key_prefix
        packed = {
            prefix + check_key(key): self._pack(key, value, ttl, now)
            for key, value in items.items()
        }
        if not packed:
            return
        px = None if ttl is None else ttl * 1000
        with self._on_set_many:
            if isinstance(self._commands, RedisCluster):
                await self._set_by_slot(self._commands, packed, px)
                return
            if len(packed) <= _BATCH:
                await self._set_chunk(self._commands, packed, px)
                return
            # Bounded commands, all inside one MULTI: atomic like the single command.
            async with self._commands.pipeline(transaction=True) as pipe:
                pairs = list(packed.items())
                for start in range(0, len(pairs), _BATCH):
                    await self._set_chunk(pipe, dict(pairs[start : start + _BATCH]), px)
                await pipe.execute()

    @staticmethod
    async def _set_by_slot(cluster: RedisCluster, packed: dict[str, bytes], px: int | None) -> None:
        # One MSET (or SET PX script) per slot, atomic each, all in one cluster pipeline.
        async with cluster.pipeline(transaction=False) as pipe:
            for names in by_slot(packed).values():
                for start in range(0, len(names), _BATCH):
                    chunk = names[start : start + _BATCH]
                    if px is None:  # (redis-py blocks pipe.mset on a Cluster: one slot here)
                        pipe.execute_command("MSET", *(x for n in chunk for x in (n, packed[n])))
                    else:
                        values = [packed[name] for name in chunk]
                        pipe.eval(_SET_MANY_LUA, len(chunk), *chunk, px, *values)
            await pipe.execute()

    async def _set_chunk(self, client: Any, chunk: dict[str, bytes], px: int | None) -> None:
        # MSET without a TTL; with one, a script doing SET PX per key (see _SET_MANY_LUA).
        # On a pipeline both calls only queue the command.
        if px is None:
            await client.mset(chunk)
        else:
            await self._set_many_script(keys=list(chunk), args=[px, *chunk.values()], client=client)

    async def delete_many(self, keys: Iterable[str]) -> int:
        """Remove ``keys`` (``DEL`` batches in one round trip); how many were there."""
        wanted = [self.key_prefix + key for key in dict.fromkeys(check_keys(keys))]
        if not wanted:
            return 0
        with self._on_delete_many:
            if self._cluster or len(wanted) <= _BATCH:  # a Cluster splits DEL by slot
                return int(await self._commands.delete(*wanted))
            async with self._commands.pipeline(transaction=False) as pipe:
                for start in range(0, len(wanted), _BATCH):
                    pipe.delete(*wanted[start : start + _BATCH])
                return sum(int(n) for n in await pipe.execute())

    async def cleanup(self, ttl_seconds: int | None = None) -> int:
        """With ``ttl_seconds``, delete entries at least that old; Redis expires the rest.

        Expired entries are already gone (Redis removes them itself), so without
        ``ttl_seconds`` this returns ``0``. With it, a server-side script checks each
        ``SCAN`` batch's headers and deletes atomically, so a value rewritten meanwhile
        is never lost.
        """
        age = check_ttl(ttl_seconds)
        if age is None:
            return 0
        now = time.time()
        args = [repr(now - age), repr(now)]
        removed = 0
        async for batch in self._redis.scan(self._match_prefix + "*", _BATCH, "cleanup"):
            with self._on_cleanup:
                if isinstance(self._commands, RedisCluster):
                    removed += await self._cleanup_by_slot(self._commands, batch, args)
                else:
                    removed += int(await self._cleanup_script(keys=batch, args=args))
        return removed

    @staticmethod
    async def _cleanup_by_slot(cluster: RedisCluster, batch: list[bytes], args: list[str]) -> int:
        async with cluster.pipeline(transaction=False) as pipe:
            for group in by_slot(batch).values():
                pipe.eval(_CLEANUP_LUA, len(group), *group, *args)
            return sum(int(n) for n in await pipe.execute())

    async def close(self) -> None:
        """Close the client if the adapter created it (idempotent; reconnects if used)."""
        await self._redis.close()
