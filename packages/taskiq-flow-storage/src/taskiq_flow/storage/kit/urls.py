"""Connection locations: Redis URLs and SQLite paths, parsed and redacted in one place.

The adapters, the factory's configuration and the CLI all read locations through these
functions, so a URL means the same thing (and hides its password the same way)
wherever it is given. Nothing here needs the redis client.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from taskiq_flow.storage.errors import InvalidStorageURLError

__all__ = [
    "REDIS_URL_FORMS",
    "SQLITE_PATH_FORMS",
    "RedisTarget",
    "check_redis_url",
    "parse_redis_url",
    "redact_url",
    "sqlite_location",
]

REDIS_URL_FORMS = (
    "redis://[[user]:password@]host[:port][/db]",
    "rediss://... (TLS)",
    "unix://[[user]:password@]/path/to/redis.sock[?db=N]",
    "redis+cluster://[[user]:password@]host:port[,host:port...] (Redis Cluster seed nodes)",
    "redis+sentinel://[[user]:password@]host:port[,host:port...]/SERVICE[/db]"
    "[?sentinel_password=...] (Sentinel; rediss+cluster://, rediss+sentinel:// for TLS)",
)
"""The Redis URL forms every adapter accepts, as shown in error messages."""

SQLITE_PATH_FORMS = (
    "a file path (./store.sqlite3)",
    "':memory:'",
    "sqlite:///relative/path.db or sqlite:////absolute/path.db",
    "sqlite+aiosqlite:///... (SQLAlchemy's spelling, same meaning)",
)
"""The SQLite locations the SQLite adapter accepts, as shown in error messages."""

_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^@/]*)@")
_SECRET_QUERY_KEYS = frozenset({"password", "pass", "pwd", "sentinel_password"})


def redact_url(url: object) -> str:
    """``url`` with any password (userinfo or ``?password=``) replaced by ``***``.

    Works on malformed URLs too, so that an error about a bad URL never leaks the
    secret it contains. ``redis://secret@host`` is masked whole: redis-py reads a user
    name there, but people put passwords in it.
    """
    if not isinstance(url, str):
        return f"<{type(url).__name__}, not a URL>"

    def _mask_userinfo(match: re.Match[str]) -> str:
        userinfo = match.group("userinfo")
        if ":" in userinfo:
            return f"{match.group('scheme')}{userinfo.split(':', 1)[0]}:***@"
        return f"{match.group('scheme')}***@"

    masked = _USERINFO.sub(_mask_userinfo, url, count=1)
    if "?" in masked:
        try:
            parts = urlsplit(masked)
            query = [
                (k, "***" if k.lower() in _SECRET_QUERY_KEYS else v)
                for k, v in parse_qsl(parts.query, keep_blank_values=True)
            ]
            masked = urlunsplit(parts._replace(query=urlencode(query, safe="*")))
        except ValueError:
            masked = masked.split("?", 1)[0] + "?***"
    return masked


Topology = Literal["server", "cluster", "sentinel"]


@dataclass(frozen=True, repr=False)
class RedisTarget:
    """What a Redis URL names: one server, a Cluster's seed nodes, or a Sentinel service.

    ``url`` is the URL as given (stripped); for ``topology == "server"`` it is what the
    redis client parses. The other fields are filled for cluster and sentinel URLs:
    ``nodes`` the seed (cluster) or sentinel addresses, ``service`` the Sentinel master
    name, ``db`` the database (always 0 on a cluster), ``tls`` for ``rediss+``.
    """

    url: str
    topology: Topology = "server"
    nodes: tuple[tuple[str, int], ...] = ()
    service: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None
    tls: bool = False

    def __repr__(self) -> str:
        return f"RedisTarget({redact_url(self.url)!r}, topology={self.topology!r})"


_MULTI_SCHEMES: dict[str, tuple[Topology, bool, int]] = {
    "redis+cluster": ("cluster", False, 6379),
    "rediss+cluster": ("cluster", True, 6379),
    "redis+sentinel": ("sentinel", False, 26379),
    "rediss+sentinel": ("sentinel", True, 26379),
}


class _Problem(ValueError):
    """What is wrong with a URL (never carries the URL itself)."""


def _server_problem(url: str) -> str:  # noqa: PLR0911 - one answer per rule
    try:
        parts = urlsplit(url)
        port = parts.port  # parsed lazily: a non-numeric or out-of-range port fails here
    except ValueError as exc:
        return str(exc)
    scheme = parts.scheme.lower()
    db = parts.path.strip("/")
    if scheme not in {"redis", "rediss", "unix"}:
        shown = f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
        return (
            f"{shown}; expected redis://, rediss://, unix://, redis+cluster:// or redis+sentinel://"
        )
    if scheme == "unix":
        return "" if parts.path else "unix:// needs a socket path (unix:///path/to/redis.sock)"
    if not parts.hostname:
        return "no host"
    if db and not db.isdigit():
        return f"the path must be a database number, not {db!r}"
    if port == 0:
        return "port 0"
    return ""


def _address(text: str, default_port: int) -> tuple[str, int]:
    if text.startswith("["):  # [IPv6]:port
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise _Problem(f"bad address {text!r}")
        port_text = rest[1:]
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise _Problem(f"no host in {text!r}")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _Problem(f"bad port {port_text!r} in {text!r}")
    return host, int(port_text)


def _multi_node(url: str, scheme: str) -> RedisTarget:
    topology, tls, default_port = _MULTI_SCHEMES[scheme]
    rest = url[len(scheme) + 3 :]
    rest, _, fragment = rest.partition("#")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        # As redis-py reads redis://name@host: a user name (redacted all the same).
        username, password = unquote(user) or None, unquote(secret) if colon else None
    if not hosts:
        raise _Problem("no host")
    nodes = tuple(_address(item.strip(), default_port) for item in hosts.split(","))
    options = dict(parse_qsl(query, keep_blank_values=True))
    sentinel_password = options.pop("sentinel_password", None)
    if options or fragment:
        unknown = ", ".join(sorted(options)) or "#" + fragment
        raise _Problem(f"unsupported option {unknown}")
    segments = [unquote(part) for part in path.split("/")] if path else []
    if topology == "cluster":
        if sentinel_password is not None:
            raise _Problem("sentinel_password is for redis+sentinel:// URLs")
        if any(segments) and segments != ["0"]:
            raise _Problem("a Redis Cluster has only database 0; nothing may follow the hosts")
        return RedisTarget(url, "cluster", nodes, username=username, password=password, tls=tls)
    if not segments or not segments[0]:
        raise _Problem("no service name: redis+sentinel://host:port[,host:port]/SERVICE[/db]")
    db = segments[1] if len(segments) > 1 else "0"
    if len(segments) > 2 or not db.isdigit():
        raise _Problem("after the service name only a database number may follow")
    return RedisTarget(
        url,
        "sentinel",
        nodes,
        service=segments[0],
        db=int(db),
        username=username,
        password=password,
        sentinel_password=sentinel_password,
        tls=tls,
    )


def parse_redis_url(url: object) -> RedisTarget:
    """What ``url`` names: one server, a Cluster's seed nodes or a Sentinel service.

    Raises:
        InvalidStorageURLError: not a ``str``, or not one of :data:`REDIS_URL_FORMS`; the
            message names the redacted URL and what is wrong with it.
    """
    if not isinstance(url, str):
        raise InvalidStorageURLError(redact_url(url), "the Redis URL must be a str")
    url = url.strip()
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme in _MULTI_SCHEMES:
        try:
            return _multi_node(url, scheme)
        except _Problem as exc:
            raise InvalidStorageURLError(redact_url(url), str(exc)) from None
    problem = _server_problem(url)
    if problem:
        raise InvalidStorageURLError(redact_url(url), problem)
    return RedisTarget(url)


def check_redis_url(url: object) -> str:
    """Return ``url`` (stripped) if it is a Redis URL the adapters can connect to.

    Raises:
        InvalidStorageURLError: not a ``str``, or not one of :data:`REDIS_URL_FORMS`; the
            message names the redacted URL and what is wrong with it.
    """
    return parse_redis_url(url).url


def sqlite_location(path: object) -> str:
    """The database a SQLite location names: a file path or ``":memory:"``.

    Accepts a path (``str`` or ``os.PathLike``), ``":memory:"``, and ``sqlite:///rel.db``
    / ``sqlite:////abs.db`` / ``sqlite://`` (memory) URLs, also spelled
    ``sqlite+aiosqlite://...`` as SQLAlchemy users write them.

    Raises:
        InvalidStorageURLError: anything else (another scheme, ``sqlite://host/x``, a
            query string, an empty path).
    """
    if isinstance(path, os.PathLike):
        return os.fspath(path)  # type: ignore[no-any-return]
    if not isinstance(path, str):
        raise InvalidStorageURLError(redact_url(path), "a SQLite location is a path or a URL")
    if path.lower().startswith("sqlite+aiosqlite:"):
        path = "sqlite:" + path[len("sqlite+aiosqlite:") :]
    if path.lower().startswith("sqlite:"):
        if not path.startswith("sqlite://") or (
            path[len("sqlite://") :] and not path.startswith("sqlite:///")
        ):
            reason = "use sqlite:///relative.db, sqlite:////absolute.db or sqlite:///:memory:"
            raise InvalidStorageURLError(redact_url(path), reason)
        if path == "sqlite:///":
            raise InvalidStorageURLError(path, "no database path after sqlite:///")
        rest = path[len("sqlite:///") :]
        if "?" in rest or "#" in rest:
            raise InvalidStorageURLError(redact_url(path), "query strings are not supported")
        return rest or ":memory:"
    if "://" in path:
        raise InvalidStorageURLError(redact_url(path), "not a file path or sqlite:/// URL")
    if not path:
        raise InvalidStorageURLError(path, "empty path (use ':memory:' for a private database)")
    return path
