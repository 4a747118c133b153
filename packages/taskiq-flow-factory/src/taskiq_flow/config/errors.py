"""The error tree of ``taskiq_flow.config`` and ``taskiq_flow.factory``.

``ConfigError`` is the root: catch it to catch every configuration or factory
failure. It is also a ``ValueError``, because a bad setting is a bad value.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["BackendNotInstalledError", "ConfigError"]


class ConfigError(ValueError):
    """A setting is missing, malformed or contradicts another one.

    Attributes:
        source: what the bad value came from: the environment variable
            (``TASKIQ_FLOW_STORAGE_TYPE``) or the argument (``storage_type``).
        allowed: the values or forms that would have been accepted.
    """

    def __init__(self, message: str, *, source: str = "", allowed: Sequence[str] = ()) -> None:
        self.source = source
        self.allowed = tuple(allowed)
        super().__init__(message)


class BackendNotInstalledError(ConfigError, ImportError):
    """The configuration asks for a backend whose optional dependency is not installed."""

    def __init__(self, backend: str, extra: str, *, source: str = "") -> None:
        self.backend = backend
        self.extra = extra
        message = (
            f"{source or 'the configuration'} selects the {backend} backend, but its "
            f"dependency is not installed: pip install {extra!r}"
        )
        super().__init__(message, source=source)
