"""The value codec: msgpack via msgspec, one module-level encoder and decoder reused.

Untyped decoding returns msgpack's natural types: ``dict``, ``list`` (also for tuples and
sets), ``str`` (also for ``UUID``, ``Decimal``, ``date``, ``time``, ``timedelta`` and naive
``datetime``), ``int``, ``float``, ``bool``, ``None``, ``bytes``, and aware ``datetime`` (in
UTC). Enums decode to their value, dataclasses and Structs to ``dict``. Pass ``type=`` to
get the original type back (msgspec's typed decoding).
"""

from __future__ import annotations

import builtins
from typing import Any

import msgspec

from taskiq_flow.storage.errors import StorageCorruptError, StorageSerializationError

__all__ = ["decode", "encode"]

_ENCODER = msgspec.msgpack.Encoder()
_DECODER: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder()
_TYPED_DECODERS: dict[Any, msgspec.msgpack.Decoder[Any]] = {}
_ENCODE_ERRORS = (TypeError, ValueError, OverflowError, RecursionError, msgspec.MsgspecError)


def encode(key: str, value: Any) -> bytes:
    """Encode ``value`` to msgpack bytes.

    Raises:
        StorageSerializationError: msgspec cannot encode the value; names key and type.
    """
    try:
        return _ENCODER.encode(value)
    except _ENCODE_ERRORS as exc:
        raise StorageSerializationError(key, builtins.type(value), str(exc)) from exc


def _typed_decoder(type: Any) -> msgspec.msgpack.Decoder[Any]:
    try:
        decoder = _TYPED_DECODERS.get(type)
    except TypeError:  # an unhashable type annotation: build one, don't cache
        return msgspec.msgpack.Decoder(type)
    if decoder is None:
        decoder = msgspec.msgpack.Decoder(type)
        _TYPED_DECODERS[type] = decoder
    return decoder


def decode(key: str, data: bytes | memoryview, type: Any = None) -> Any:
    """Decode msgpack ``data`` stored under ``key``, optionally as ``type``.

    Raises:
        StorageCorruptError: the bytes are not valid msgpack.
        StorageSerializationError: valid msgpack that does not match ``type``.
    """
    if type is None:
        try:
            return _DECODER.decode(data)
        except (msgspec.DecodeError, TypeError, ValueError) as exc:
            raise StorageCorruptError(key, str(exc)) from exc
    try:
        decoder = _typed_decoder(type)
    except TypeError as exc:
        raise StorageSerializationError(key, type, f"not a type msgspec can decode: {exc}") from exc
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise StorageSerializationError(key, type, f"stored value does not match: {exc}") from exc
    except (msgspec.DecodeError, TypeError, ValueError) as exc:
        raise StorageCorruptError(key, str(exc)) from exc
