"""Encoding of cache payloads, cache keys and storage records.

Everything goes through msgspec. Objects msgspec does not know natively but taskiq
users return all the time (pydantic models) are lowered with ``model_dump(mode="json")``,
which is also what taskiq's own result serializer does.
"""

from __future__ import annotations

import builtins
import functools
import inspect
import logging
import sys
from collections.abc import Callable
from hashlib import blake2b
from typing import Any

import msgspec
from taskiq.exceptions import TaskiqError
from taskiq_dependencies.dependency import Dependency

from taskiq_flow.middlewares.errors import CachedTaskError, StoredTaskError

logger = logging.getLogger("taskiq_flow.middlewares")

__all__ = [
    "KEY_FORMAT",
    "Binder",
    "CachedValue",
    "ErrorInfo",
    "Unencodable",
    "arguments_json",
    "binder",
    "cache_key_digest",
    "decode_payload",
    "encode_error_payload",
    "encode_value_payload",
    "error_info",
    "rebuild_exception",
    "to_json_text",
]


def _enc_hook(obj: Any) -> Any:
    model_dump = getattr(obj, "model_dump", None)
    if callable(model_dump):
        return model_dump(mode="json")
    msg = f"cannot encode objects of type {type(obj).__qualname__}"
    raise NotImplementedError(msg)


# Deterministic order: dict keys and sets are sorted, so equal arguments give equal bytes.
_KEY_ENCODER = msgspec.msgpack.Encoder(enc_hook=_enc_hook, order="deterministic")
_PAYLOAD_ENCODER = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
_JSON_ENCODER = msgspec.json.Encoder(enc_hook=_enc_hook)
# What msgspec raises for a value it cannot encode; RecursionError for one nested too
# deeply or containing itself (a task returning such a value must not fail for it);
# ValueError covers UnicodeEncodeError, a str holding a lone surrogate ("\udc80").
_ENCODE_ERRORS = (
    TypeError,
    ValueError,
    NotImplementedError,
    OverflowError,
    RecursionError,
    msgspec.EncodeError,
)


KEY_FORMAT = b"taskiq-flow-k2"
"""BLAKE2b personalisation of key digests: a new canonical form gets a new one, so a key
written by one version can never equal a different call's key in another (rolling
deploys share a Redis cache)."""


class Unencodable(Exception):
    """A value msgspec cannot encode; carries the reason."""


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True):
    """An exception as stored: where its class lives, its message and its arguments."""

    module: str
    qualname: str
    message: str
    args: list[Any] = msgspec.field(default_factory=list)
    fields: dict[str, Any] = msgspec.field(default_factory=dict)
    """The declared fields of a templated (taskiq-style, keyword-built) exception."""

    @property
    def type_name(self) -> str:
        """``module.QualName`` of the exception class."""
        return f"{self.module}.{self.qualname}"


class CachedValue(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What the cache holds for one task call: a return value or an error."""

    value: Any = None
    error: ErrorInfo | None = None


_PAYLOAD_DECODER = msgspec.msgpack.Decoder(CachedValue)


def _utf8_text(text: str) -> str:
    """``text``, with what UTF-8 cannot hold (a lone surrogate) as a backslash escape."""
    if text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _error_args(exc: BaseException, message: str) -> list[Any]:
    try:
        _PAYLOAD_ENCODER.encode(list(exc.args))
    except _ENCODE_ERRORS:
        return [message]
    return list(exc.args)


def _error_fields(exc: BaseException) -> dict[str, Any]:
    # taskiq's errors (and ours) are built from keyword fields, not positional args.
    if getattr(exc, "__template__", None) is None or not isinstance(exc, TaskiqError):
        return {}
    fields = dict(vars(exc))
    try:
        _PAYLOAD_ENCODER.encode(fields)
    except _ENCODE_ERRORS:
        return {}
    return fields


def error_info(exc: BaseException) -> ErrorInfo:
    """Describe ``exc`` so that it can be stored and rebuilt later."""
    cls = type(exc)
    # Stored as UTF-8: a message with a lone surrogate is kept with it escaped.
    message = _utf8_text(str(exc))
    return ErrorInfo(
        module=cls.__module__,
        qualname=cls.__qualname__,
        message=message,
        args=_error_args(exc, message),
        fields=_error_fields(exc),
    )


def encode_value_payload(value: Any) -> bytes:
    """Encode a successful return value; raise :class:`Unencodable` if msgspec cannot."""
    try:
        return _PAYLOAD_ENCODER.encode(CachedValue(value=value))
    except _ENCODE_ERRORS as exc:
        raise Unencodable(str(exc)) from exc


def encode_error_payload(exc: BaseException) -> bytes:
    """Encode a task error for ``cache_errors``."""
    return _PAYLOAD_ENCODER.encode(CachedValue(error=error_info(exc)))


def decode_payload(data: Any) -> CachedValue:
    """Decode what :func:`encode_value_payload` wrote; ``ValueError`` if it is not that."""
    if not isinstance(data, bytes):
        msg = f"cache payload is {type(data).__qualname__}, not bytes"
        raise ValueError(msg)
    try:
        return _PAYLOAD_DECODER.decode(data)
    except msgspec.DecodeError as exc:
        raise ValueError(str(exc)) from exc


def rebuild_exception(
    info: ErrorInfo, stand_in: type[StoredTaskError] = CachedTaskError
) -> BaseException:
    """Rebuild a stored exception of the same class, without importing anything.

    Only classes whose module is already imported are looked up (stored data must never
    choose what code gets imported); anything else comes back as ``stand_in``.
    """
    module = sys.modules.get(info.module)
    if info.module == "builtins":
        module = builtins
    target: Any = module
    for part in info.qualname.split("."):
        if target is None or part.startswith("<"):
            target = None
            break
        target = getattr(target, part, None)
    if isinstance(target, type) and issubclass(target, Exception):
        try:
            return target(**info.fields) if info.fields else target(*info.args)
        except Exception:  # a constructor with other needs: fall back below
            logger.debug("cannot rebuild %s from its stored args", info.type_name)
    return stand_in(error_type=info.type_name, error_message=info.message)


def _is_dependency(parameter: inspect.Parameter) -> bool:
    if isinstance(parameter.default, Dependency):
        return True
    metadata = getattr(parameter.annotation, "__metadata__", ())
    return any(isinstance(item, Dependency) for item in metadata)


class Binder:
    """A task signature, prepared once, that turns a call into its canonical arguments."""

    __slots__ = ("defaults", "names", "ordered", "plain", "signature", "simple", "skip")

    def __init__(self, func: Callable[..., Any]) -> None:
        try:
            self.signature: inspect.Signature | None = inspect.signature(func)
        except (TypeError, ValueError):
            self.signature = None
            self.names: tuple[str, ...] = ()
            self.ordered: tuple[str, ...] = ()
            self.defaults: dict[str, Any] = {}
            self.skip: frozenset[str] = frozenset()
            self.simple = False
            self.plain = False
            return
        params = self.signature.parameters
        self.skip = frozenset(name for name, p in params.items() if _is_dependency(p))
        kinds = {p.kind for p in params.values()}
        # The fast path covers plain parameters; *args, **kwargs and positional-only
        # ones go through inspect's full binding.
        self.simple = kinds <= {
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            inspect.Parameter.KEYWORD_ONLY,
        }
        self.names = tuple(
            name for name, p in params.items() if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        )
        # The parameters that make up the key, in signature order.
        self.ordered = tuple(name for name in params if name not in self.skip)
        self.defaults = {
            name: p.default
            for name, p in params.items()
            if p.default is not inspect.Parameter.empty and name not in self.skip
        }
        # Every parameter positional-or-keyword, none injected: a call giving all of them
        # positionally (the usual message) binds with one zip.
        self.plain = self.simple and not self.skip and len(self.names) == len(params)

    def digest(self, args: list[Any], kwargs: dict[str, Any], version: bytes = b"") -> str:
        """Stable digest of one call's arguments (see :func:`cache_key_digest`).

        ``version``: BLAKE2b's key (up to 64 bytes); ``b""``, the default, is no key at
        all, so unversioned digests are those of every earlier release.
        """
        try:
            encoded = _KEY_ENCODER.encode(self.canonical(args, kwargs))
        except _ENCODE_ERRORS as exc:
            raise Unencodable(str(exc)) from exc
        return blake2b(encoded, digest_size=16, person=KEY_FORMAT, key=version).hexdigest()

    def canonical(self, args: list[Any], kwargs: dict[str, Any]) -> Any:
        """One value per call, equal for every way of writing the same call.

        - every key parameter bound: the list of their values in signature order (the
          names are the signature's, so they add nothing);
        - some left unbound (the call itself will fail): a map of name to value;
        - no usable signature, or a call inspect cannot bind: ``{"": [args, kwargs]}``
          (``""`` is never a parameter name, so it cannot equal either form above).
        """
        if self.plain and not kwargs and len(args) == len(self.names):
            return args  # every parameter given positionally, in order: the usual message
        if self.simple and len(args) <= len(self.names):
            bound = dict(zip(self.names, args, strict=False))
            for name, value in kwargs.items():
                if name in bound:
                    return self._slow(args, kwargs)  # given twice: let inspect decide
                bound[name] = value
            for name, default in self.defaults.items():
                bound.setdefault(name, default)
            for name in self.skip:
                bound.pop(name, None)
            return self._form(bound)
        return self._slow(args, kwargs)

    def _form(self, bound: dict[str, Any]) -> Any:
        if len(bound) == len(self.ordered) and all(name in bound for name in self.ordered):
            return [bound[name] for name in self.ordered]
        return bound

    def _slow(self, args: list[Any], kwargs: dict[str, Any]) -> Any:
        if self.signature is None:
            return {"": [args, kwargs]}
        try:
            bound = self.signature.bind_partial(*args, **kwargs)
        except TypeError:
            return {"": [args, kwargs]}
        bound.apply_defaults()
        return self._form(
            {name: value for name, value in bound.arguments.items() if name not in self.skip}
        )


@functools.lru_cache(maxsize=4096)
def binder(func: Callable[..., Any]) -> Binder:
    """The :class:`Binder` of ``func``'s signature (prepared once per function)."""
    return Binder(func)


def cache_key_digest(
    func: Callable[..., Any],
    args: list[Any],
    kwargs: dict[str, Any],
) -> str:
    """Stable digest of one call's arguments: positional or keyword, order-free.

    Arguments are bound to the task's signature (so ``f(1)``, ``f(x=1)`` and
    ``f(1, y=<default>)`` are one call); dependency-injected parameters are left out.

    Raises:
        Unencodable: an argument msgspec cannot encode.
    """
    return binder(func).digest(args, kwargs)


def to_json_text(value: Any) -> str:
    """JSON text of a return value (the record's ``return_value``); :class:`Unencodable` if not."""
    try:
        return _JSON_ENCODER.encode(value).decode()
    except _ENCODE_ERRORS as exc:
        raise Unencodable(str(exc)) from exc


def arguments_json(args: Any, kwargs: Any) -> tuple[str, str]:
    """JSON text of a call's ``args`` and ``kwargs`` (a record's); :class:`Unencodable` if not."""
    try:
        return _JSON_ENCODER.encode(args).decode(), _JSON_ENCODER.encode(kwargs).decode()
    except _ENCODE_ERRORS as exc:
        raise Unencodable(str(exc)) from exc
