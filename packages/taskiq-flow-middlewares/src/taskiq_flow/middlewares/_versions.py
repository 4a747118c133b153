"""Key versions: the ``cache_version`` label and ``key_version="source"``.

A version changes a call's key without changing its arguments: entries written under
another version are never read (they expire). The label ``cache_version`` is yours to
bump; ``CacheMiddleware(key_version="source")`` derives one per task from its code with
:func:`source_version`: the same on every process and after every restart for the same
code (a BLAKE2b digest, never ``hash()`` or ``id()``), and different when the code
changes, as the user sees it:

- the bytecode, constants and names of the function and of every function, lambda and
  comprehension nested in it;
- its default arguments (positional and keyword-only);
- the values captured by its closures (a constant you close over, a helper function —
  digested the same way, to a bounded depth).

Values are digested by their msgpack encoding (deterministic: dicts by key); a class by
its module and qualified name; anything else msgspec cannot encode by its type's name
only. Line numbers do not count (moving a function does not change its version); the
values of globals it reads do not count either (only their names). Bytecode differs
between Python versions: a new Python gives new keys.
"""

from __future__ import annotations

import functools
import types
from hashlib import blake2b
from typing import Any

import msgspec

__all__ = ["MAX_VERSION_LENGTH", "call_version", "source_version"]

MAX_VERSION_LENGTH = 256
"""Longest ``cache_version`` label, in characters: a version names a release, not data."""

_PERSON = b"taskiq-flow-src1"
_ENCODER = msgspec.msgpack.Encoder(order="deterministic")
_MAX_DEPTH = 8


def _value(digest: Any, value: Any, depth: int, seen: set[int]) -> None:
    if isinstance(value, types.CodeType):
        _code(digest, value, depth, seen)
    elif isinstance(value, types.FunctionType):
        digest.update(b"F")
        if depth < _MAX_DEPTH and id(value) not in seen:
            seen.add(id(value))
            _function(digest, value, depth + 1, seen)
        else:
            digest.update(f"{value.__module__}.{value.__qualname__}".encode())
    elif isinstance(value, type):
        digest.update(f"T{value.__module__}.{value.__qualname__}".encode())
    elif isinstance(value, tuple | frozenset) and any(
        isinstance(item, types.CodeType | types.FunctionType) for item in value
    ):
        digest.update(b"(")
        for item in value:
            _value(digest, item, depth, seen)
        digest.update(b")")
    else:
        try:
            digest.update(b"V" + _ENCODER.encode(value))
        except (TypeError, ValueError, OverflowError):
            kind = type(value)
            digest.update(f"O{kind.__module__}.{kind.__qualname__}".encode())


def _code(digest: Any, code: types.CodeType, depth: int, seen: set[int]) -> None:
    digest.update(b"C" + code.co_code)
    digest.update(_ENCODER.encode([code.co_names, code.co_varnames, code.co_freevars]))
    for const in code.co_consts:
        _value(digest, const, depth, seen)


def _function(digest: Any, func: types.FunctionType, depth: int, seen: set[int]) -> None:
    _code(digest, func.__code__, depth, seen)
    _value(digest, func.__defaults__, depth, seen)
    _value(digest, func.__kwdefaults__, depth, seen)
    for cell in func.__closure__ or ():
        try:
            contents = cell.cell_contents
        except ValueError:  # an empty cell (a name not bound yet)
            digest.update(b"E")
            continue
        _value(digest, contents, depth, seen)


@functools.lru_cache(maxsize=4096)
def source_version(func: Any) -> str:
    """A stable digest of ``func``'s code (see the module docstring); ``""`` if none.

    Cached per function object: a closure's captured values are read once, when the
    task is first seen (the task's code, not its state while running).
    """
    func = getattr(func, "__func__", func)  # a bound method
    if not isinstance(func, types.FunctionType):
        call = getattr(type(func), "__call__", None)  # noqa: B004 - a callable object
        if not isinstance(call, types.FunctionType):
            return ""
        func = call
    digest = blake2b(digest_size=8, person=_PERSON)
    _function(digest, func, 0, {id(func)})
    return "src-" + digest.hexdigest()


def call_version(label: object, source: str | None) -> str | None:
    """The version of one call: its ``cache_version`` label and/or its source version.

    Raises:
        ValueError: the label is longer than :data:`MAX_VERSION_LENGTH` characters.
    """
    text = None if label is None else str(label)
    if text is not None and len(text) > MAX_VERSION_LENGTH:
        msg = f"cache_version is {len(text)} characters long; at most {MAX_VERSION_LENGTH}"
        raise ValueError(msg)
    if not text:
        return source or None
    return text if not source else f"{text}+{source}"
