"""The bounded, coalescing clients behind :class:`~taskiq_flow.storage.kit.redis.RedisConnection`.

One behaviour over three topologies:

- :class:`BoundedRedis` — one server, or the current master of a Sentinel service (its
  pool asks the sentinels for the master on every new connection, and drops
  connections to a demoted master, so a failover needs no restart);
- :class:`BoundedCluster` — a Redis Cluster (commands routed by hash slot, ``MOVED``
  followed, the slot map refreshed after a failover).

Both hold the concurrency limit (``slots``; blocking commands on ``wait_slots``) and the
coalescer. :class:`BoundedRedis` may also confirm each write with ``WAIT`` (``wait_replicas``):
a write, a coalesced batch holding one, or a pipeline of the adapter's is followed on
the same connection by ``WAIT n timeout``; fewer acknowledging replicas raise
:class:`NotReplicatedError`, so the caller never takes an unreplicated write for done.

Needs the ``redis`` extra (imported through :mod:`taskiq_flow.storage.kit.redis`).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import Any

from redis import asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import DataError, RedisError

from taskiq_flow.storage.kit.coalesce import Coalescer, Command
from taskiq_flow.storage.kit.urls import RedisTarget

__all__ = [
    "BLOCKING",
    "BoundedCluster",
    "BoundedRedis",
    "NotReplicatedError",
    "build_client",
    "client_location",
    "client_options",
    "coalescable",
    "declare_repeatable",
    "is_write",
    "share_cluster",
]

BLOCKING = frozenset({"BLMOVE", "BLPOP", "BRPOP", "BZPOPMIN", "BZPOPMAX", "XREAD", "WAIT"})
# Commands whose repetition leaves the same state: a coalesced batch holding only these
# may be sent again whole when the connection's retry policy retries it.
_REPEATABLE = frozenset({"GET", "EXISTS", "GETRANGE", "STRLEN", "SET", "DEL", "UNLINK"})
# SHA-1 digests of scripts declared repeatable (declare_repeatable): their EVALSHA may be
# coalesced. A digest names the script's text, so the set is the same for every client.
_REPEATABLE_SCRIPTS: set[str] = set()
# SET options that make its outcome depend on the state it finds: a repeated SET NX
# would report "not written" for its own write. Such a SET is sent alone, as before.
_CONDITIONAL_SET = frozenset({"NX", "XX", "GET"})
# Commands that change nothing: no WAIT after them. Anything else counts as a write.
_READS = frozenset(
    {
        "GET", "MGET", "EXISTS", "GETRANGE", "STRLEN", "SCAN", "TTL", "PTTL", "TYPE",
        "PING", "INFO", "DBSIZE", "LRANGE", "LLEN", "SMEMBERS", "SCARD", "SISMEMBER",
        "HGET", "HGETALL", "HMGET", "ZRANGE", "ZCARD", "ZSCORE", "EVALSHA_RO", "EVAL_RO",
        "SCRIPT LOAD", "SCRIPT EXISTS", "CLIENT SETINFO", "CLUSTER SLOTS", "CLUSTER SHARDS",
        "COMMAND", "ROLE",
    }
)  # fmt: skip


class NotReplicatedError(RedisError):
    """A write the master applied but fewer than ``wait_replicas`` replicas acknowledged.

    Not a ``ConnectionError``: redis-py must not retry it (a repeated ``SET NX`` would
    report its own write as someone else's); the error boundary maps it to the calling
    package's connection error, so a record writer keeps the record and retries it.
    """


def is_write(args: tuple[Any, ...]) -> bool:
    """Whether the command ``args`` may change data (blocking commands excluded)."""
    name = args[0]
    return name not in _READS and name not in BLOCKING


class _Bounded:
    """The concurrency limit and the coalescer, over either client (a mixin)."""

    slots: asyncio.Semaphore
    wait_slots: asyncio.Semaphore
    coalescer: Coalescer | None = None
    wait_replicas: int = 0

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        name = args[0]
        if name in BLOCKING:
            async with self.wait_slots:
                return await super().execute_command(*args, **options)  # type: ignore[misc]
        if self.coalescer is not None and coalescable(args):
            return await self.coalescer.call(args, options)
        return await self.send_one(args, options)

    async def send_one(self, args: tuple[Any, ...], options: dict[str, Any]) -> Any:
        """Send one command the ordinary way (redis-py's retry policy), in a slot."""
        async with self.slots:
            if self.wait_replicas and is_write(args):
                (reply,) = await self._pipelined([(args, options)])
                if isinstance(reply, Exception):
                    raise reply
                return reply
            return await super().execute_command(*args, **options)  # type: ignore[misc]

    async def send_batch(self, commands: Sequence[Command]) -> list[Any]:
        """Send ``commands`` as one pipeline (no MULTI); one reply or error per command.

        redis-py's pipeline retries the whole batch after a connection error, which only
        coalescable commands may undergo.
        """
        try:
            async with self.slots:
                return await self._pipelined(commands)
        except DataError:
            # A command the client cannot encode: the pipeline is packed before anything
            # is sent, so nothing went out. Each alone: only that command's caller fails.
            return [await self._reply_or_error(args, options) for args, options in commands]

    async def _pipelined(self, commands: Sequence[Command]) -> list[Any]:
        pipe = self.pipeline(transaction=False)  # type: ignore[attr-defined]
        for args, options in commands:
            pipe.execute_command(*args, **options)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies

    async def _reply_or_error(self, args: tuple[Any, ...], options: dict[str, Any]) -> Any:
        try:
            return await self.send_one(args, options)
        except (RedisError, OSError) as exc:
            return exc


def coalescable(args: tuple[Any, ...]) -> bool:
    """Whether the command ``args`` may join a coalesced pipeline.

    Single-key reads (``GET``, ``EXISTS``, ``GETRANGE``, ``STRLEN``), a plain ``SET`` (with
    or without expiry) and ``DEL``/``UNLINK``: commands whose repetition leaves the same
    state, so the connection's retry policy may send a failed batch again whole, exactly
    as redis-py sends a single command again. Never: a conditional ``SET`` (``NX``, ``XX``,
    ``GET``: its reply says what it found), scripts, counters, list and stream commands,
    blocking commands, transactions (scripts: unless declared with
    :func:`declare_repeatable`); nor ``MGET`` (``get_many`` is one round trip already,
    and the pipeline's readiness reads keep their timing).
    """
    name = args[0]
    if name not in _REPEATABLE:
        return name == "EVALSHA" and args[1] in _REPEATABLE_SCRIPTS
    return name != "SET" or _CONDITIONAL_SET.isdisjoint(
        arg for arg in args[3:] if isinstance(arg, str)
    )


def declare_repeatable(script: str) -> str:
    """Declare that running ``script`` twice leaves what running it once does; its SHA-1.

    Its ``EVALSHA`` may then join a coalesced pipeline, which the connection's retry
    policy may send again whole after a dropped connection. Declare only a script whose
    second run, seeing the first run's effect, reports an outcome the caller can take
    for the first's (the cache's read-or-acquire: a lease it finds held by its own token
    is its own).
    """
    sha = hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()
    _REPEATABLE_SCRIPTS.add(sha)
    return sha


async def _confirm(connection: Connection, replicas: int, timeout_ms: int) -> None:
    await connection.send_command("WAIT", replicas, timeout_ms)
    acknowledged = int(await connection.read_response())
    if acknowledged < replicas:
        msg = (
            f"the write reached {acknowledged} of the {replicas} replicas asked for "
            f"(wait_replicas) within {timeout_ms} ms; it may be lost in a failover"
        )
        raise NotReplicatedError(msg)


class _ConfirmingPipeline(Pipeline):
    """A pipeline that sends ``WAIT`` on its own connection after any write it held."""

    wait_replicas = 0
    wait_ms = 0

    async def _execute_pipeline(
        self, connection: Connection, commands: Any, raise_on_error: bool
    ) -> Any:
        replies = await super()._execute_pipeline(connection, commands, raise_on_error)
        if any(is_write(command[0]) for command in commands):
            await _confirm(connection, self.wait_replicas, self.wait_ms)
        return replies

    async def _execute_transaction(
        self, connection: Connection, commands: Any, raise_on_error: bool
    ) -> Any:
        replies = await super()._execute_transaction(connection, commands, raise_on_error)
        await _confirm(connection, self.wait_replicas, self.wait_ms)
        return replies


class BoundedRedis(_Bounded, aioredis.Redis):  # type: ignore[misc]
    """One server or a Sentinel master: bounded, coalescing, optionally ``WAIT``-confirmed."""

    wait_ms: int = 0

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        """A pipeline on the client's pool; with ``wait_replicas``, writes are confirmed."""
        if not self.wait_replicas:
            return super().pipeline(transaction, shard_hint)
        pipe = _ConfirmingPipeline(
            self.connection_pool, self.response_callbacks, transaction, shard_hint
        )
        pipe.wait_replicas, pipe.wait_ms = self.wait_replicas, self.wait_ms
        return pipe


class BoundedCluster(_Bounded, RedisCluster):  # type: ignore[misc]
    """A Redis Cluster client, bounded and coalescing.

    A coalesced batch is a cluster pipeline: one round trip per node it touches.
    """

    shared = False
    """A view of a client given by the caller (:func:`share_cluster`): its owner closes it."""

    def __del__(self, *args: Any, **kwargs: Any) -> None:
        if not self.shared:  # redis-py warns about an unclosed client; not ours to close
            super().__del__(*args, **kwargs)


def client_location(client: aioredis.Redis | RedisCluster) -> str:
    """Where ``client`` connects, as a URL without credentials."""
    if isinstance(client, RedisCluster):
        seeds = ",".join(node.name for node in client.nodes_manager.startup_nodes.values())
        return f"redis+cluster://{seeds}"
    pool = client.connection_pool
    kwargs = pool.connection_kwargs
    if isinstance(pool, SentinelConnectionPool):
        manager = pool.sentinel_manager
        sentinels = ",".join(
            "{host}:{port}".format(**each.connection_pool.connection_kwargs)
            for each in manager.sentinels
        )
        return f"redis+sentinel://{sentinels}/{pool.service_name}/{kwargs.get('db', 0)}"
    if "path" in kwargs:
        return f"unix://{kwargs['path']}?db={kwargs.get('db', 0)}"
    host = kwargs.get("host", "localhost")
    return f"redis://{host}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


def client_options(client: aioredis.Redis | RedisCluster) -> dict[str, Any]:
    """The connection options of ``client`` (of its nodes, for a Cluster)."""
    if isinstance(client, RedisCluster):
        return client.get_connection_kwargs()
    return client.connection_pool.connection_kwargs


def share_cluster(client: RedisCluster) -> BoundedCluster:
    """A :class:`BoundedCluster` over ``client``'s nodes, connections and settings."""
    bounded = BoundedCluster.__new__(BoundedCluster)
    for cls in type(client).__mro__:
        for name in getattr(cls, "__slots__", ()):
            if hasattr(client, name):
                object.__setattr__(bounded, name, getattr(client, name))
    bounded.__dict__.update(getattr(client, "__dict__", {}))
    bounded.shared = True
    return bounded


def build_client(
    target: RedisTarget,
    *,
    connect_timeout: float,
    socket_timeout: float,
    retries: int,
    max_connections: int,
) -> tuple[BoundedRedis | BoundedCluster, Sentinel | None]:
    """A client for ``target``, and the :class:`Sentinel` to close with it (or ``None``).

    Its pool holds twice ``max_connections`` per server.

    Raises:
        ValueError, TypeError: options the redis client refuses (the caller maps them).
    """
    retry = Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.2), retries)
    common: dict[str, Any] = {
        "socket_connect_timeout": connect_timeout,
        "socket_timeout": socket_timeout,
        "retry": retry,
        # Headroom above the command slots: blocked waiters and pipelines take
        # connections of their own.
        "max_connections": 2 * max_connections,
    }
    auth: dict[str, Any] = {"username": target.username, "password": target.password}
    if target.topology == "cluster":
        nodes = [ClusterNode(host, port) for host, port in target.nodes]
        cluster = BoundedCluster(startup_nodes=nodes, ssl=target.tls, **auth, **common)
        return cluster, None
    if target.topology == "sentinel":
        sentinel_options = {
            "socket_connect_timeout": connect_timeout,
            "socket_timeout": socket_timeout,
            "password": target.sentinel_password,
        }
        sentinel = Sentinel(list(target.nodes), sentinel_kwargs=sentinel_options)  # type: ignore[no-untyped-call]
        service = str(target.service)
        master = sentinel.master_for(
            service, redis_class=BoundedRedis, db=target.db, ssl=target.tls, **auth, **common
        )
        return master, sentinel
    pool = aioredis.ConnectionPool.from_url(target.url, **common)
    client = BoundedRedis(connection_pool=pool)
    client.auto_close_connection_pool = True  # close() releases the pool too
    return client, None
