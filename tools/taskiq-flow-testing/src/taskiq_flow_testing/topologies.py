"""Real Redis topologies from ``redis-server`` on free ports: a Cluster and a Sentinel set.

- :class:`RedisClusterServers` — three primaries (``--cluster-enabled yes``) joined by
  ``redis-cli --cluster create ... --cluster-yes``; :attr:`~RedisClusterServers.url` is a
  ``redis+cluster://`` URL naming every node as a seed.
- :class:`SentinelServers` — a master, one replica and three sentinels (quorum 2, a
  master is down after 1 s); :attr:`~SentinelServers.url` is
  ``redis+sentinel://s1,s2,s3/SERVICE``. :meth:`~SentinelServers.kill_master` and
  :meth:`~SentinelServers.wait_failover` drive a failover.

Ports stay at or below 55535: a cluster node also listens on its port + 10000 (the
cluster bus). Every process is started in its own session and SIGKILLed at the end.
"""

from __future__ import annotations

import functools
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self, cast

import redis

from taskiq_flow_testing.redis_server import RedisServer

MAX_PORT = 55535
SERVICE = "taskiq-flow-master"


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_low_port(*, bus: bool = False, taken: set[int] | None = None) -> int:
    """A free TCP port in 20000-55535 (with ``bus``, its +10000 neighbour free too)."""
    taken = taken if taken is not None else set()
    for _ in range(1000):
        port = random.randint(20000, MAX_PORT)  # noqa: S311 - not for security
        if port in taken or (bus and port + 10000 in taken):
            continue
        if _port_free(port) and (not bus or _port_free(port + 10000)):
            taken.update({port, port + 10000} if bus else {port})
            return port
    msg = "no free port found below 55535"
    raise RuntimeError(msg)


def _wait(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            msg = f"timed out waiting for {what}"
            raise TimeoutError(msg)
        time.sleep(0.05)


class RedisClusterServers:
    """A three-primary Redis Cluster of private ``redis-server`` processes."""

    def __init__(self, primaries: int = 3) -> None:
        taken: set[int] = set()
        self.nodes = [
            RedisServer(
                free_low_port(bus=True, taken=taken),
                extra_args=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "2000",
                    "--cluster-config-file",
                    "nodes.conf",
                ],
            )
            for _ in range(primaries)
        ]

    @property
    def addresses(self) -> list[str]:
        """``127.0.0.1:port`` of every node."""
        return [f"127.0.0.1:{node.port}" for node in self.nodes]

    @property
    def url(self) -> str:
        """``redis+cluster://`` URL listing every node as a seed."""
        return "redis+cluster://" + ",".join(self.addresses)

    def start(self) -> Self:
        """Start the nodes, create the cluster, wait until every node says ``ok``."""
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli")
        if cli is None:
            msg = "redis-cli is not on PATH (needed to create a cluster)"
            raise FileNotFoundError(msg)
        subprocess.run(
            [cli, "--cluster", "create", *self.addresses, "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=60,
        )
        for node in self.nodes:
            with redis.Redis(port=node.port) as client:
                _wait(functools.partial(self._ready, client), 30, f"cluster node {node.port}")
        return self

    def _ready(self, client: redis.Redis) -> bool:
        return bool(
            client.cluster("info")["cluster_state"] == "ok"
            and len(client.cluster("slots")) == len(self.nodes)
        )

    def flush(self) -> None:
        """Empty every primary."""
        for node in self.nodes:
            with redis.Redis(port=node.port) as client:
                client.flushall()

    def count_keys(self) -> list[int]:
        """Keys held by each primary (``DBSIZE``), in node order."""
        counts = []
        for node in self.nodes:
            with redis.Redis(port=node.port) as client:
                counts.append(int(client.dbsize()))
        return counts

    def stop(self) -> None:
        """Kill every node and remove their directories."""
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _Sentinel:
    def __init__(self, port: int, master_port: int) -> None:
        self.port = port
        self.dir = Path(tempfile.mkdtemp(prefix="taskiq-flow-sentinel-"))
        (self.dir / "sentinel.conf").write_text(
            f"port {port}\nbind 127.0.0.1\ndir {self.dir}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {master_port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
            f"sentinel failover-timeout {SERVICE} 3000\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            msg = "redis-server is not on PATH"
            raise FileNotFoundError(msg)
        self.proc = subprocess.Popen(
            [binary, str(self.dir / "sentinel.conf"), "--sentinel", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


class SentinelServers:
    """A master, a replica and three sentinels watching them, on free ports."""

    def __init__(self, *, master_args: tuple[str, ...] = (), await_peers: bool = True) -> None:
        self.await_peers = await_peers
        taken: set[int] = set()
        self.master = RedisServer(free_low_port(taken=taken), extra_args=master_args)
        self.replica = RedisServer(
            free_low_port(taken=taken),
            extra_args=["--replicaof", "127.0.0.1", str(self.master.port), *master_args],
        )
        self.sentinels = [_Sentinel(free_low_port(taken=taken), self.master.port) for _ in range(3)]
        self.service = SERVICE

    @property
    def url(self) -> str:
        """``redis+sentinel://`` URL of the three sentinels and the service."""
        sentinels = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{sentinels}/{self.service}"

    def master_port(self) -> int:
        """The port of the current master, as the first sentinel that answers knows it."""
        for sentinel in self.sentinels:
            try:
                with redis.Redis(port=sentinel.port, socket_timeout=1) as client:
                    _, port = client.sentinel_get_master_addr_by_name(self.service)
                    return int(port)
            except redis.RedisError:
                continue
        msg = "no sentinel answered"
        raise RuntimeError(msg)

    def server(self, port: int) -> RedisServer:
        """The data server on ``port``."""
        return self.master if self.master.port == port else self.replica

    def start(self) -> Self:
        """Start the servers and sentinels; wait until each sentinel sees the whole set.

        Without ``await_peers``, only until each sentinel knows the master and its
        replica: enough to follow the master, not yet to agree on a failover (the
        sentinels find each other within a few seconds more).
        """
        self.master.start()
        self.replica.start()
        with redis.Redis(port=self.replica.port) as replica:
            _wait(lambda: replica.info("replication")["master_link_status"] == "up", 30, "replica")
        for sentinel in self.sentinels:
            sentinel.start()
        for sentinel in self.sentinels:
            with redis.Redis(port=sentinel.port) as client:
                _wait(functools.partial(self._watching, client), 30, f"sentinel {sentinel.port}")
        return self

    def _watching(self, client: redis.Redis) -> bool:
        state = cast("dict[str, Any]", client.sentinel_master(self.service))
        peers = len(self.sentinels) - 1
        return bool(
            state["num-slaves"] >= 1
            and (not self.await_peers or state["num-other-sentinels"] >= peers)
        )

    def flush(self) -> None:
        """Empty the current master (the replica follows)."""
        with redis.Redis(port=self.master_port()) as client:
            client.flushall()
            client.wait(1, 2000)

    def kill_master(self) -> RedisServer:
        """SIGKILL the current master (a crash); return its server, to restart later."""
        server = self.server(self.master_port())
        server.kill()
        return server

    def wait_failover(self, old_port: int, timeout: float = 30) -> int:
        """Until the sentinels name a master other than ``old_port``; its port."""
        _wait(lambda: self.master_port() != old_port, timeout, "the failover")
        return self.master_port()

    def stop(self) -> None:
        """Kill every process and remove their directories."""
        for sentinel in self.sentinels:
            sentinel.stop()
        self.replica.stop()
        self.master.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
