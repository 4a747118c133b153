"""Connection locations: Redis URLs and SQLite paths, parsed and redacted in one place.

The adapters, the factory's configuration and the CLI all read locations through these
functions, so a URL means the same thing (and hides its password the same way)
wherever it is given. Nothing here needs the redis client.
"""

from __future__ import annotations

import os
import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from taskiq_flow.storage.errors import InvalidStorageURLError

__all__ = [
    "REDIS_URL_FORMS",
    "SQLITE_PATH_FORMS",
    "check_redis_url",
    "redact_url",
    "sqlite_location",
]

REDIS_URL_FORMS = (
    "redis://[[user]:password@]host[:port][/db]",
    "rediss://... (TLS)",
    "unix://[[user]:password@]/path/to/redis.sock[?db=N]",
)
"""The Redis URL forms every adapter accepts, as shown in error messages."""

SQLITE_PATH_FORMS = (
    "a file path (./store.sqlite3)",
    "':memory:'",
    "sqlite:///relative/path.db or sqlite:////absolute/path.db",
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


def _redis_url_problem(url: str) -> str:  # noqa: PLR0911 - one answer per rule
    try:
        parts = urlsplit(url)
        port = parts.port  # parsed lazily: a non-numeric or out-of-range port fails here
    except ValueError as exc:
        return str(exc)
    scheme = parts.scheme.lower()
    db = parts.path.strip("/")
    if scheme not in {"redis", "rediss", "unix"}:
        shown = f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
        return f"{shown}; expected redis://, rediss:// or unix://"
    if scheme == "unix":
        return "" if parts.path else "unix:// needs a socket path (unix:///path/to/redis.sock)"
    if not parts.hostname:
        return "no host"
    if db and not db.isdigit():
        return f"the path must be a database number, not {db!r}"
    if port == 0:
        return "port 0"
    return ""


def check_redis_url(url: object) -> str:
    """Return ``url`` (stripped) if it is a Redis URL the adapters can connect to.

    Raises:
        InvalidStorageURLError: not a ``str``, or not one of :data:`REDIS_URL_FORMS`; the
            message names the redacted URL and what is wrong with it.
    """
    if not isinstance(url, str):
        raise InvalidStorageURLError(redact_url(url), "the Redis URL must be a str")
    url = url.strip()
    problem = _redis_url_problem(url)
    if problem:
        raise InvalidStorageURLError(redact_url(url), problem)
    return url


def sqlite_location(path: object) -> str:
    """The database a SQLite location names: a file path or ``":memory:"``.

    Accepts a path (``str`` or ``os.PathLike``), ``":memory:"``, and ``sqlite:///rel.db``
    / ``sqlite:////abs.db`` / ``sqlite://`` (memory) URLs.

    Raises:
        InvalidStorageURLError: anything else (another scheme, ``sqlite://host/x``, a
            query string, an empty path).
    """
    if isinstance(path, os.PathLike):
        return os.fspath(path)  # type: ignore[no-any-return]
    if not isinstance(path, str):
        raise InvalidStorageURLError(redact_url(path), "a SQLite location is a path or a URL")
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
