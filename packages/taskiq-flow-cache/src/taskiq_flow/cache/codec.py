"""The on-the-wire form of a cache entry: one msgpack array ``[soft_expiry, value]``.

Both adapters store these bytes, so a value is always a copy (mutating the caller's object
later never changes the cache) and every backend agrees on what is encodable: whatever
msgspec's msgpack encoder accepts (builtins, bytes, datetime, UUID, Decimal, enums,
dataclasses, msgspec Structs). ``soft_expiry`` is a Unix timestamp (wall clock, so that
processes agree) after which the entry is *stale*: still served, but due for regeneration.
Hard expiry belongs to the backend (Redis ``PX``, the in-memory adapter's own store).

The format is the cache's own (the storage package's codec stores bare values); both use
one module-level msgspec encoder and decoder each, as msgspec advises.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from taskiq_flow.cache.errors import CacheSerializationError

__all__ = ["CacheEntry", "decode_entry", "encode_entry"]

logger = logging.getLogger("taskiq_flow.cache")


class CacheEntry(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """A decoded cache entry: its value and optional soft expiry (Unix seconds)."""

    soft_expiry: float | None
    value: Any


# Module-level and reused: msgspec's own advice, and the hit path decodes on every call.
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(CacheEntry)


def encode_entry(key: str, value: Any, soft_expiry: float | None = None) -> bytes:
    """Encode ``value`` (with its soft expiry) for storage.

    Raises:
        CacheSerializationError: msgspec cannot encode the value.
    """
    try:
        return _encoder.encode(CacheEntry(soft_expiry, value))
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
        raise CacheSerializationError(key, value, str(exc)) from exc


def decode_entry(key: str, payload: bytes) -> CacheEntry | None:
    """Decode stored bytes; corrupt or foreign bytes are logged and read as a miss."""
    try:
        return _decoder.decode(payload)
    # Invalid UTF-8 inside a str surfaces as UnicodeDecodeError (a ValueError).
    except (msgspec.MsgspecError, ValueError, RecursionError) as exc:
        logger.warning("ignoring corrupt cache entry under key %r: %s", key, exc)
        return None
