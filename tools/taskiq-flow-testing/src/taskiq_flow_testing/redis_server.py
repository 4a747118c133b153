"""A private ``redis-server`` process: started on a free port, killed and restarted at will.

Tests own their server so that they can flush it, kill it for fault runs and never touch
the machine's shared instance on 6379.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from types import TracebackType
from typing import NoReturn
from urllib.parse import quote

import pytest
import redis

ENV_URL = "TASKIQ_FLOW_TEST_REDIS_URL"
ENV_REQUIRE = "TASKIQ_FLOW_REQUIRE_REDIS"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One ``redis-server`` child process with no persistence, on its own port.

    Args:
        port: the port (default: a free one).
        binary: the ``redis-server`` executable (default: found on ``PATH``).
        extra_args: more command-line options, appended last so they override the
            defaults (e.g. ``["--appendonly", "yes", "--appendfsync", "always"]``).
        password: start with ``--requirepass``; ``url`` then carries the password.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        binary: str | None = None,
        extra_args: Sequence[str] = (),
        password: str | None = None,
    ) -> None:
        found = binary or shutil.which("redis-server")
        if found is None:
            msg = "redis-server is not on PATH"
            raise FileNotFoundError(msg)
        self.binary = found
        self.port = port or free_port()
        self._dir = tempfile.mkdtemp(prefix="taskiq-flow-redis-")
        self._proc: subprocess.Popen[bytes] | None = None
        self.extra_args = list(extra_args)
        self.password = password

    @property
    def url(self) -> str:
        """``redis://`` URL of this server (database 0), with the password if any."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the server and wait until it answers PING."""
        if self.running:
            return self
        self._proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._dir,
                "--protected-mode",
                "no",
                "--loglevel",
                "warning",
                *(["--requirepass", self.password] if self.password else []),
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        client = redis.Redis(
            host="127.0.0.1",
            port=self.port,
            password=self.password,
            socket_connect_timeout=0.2,
        )
        try:
            while True:
                try:
                    if client.ping():
                        return self
                except redis.ConnectionError:
                    if self._proc.poll() is not None:
                        msg = f"redis-server exited with {self._proc.returncode}"
                        raise RuntimeError(msg) from None
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL the server (a crash, not a shutdown) and reap it."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait(timeout=10)
        self._proc = None

    def restart(self) -> RedisServer:
        """Kill and start again on the same port (an empty server: nothing persists)."""
        self.kill()
        return self.start()

    def stop(self) -> None:
        """Stop the server and remove its directory."""
        self.kill()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _require() -> bool:
    return os.environ.get(ENV_REQUIRE, "").strip().lower() in {"1", "true", "yes"}


def redis_url_or_skip(reason: str) -> NoReturn:
    """Skip the test with ``reason``, or fail it when Redis is required."""
    if _require():
        pytest.fail(f"{ENV_REQUIRE}=1 but {reason}", pytrace=False)
    pytest.skip(reason)
