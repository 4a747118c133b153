"""Parsers for setting values: each turns a raw value into a typed one or a ``ConfigError``.

Every parser takes the raw value (a string from the environment, or whatever
the caller passed) and ``source``, the name to blame in the error message.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from taskiq_flow.config.errors import ConfigError

REDIS_URL_FORMS = (
    "redis://[[user]:password@]host[:port][/db]",
    "rediss://... (TLS)",
    "unix://[[user]:password@]/path/to/redis.sock[?db=N]",
)
SQLITE_PATH_FORMS = (
    "a file path (./store.sqlite3)",
    "':memory:'",
    "sqlite:///relative/path.db or sqlite:////absolute/path.db",
)
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^@/]*)@")
_SECRET_QUERY_KEYS = frozenset({"password", "pass", "pwd"})


def mask_url(url: str) -> str:
    """Return ``url`` with any password (userinfo or ``?password=``) replaced by ``***``.

    Works on malformed URLs too, so that an error message about a bad URL never
    leaks the secret it contains.
    """

    def _mask_userinfo(match: re.Match[str]) -> str:
        userinfo = match.group("userinfo")
        if ":" in userinfo:
            user = userinfo.split(":", 1)[0]
            return f"{match.group('scheme')}{user}:***@"
        # ``redis://secret@host``: redis-py reads a username, but people put passwords there.
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


def _did_you_mean(value: str, allowed: Sequence[str]) -> str:
    close = difflib.get_close_matches(value, allowed, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_choice(raw: object, source: str, allowed: Sequence[str]) -> str:
    """Parse one of ``allowed`` (case-insensitive, surrounding blanks ignored)."""
    value = raw.strip().lower() if isinstance(raw, str) else raw
    if isinstance(value, str) and value in allowed:
        return value
    shown = ", ".join(repr(a) for a in allowed)
    hint = _did_you_mean(value, allowed) if isinstance(value, str) else ""
    msg = f"{source}={raw!r} is not allowed{hint}; allowed values: {shown}"
    raise ConfigError(msg, source=source, allowed=allowed)


def parse_positive_int(raw: object, source: str, *, optional: bool) -> int | None:
    """Parse a whole number > 0; ``None`` (or an empty variable) only if ``optional``."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        if optional:
            return None
        msg = f"{source} is required: a whole number of seconds greater than 0"
        raise ConfigError(msg, source=source, allowed=("an integer > 0",))
    value: int | None = None
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif isinstance(raw, str):
        try:
            value = int(raw.strip())
        except ValueError:
            value = None
    if value is None or value <= 0:
        what = "a whole number greater than 0"
        if optional:
            what += " (or leave it unset for no limit)"
        msg = f"{source}={raw!r} is not valid: expected {what}"
        raise ConfigError(msg, source=source, allowed=("an integer > 0",))
    return value


def parse_bool(raw: object, source: str) -> bool:
    """Parse ``true/false``, ``1/0``, ``yes/no``, ``on/off`` (case-insensitive) or a bool."""
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        value = raw.strip().lower()
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
    msg = f"{source}={raw!r} is not a boolean; allowed values: true/false, 1/0, yes/no, on/off"
    raise ConfigError(msg, source=source, allowed=("true", "false"))


def parse_text(raw: object, source: str) -> str:
    """Parse a non-empty string (key prefixes)."""
    if isinstance(raw, str) and raw:
        return raw
    msg = f"{source}={raw!r} is not valid: expected a non-empty string"
    raise ConfigError(msg, source=source, allowed=("a non-empty string",))


def parse_redis_url(raw: object, source: str) -> str | None:
    """Validate a Redis URL (``redis://``, ``rediss://``, ``unix://``); empty means unset."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if not isinstance(raw, str):
        msg = f"{source} must be a string URL, got {type(raw).__name__}"
        raise ConfigError(msg, source=source, allowed=REDIS_URL_FORMS)
    url = raw.strip()
    problem = _redis_url_problem(url)
    if problem:
        forms = "; ".join(REDIS_URL_FORMS)
        msg = f"{source}={mask_url(url)!r} is not a Redis URL: {problem}. Accepted forms: {forms}"
        raise ConfigError(msg, source=source, allowed=REDIS_URL_FORMS)
    return url


def _redis_url_problem(url: str) -> str:
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a non-numeric or out-of-range port
    except ValueError as exc:
        return str(exc)
    scheme = parts.scheme.lower()
    db = parts.path.strip("/")
    problem = ""
    if scheme not in {"redis", "rediss", "unix"}:
        shown = f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
        problem = f"{shown}; expected redis://, rediss:// or unix://"
    elif scheme == "unix":
        if not parts.path:
            problem = "unix:// needs a socket path (unix:///path/to/redis.sock)"
    elif not parts.hostname:
        problem = "no host"
    elif db and not db.isdigit():
        problem = f"database {db!r} is not a number"
    elif port == 0:
        problem = "port 0"
    return problem


def parse_sqlite_path(raw: object, source: str) -> str | None:
    """Validate a SQLite location: a file path, ``:memory:`` or a ``sqlite:///`` URL."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if hasattr(raw, "__fspath__"):
        raw = str(raw)
    if not isinstance(raw, str):
        msg = f"{source} must be a path, got {type(raw).__name__}"
        raise ConfigError(msg, source=source, allowed=SQLITE_PATH_FORMS)
    value = raw.strip()
    lowered = value.lower()
    forms = "; ".join(SQLITE_PATH_FORMS)
    if "://" in value and not lowered.startswith("sqlite://"):
        msg = f"{source}={mask_url(value)!r} is not a SQLite location. Accepted forms: {forms}"
        raise ConfigError(msg, source=source, allowed=SQLITE_PATH_FORMS)
    if lowered.startswith("sqlite:") and not lowered.startswith("sqlite:///"):
        msg = (
            f"{source}={value!r} is not a SQLite URL: use three slashes "
            f"(sqlite:///relative.db) or four for an absolute path. Accepted forms: {forms}"
        )
        raise ConfigError(msg, source=source, allowed=SQLITE_PATH_FORMS)
    if lowered.startswith("sqlite:///") and not value[len("sqlite:///") :]:
        msg = f"{source}={value!r} has no database path. Accepted forms: {forms}"
        raise ConfigError(msg, source=source, allowed=SQLITE_PATH_FORMS)
    return value
