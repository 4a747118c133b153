"""``RedisConnection``: the one way taskiq-flow talks to Redis.

Every Redis piece (the storage and cache adapters, and what is built on them) gets its
client here: a URL or an existing client — one server, a Sentinel service's master, or
a Redis Cluster (:mod:`taskiq_flow.storage.kit.clients`) — becomes a connection with

- one URL parser and password redaction (:mod:`taskiq_flow.storage.kit.urls`);
- one retry policy: a command is retried ``retries`` times after a connection error,
  with a short jittered backoff (10-200 ms), so a restarted server is survived and a
  down one reported promptly;
- one concurrency limit: at most ``max_connections`` commands in flight, further
  callers wait for a slot instead of overflowing the pool; blocking commands
  (``BLMOVE``...) have a budget of their own, so waiters never starve the commands
  that would wake them;
- coalescing (auto-pipelining, :mod:`taskiq_flow.storage.kit.coalesce`): the
  :func:`coalescable` commands issued by concurrent tasks in one event-loop turn leave
  as one pipeline (one round trip, one slot), each caller awaiting its own reply or
  error; a lone caller's command is sent as before;
- one error-mapping boundary (:meth:`RedisConnection.errors`, in the spirit of httpx's
  ``map_exceptions``): ``redis.RedisError`` and ``OSError`` become the calling
  package's connection or backend error, raised ``from`` the driver's.

Needs the ``redis`` extra (``pip install 'taskiq-flow-storage[redis]'``; the cache's
``[redis]`` extra brings it too): without it, importing this module — and so either
Redis adapter — raises an ``ImportError`` naming both extras.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import NamedTuple, cast

try:
    from redis import asyncio as aioredis
    from redis.asyncio.cluster import RedisCluster
    from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
    from redis.commands.core import AsyncScript
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import NoScriptError, RedisClusterException, RedisError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError as exc:  # pragma: no cover - exercised in an environment without redis
    msg = (
        "taskiq-flow's Redis adapters need the redis client: pip install "
        "'taskiq-flow-storage[redis]' (storage) or 'taskiq-flow-cache[redis]' (cache)"
    )
    raise ImportError(msg, name=exc.name) from exc

from taskiq_flow.storage.kit.checks import ErrorFactory, check_count, check_seconds
from taskiq_flow.storage.kit.clients import (
    BoundedCluster,
    BoundedRedis,
    NotReplicatedError,
    build_client,
    client_location,
    client_options,
    coalescable,
    declare_repeatable,
    share_cluster,
)
from taskiq_flow.storage.kit.coalesce import Coalescer
from taskiq_flow.storage.kit.urls import RedisTarget, parse_redis_url, redact_url

__all__ = [
    "DRIVER_ERRORS",
    "AnyRedis",
    "NotReplicatedError",
    "RedisBacked",
    "RedisCluster",
    "RedisConnection",
    "RedisErrors",
    "RepeatableScript",
    "aioredis",
    "coalescable",
]

DRIVER_ERRORS = (RedisError, RedisClusterException, OSError)
"""What the redis client raises; :meth:`RedisConnection.errors` maps all of it."""

# Failures of the connection rather than of a command: the calling package's
# connection error. (A Cluster that cannot be reached or is not a Cluster raises
# RedisClusterException; a write short of its replicas, NotReplicatedError.)
_CONNECTION_ERRORS = (
    RedisConnectionError,
    RedisTimeoutError,
    RedisClusterException,
    NotReplicatedError,
    OSError,
)

AnyRedis = aioredis.Redis | RedisCluster
"""A client :class:`RedisConnection` accepts: one server, a Sentinel master, a Cluster."""


class RedisErrors(NamedTuple):
    """How a package names Redis failures: each factory builds that package's error."""

    connection: Callable[[str, str], Exception]
    """``(operation, detail)`` -> the error for an unreachable or broken connection."""
    backend: Callable[[str, str], Exception]
    """``(operation, detail)`` -> the error for a server that answered with an error."""
    url: Callable[[str, str], Exception]
    """``(redacted url, reason)`` -> the error for a URL that cannot be used."""
    config: ErrorFactory
    """``(value, reason)`` -> the error for a bad option (a timeout, a client)."""


class _MapErrors:
    """Context manager mapping driver errors of one operation (a class: no generator frame)."""

    __slots__ = ("connection", "operation")

    def __init__(self, connection: RedisConnection, operation: str) -> None:
        self.connection = connection
        self.operation = operation

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and isinstance(exc, DRIVER_ERRORS):
            raise self.connection.mapped(self.operation, exc) from exc


class RedisConnection:
    """A Redis client with taskiq-flow's retry policy, concurrency limit and error mapping.

    Args:
        redis_url: one server (``redis://[[user]:password@]host[:port][/db]``,
            ``rediss://``, ``unix://``), a Redis Cluster
            (``redis+cluster://[[user]:password@]host:port[,host:port...]``) or a Sentinel
            service (``redis+sentinel://host:port[,host:port...]/SERVICE[/db]``, with
            ``?sentinel_password=`` for sentinels that need one). Give this or ``client``.
        client: an existing ``redis.asyncio.Redis`` (a Sentinel ``master_for`` client too)
            or ``redis.asyncio.RedisCluster``, ``decode_responses`` off; it is used through
            a bounded client sharing its pool (its nodes, for a Cluster), never closed here.
        errors: the calling package's error factories.
        connect_timeout: seconds to wait for a TCP connection (URL only).
        socket_timeout: seconds to wait for a reply (URL only).
        retries: retries of a command after a connection error (URL only).
        max_connections: commands in flight at most (and as many blocked waiters); the
            owned pool holds twice as many connections (per node, on a Cluster). A
            coalesced pipeline counts once.
        coalesce: send the :func:`coalescable` commands of concurrent callers issued in
            one event-loop turn as one pipeline (see :attr:`coalescer`).
        wait_replicas: after every write, ``WAIT`` until this many replicas have it (on
            the write's own connection); fewer within ``wait_timeout`` fail the write
            with the connection error. ``0`` (default): Redis's asynchronous
            replication, a failover may lose the last acknowledged writes. Not on a
            Cluster.
        wait_timeout: seconds ``WAIT`` may block; below ``socket_timeout``.

    Raises:
        errors.url: the URL cannot be used (the message hides any password).
        errors.config: neither or both of ``redis_url`` and ``client``, a client that
            decodes responses, or a bad option.
    """

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        client: AnyRedis | None = None,
        errors: RedisErrors,
        connect_timeout: float = 2.0,
        socket_timeout: float = 5.0,
        retries: int = 2,
        max_connections: int = 64,
        coalesce: bool = True,
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
    ) -> None:
        self._errors = errors
        self._sentinel: Sentinel | None = None
        self.client: AnyRedis
        """The client given, or the connection's own."""
        self.socket_timeout: float | None
        self.topology: str
        """``"server"``, ``"sentinel"`` or ``"cluster"``."""
        max_connections = check_count(max_connections, "max_connections", errors.config)
        connect_timeout = check_seconds(connect_timeout, "connect_timeout", errors.config)
        socket_timeout = check_seconds(socket_timeout, "socket_timeout", errors.config)
        wait_timeout = check_seconds(wait_timeout, "wait_timeout", errors.config)
        if type(retries) is not int or retries < 0:
            raise errors.config(retries, f"retries must be an int >= 0, got {retries!r}")
        if type(wait_replicas) is not int or wait_replicas < 0:
            reason = f"wait_replicas must be an int >= 0, got {wait_replicas!r}"
            raise errors.config(wait_replicas, reason)
        if (redis_url is None) == (client is None):
            raise errors.config(None, "give exactly one of redis_url and client")
        commands: BoundedRedis | BoundedCluster
        if client is not None:
            commands = self._from_client(client)
        else:
            self.location = redact_url(redis_url)
            try:
                target = parse_redis_url(redis_url)
            except ValueError as exc:  # InvalidStorageURLError: re-raised as the caller's
                raise errors.url(self.location, getattr(exc, "reason", str(exc))) from None
            self.topology = target.topology
            commands = self._from_url(
                target, connect_timeout, socket_timeout, retries, max_connections
            )
            self.client = commands
            self.owns_client = True
            self.socket_timeout = socket_timeout
        if wait_replicas:
            self._confirm_writes(commands, wait_replicas, wait_timeout)
        self.wait_replicas = wait_replicas
        commands.slots = asyncio.Semaphore(max_connections)
        commands.wait_slots = asyncio.Semaphore(max_connections)
        self.coalescer = Coalescer(commands.send_one, commands.send_batch)
        """Gathers concurrent callers' commands into pipelines while :attr:`coalesce` is on.

        Its ``batches`` and ``batched_commands`` count the pipelines sent so far.
        """
        commands.coalescer = self.coalescer if coalesce else None
        self._bounded = commands
        self.commands: AnyRedis = commands
        """The client every command goes through (bounded, coalescing; shares ``client``'s
        pool)."""

    def _confirm_writes(
        self, commands: BoundedRedis | BoundedCluster, replicas: int, timeout: float
    ) -> None:
        config = self._errors.config
        if isinstance(commands, BoundedCluster):
            raise config(replicas, "wait_replicas is not supported on a Redis Cluster")
        limit = self.socket_timeout
        if limit is not None and limit > 0 and timeout >= limit:
            raise config(
                timeout, f"wait_timeout ({timeout}) must be below socket_timeout ({limit})"
            )
        commands.wait_replicas = replicas
        commands.wait_ms = max(1, int(timeout * 1000))

    def _from_client(self, client: AnyRedis) -> BoundedRedis | BoundedCluster:
        errors = self._errors
        if not isinstance(client, aioredis.Redis | RedisCluster):
            reason = (
                f"client must be a redis.asyncio.Redis or RedisCluster, got {type(client).__name__}"
            )
            raise errors.config(client, reason)
        kwargs = client_options(client)
        if kwargs.get("decode_responses"):
            reason = "the Redis client must be created with decode_responses=False"
            raise errors.config(client, reason)
        self.client = client
        self.owns_client = False
        self.location = client_location(client)
        given = kwargs.get("socket_timeout")
        self.socket_timeout = given if isinstance(given, int | float) else None
        # The caller's client, pool and retry policy, under our concurrency limit.
        if isinstance(client, RedisCluster):
            self.topology = "cluster"
            return share_cluster(client)
        pool = client.connection_pool
        self.topology = "sentinel" if isinstance(pool, SentinelConnectionPool) else "server"
        return BoundedRedis(connection_pool=pool)

    @property
    def coalesce(self) -> bool:
        """Whether concurrent callers' :func:`coalescable` commands are coalesced (settable)."""
        return self._bounded.coalescer is not None

    @coalesce.setter
    def coalesce(self, on: bool) -> None:
        self._bounded.coalescer = self.coalescer if on else None

    @property
    def is_cluster(self) -> bool:
        """Whether the server is a Redis Cluster (batches split by slot, scans per primary)."""
        return self.topology == "cluster"

    def _from_url(
        self,
        target: RedisTarget,
        connect_timeout: float,
        socket_timeout: float,
        retries: int,
        max_connections: int,
    ) -> BoundedRedis | BoundedCluster:
        try:
            client, self._sentinel = build_client(
                target,
                connect_timeout=connect_timeout,
                socket_timeout=socket_timeout,
                retries=retries,
                max_connections=max_connections,
            )
        except (ValueError, TypeError, RedisClusterException) as exc:
            reason = str(exc)
            for secret in (target.password, target.sentinel_password):
                if secret:
                    reason = reason.replace(secret, "***")
            raise self._errors.url(self.location, reason) from exc
        return client

    def __repr__(self) -> str:
        return f"RedisConnection({self.location!r})"

    def errors(self, operation: str) -> _MapErrors:
        """A reusable context manager mapping driver errors of ``operation``.

        Build it once per operation (it holds no state) and enter it around the calls.
        """
        return _MapErrors(self, operation)

    def mapped(self, operation: str, exc: BaseException) -> Exception:
        """The calling package's error for the driver error ``exc`` (raise it ``from exc``)."""
        detail = f"{type(exc).__name__}: {exc} (at {self.location})"
        if isinstance(exc, _CONNECTION_ERRORS):
            return self._errors.connection(operation, detail)
        return self._errors.backend(operation, detail)

    def register_script(self, script: str) -> AsyncScript:
        """A Lua script run by ``EVALSHA`` (loaded on first use) through :attr:`commands`.

        On a Cluster, every key of one call must be in one hash slot
        (:mod:`taskiq_flow.storage.kit.cluster`).
        """
        return self.commands.register_script(script)

    def repeatable_script(self, script: str) -> RepeatableScript:
        """A Lua script whose ``EVALSHA`` may be coalesced (see :func:`declare_repeatable`).

        Its caller promises that a second run of one call reports what the caller can
        take for the first run's outcome; the reply is returned raw (bytes, int, list).
        """
        return RepeatableScript(self, script)

    async def scan(self, match: str, count: int, operation: str) -> AsyncIterator[list[bytes]]:
        """Batches of key names matching the glob ``match`` (``SCAN``, never ``KEYS``).

        On a Cluster every primary is scanned in turn; a batch holds one node's keys.
        """
        errors = self.errors(operation)
        commands = self.commands
        if not isinstance(commands, RedisCluster):
            cursor = 0
            while True:
                with errors:
                    cursor, batch = await commands.scan(cursor, match=match, count=count)
                if batch:
                    yield cast("list[bytes]", batch)
                if cursor == 0:
                    return
        with errors:
            await commands.initialize()
            primaries = commands.get_primaries()
        for node in primaries:
            cursor = 0
            while True:
                with errors:
                    cursors, batch = await commands.scan(
                        cursor, match=match, count=count, target_nodes=node
                    )
                cursor = next(iter(cursors.values()), 0) if isinstance(cursors, dict) else cursors
                if batch:
                    yield cast("list[bytes]", batch)
                if not cursor:
                    break

    async def close(self) -> None:
        """Close the client if this connection created it (idempotent; mapped errors).

        The connection reconnects if used again.
        """
        if not self.owns_client:
            return
        with self.errors("close"):
            await self.client.aclose()
            if self._sentinel is not None:
                await self._sentinel.aclose()


class RepeatableScript:
    """A repeatable Lua script (:meth:`RedisConnection.repeatable_script`).

    Its ``EVALSHA`` goes through the bounded, coalescing client; ``SCRIPT LOAD`` follows
    when the server lost the script (a restart, a failover).
    """

    __slots__ = ("_connection", "_sha", "_text")

    def __init__(self, connection: RedisConnection, script: str) -> None:
        self._connection = connection
        self._text = script
        self._sha = declare_repeatable(script)

    async def __call__(self, keys: tuple[str, ...], args: tuple[str | int, ...]) -> object:
        """Run the script; driver errors propagate (the caller maps them)."""
        commands = self._connection.commands
        try:
            return await commands.execute_command("EVALSHA", self._sha, len(keys), *keys, *args)
        except NoScriptError:
            # A restarted (or failed-over) server has no scripts: load it, run it again.
            await commands.script_load(self._text)
            return await commands.execute_command("EVALSHA", self._sha, len(keys), *keys, *args)


class RedisBacked:
    """What every adapter over a :class:`RedisConnection` exposes (set ``self._redis``)."""

    _redis: RedisConnection

    @property
    def client(self) -> AnyRedis:
        """The redis client in use (the one given, or the adapter's own)."""
        return self._redis.client

    @property
    def connection(self) -> RedisConnection:
        """The adapter's :class:`RedisConnection` (retries, limits, error mapping)."""
        return self._redis

    @property
    def location(self) -> str:
        """Where the server is, with any password masked (for logs and errors)."""
        return self._redis.location
