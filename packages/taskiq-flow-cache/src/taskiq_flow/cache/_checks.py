"""The cache's argument checks: the storage kit's rules, raising the cache's errors.

Keys and glob patterns follow the storage package's key rules
(:mod:`taskiq_flow.storage.kit.checks`); tags are keys with a length bound, at most
:data:`MAX_TAGS` per entry. Every adapter and the middlewares check their arguments with
these, so they live apart from :class:`~taskiq_flow.cache.base.BaseCacheAdapter` (which
re-exports them: ``from taskiq_flow.cache.base import check_cache_key`` still works).
"""

from __future__ import annotations

from collections.abc import Iterable

from taskiq_flow.cache.errors import CacheKeyError, CacheValueError
from taskiq_flow.storage.kit.checks import check_key, check_pattern, check_seconds, check_ttl

__all__ = [
    "MAX_TAGS",
    "MAX_TAG_LENGTH",
    "check_cache_key",
    "check_cache_pattern",
    "check_cache_seconds",
    "check_cache_tag",
    "check_cache_tags",
    "check_cache_ttl",
]

MAX_TAGS = 32
"""Most tags one call may attach to an entry."""

MAX_TAG_LENGTH = 256
"""Longest tag, in characters."""


def check_cache_key(key: object) -> str:
    """Return ``key`` if it is a usable cache key (the storage package's key rules).

    Raises:
        CacheKeyError: not a ``str``, empty, or not encodable as UTF-8.
    """
    return check_key(key, CacheKeyError)


def check_cache_pattern(pattern: object) -> str:
    """Return ``pattern`` if it is a usable glob pattern (a ``str`` encodable as UTF-8).

    Raises:
        CacheKeyError: anything else.
    """
    return check_pattern(pattern, CacheKeyError)


def check_cache_tag(tag: object) -> str:
    """Return ``tag`` if it is a usable tag: a key of at most ``MAX_TAG_LENGTH`` characters.

    Raises:
        CacheValueError: not a ``str``, empty, too long, or not encodable as UTF-8.
    """
    text = check_key(tag, _tag_error)
    if len(text) > MAX_TAG_LENGTH:
        raise _tag_error(text[:40] + "...", f"longer than {MAX_TAG_LENGTH} characters")
    return text


def check_cache_tags(tags: Iterable[str]) -> tuple[str, ...]:
    """Return ``tags`` checked and without repeats, in order (at most :data:`MAX_TAGS`).

    Raises:
        CacheValueError: a bare ``str`` (not iterated), more than :data:`MAX_TAGS`
            tags, or one bad tag.
    """
    if isinstance(tags, str | bytes):
        raise CacheValueError(f"tags are an iterable of str, not a single {type(tags).__name__}")
    unique: dict[str, None] = {}
    for tag in tags:
        unique[check_cache_tag(tag)] = None
        if len(unique) > MAX_TAGS:
            raise CacheValueError(f"at most {MAX_TAGS} tags per entry")
    return tuple(unique)


def _tag_error(value: object, reason: str) -> Exception:
    return CacheValueError(f"invalid cache tag {value!r}: {reason.replace('keys', 'tags')}")


def check_cache_ttl(ttl: object, name: str = "ttl_seconds") -> int | None:
    """Return ``ttl`` if it is ``None`` or a positive ``int`` (the storage package's rule).

    Raises:
        CacheValueError: zero, negative, a float, a bool or any other type.
    """
    return check_ttl(ttl, name, CacheValueError.about)


def check_cache_seconds(value: object, name: str) -> float:
    """Return ``value`` as a float if it is a positive number of seconds.

    Raises:
        CacheValueError: anything else.
    """
    return check_seconds(value, name, CacheValueError.about)
