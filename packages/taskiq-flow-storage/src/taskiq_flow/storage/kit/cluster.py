"""Redis Cluster key rules: which keys share a hash slot, and keys grouped by slot.

A Cluster hashes a key by its *hash tag* — the text between the first ``{`` and the
first ``}`` after it, when that text is not empty — or else by the whole key. A script
or a ``MULTI`` may only touch keys of one slot, so the keys one operation touches
together (a cache entry, its lease and its wake-up list) carry the same tag:

- :func:`hash_tag` builds that tag from the part that identifies the record (the cache
  key): ``{key}`` when the key holds no brace, else ``{<digest>}`` followed by the key,
  so a key containing ``{`` or ``}`` can never decide the slot on its own, and two
  different keys never give the same name;
- :func:`check_tag_prefix` refuses a key prefix holding a ``{``, which would take the
  slot decision away from the tag.

Keys that are touched one at a time (storage records) need no tag; a batch of them is
split by slot instead (:func:`by_slot`), one command per slot. Pure functions: no
client needed.
"""

from __future__ import annotations

import hashlib
from binascii import crc_hqx
from collections.abc import Iterable
from typing import TypeVar

from taskiq_flow.storage.kit.checks import ErrorFactory

__all__ = ["by_slot", "check_tag_prefix", "hash_tag", "slot_of", "untag"]

_SLOTS = 16384
_Name = TypeVar("_Name", str, bytes)


def hash_tag(key: str) -> str:
    """``key`` as the tagged part of a key name: every name built from it shares a slot.

    ``"{" + key + "}"`` when ``key`` holds neither ``{`` nor ``}`` (readable in
    ``redis-cli``); otherwise ``"{" + 16 hex digits of its BLAKE2b + "}" + key``. Put it
    after a prefix without ``{`` (see :func:`check_tag_prefix`) and before anything else
    (``prefix + "lock:" + hash_tag(key)``, ``prefix + "wake:" + hash_tag(key) + ":" +
    token``): Redis then hashes exactly the tag's content. The two forms never collide: a
    plain form has exactly two braces, a digest form at least three.
    """
    if "{" not in key and "}" not in key:
        return "{" + key + "}"
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
    return "{" + digest + "}" + key


def untag(tagged: str) -> str:
    """The key :func:`hash_tag` made ``tagged`` from (for listing keys back).

    Raises:
        ValueError: ``tagged`` is not something :func:`hash_tag` returns.
    """
    end = tagged.find("}")
    if not tagged.startswith("{") or end < 2:
        msg = f"{tagged!r} does not start with a hash tag"
        raise ValueError(msg)
    if end == len(tagged) - 1:
        return tagged[1:-1]
    key = tagged[end + 1 :]
    if hash_tag(key) != tagged:
        msg = f"{tagged!r} is not a tagged key"
        raise ValueError(msg)
    return key


def check_tag_prefix(prefix: str, error: ErrorFactory) -> str:
    """``prefix`` if it cannot take over the hash slot of the names built after it.

    Raises:
        error(prefix, reason): the prefix holds a ``{``; Redis would hash from there
            (or the whole name), and one record's keys could land on different slots.
    """
    if "{" in prefix:
        raise error(prefix, "a '{' in the key prefix would decide the Redis Cluster hash slot")
    return prefix


def slot_of(name: str | bytes) -> int:
    """The Redis Cluster hash slot (0-16383) of the key ``name``."""
    key = name.encode("utf-8", "surrogateescape") if isinstance(name, str) else name
    start = key.find(b"{")
    if start > -1:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return crc_hqx(key, 0) % _SLOTS


def by_slot(names: Iterable[_Name]) -> dict[int, list[_Name]]:
    """``names`` (``str`` or ``bytes``) grouped by hash slot, each group in the given order."""
    groups: dict[int, list[_Name]] = {}
    for name in names:
        groups.setdefault(slot_of(name), []).append(name)
    return groups
