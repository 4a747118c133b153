"""Parsers for setting values: each turns a raw value into a typed one or a ``ConfigError``.

Every parser takes the raw value (a string from the environment, or whatever
the caller passed) and ``source``, the name to blame in the error message.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence

from taskiq_flow.config.errors import ConfigError
from taskiq_flow.storage import InvalidStorageURLError
from taskiq_flow.storage.kit import (
    REDIS_URL_FORMS,
    SQLITE_PATH_FORMS,
    check_redis_url,
    redact_url,
    sqlite_location,
)

__all__ = [
    "REDIS_URL_FORMS",
    "SQLITE_PATH_FORMS",
    "TYPE_ALIASES",
    "mask_url",
    "parse_bool",
    "parse_choice",
    "parse_directory",
    "parse_optional_int",
    "parse_positive_int",
    "parse_redis_url",
    "parse_required_int",
    "parse_sqlite_path",
    "parse_text",
]

TYPE_ALIASES = {"memory": "inmemory"}
"""Other names accepted for a backend type (the earlier taskiq-flow's ``"memory"``)."""

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def mask_url(url: str) -> str:
    """Return ``url`` with any password (userinfo or ``?password=``) replaced by ``***``.

    The storage package's :func:`~taskiq_flow.storage.kit.redact_url`, under the name
    this package has always exported.
    """
    return redact_url(url)


def _did_you_mean(value: str, allowed: Sequence[str]) -> str:
    close = difflib.get_close_matches(value, allowed, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_choice(raw: object, source: str, allowed: Sequence[str]) -> str:
    """Parse one of ``allowed`` or an alias (case-insensitive, surrounding blanks ignored)."""
    value = raw.strip().lower() if isinstance(raw, str) else raw
    if isinstance(value, str):
        value = TYPE_ALIASES.get(value, value)
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


def parse_optional_int(raw: object, source: str) -> int | None:
    """A whole number > 0, or ``None`` (unset)."""
    return parse_positive_int(raw, source, optional=True)


def parse_required_int(raw: object, source: str) -> int | None:
    """A whole number > 0."""
    return parse_positive_int(raw, source, optional=False)


def parse_directory(raw: object, source: str) -> str | None:
    """A directory path (``str`` or ``os.PathLike``); empty means unset."""
    if isinstance(raw, os.PathLike):
        raw = os.fspath(raw)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if isinstance(raw, str):
        return raw.strip()
    msg = f"{source} must be a directory path, got {type(raw).__name__}"
    raise ConfigError(msg, source=source, allowed=("a directory path",))


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
    """Validate a Redis URL by the adapters' own rule; empty means unset."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    try:
        return check_redis_url(raw)
    except InvalidStorageURLError as exc:
        forms = "; ".join(REDIS_URL_FORMS)
        msg = (
            f"{source}={exc.url!r} is not a Redis URL: {exc.reason}. Accepted forms: {forms}"
            if isinstance(raw, str)
            else f"{source} must be a string URL, got {type(raw).__name__}"
        )
        raise ConfigError(msg, source=source, allowed=REDIS_URL_FORMS) from None


def parse_sqlite_path(raw: object, source: str) -> str | None:
    """Validate a SQLite location by the adapter's own rule; empty means unset.

    Returns the location as given (stripped): the adapter reads it the same way.
    """
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if isinstance(raw, os.PathLike):
        raw = os.fspath(raw)
    if not isinstance(raw, str):
        msg = f"{source} must be a path, got {type(raw).__name__}"
        raise ConfigError(msg, source=source, allowed=SQLITE_PATH_FORMS)
    value = raw.strip()
    try:
        sqlite_location(value)
    except InvalidStorageURLError as exc:
        forms = "; ".join(SQLITE_PATH_FORMS)
        msg = (
            f"{source}={exc.url!r} is not a SQLite location: {exc.reason}. Accepted forms: {forms}"
        )
        raise ConfigError(msg, source=source, allowed=SQLITE_PATH_FORMS) from None
    return value
