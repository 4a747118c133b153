"""Small shared pieces of an adapter's life: ``async with`` closing, lazy package exports."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from types import TracebackType
from typing import Any, Self

__all__ = ["AsyncClosing", "lazy_exports"]


class AsyncClosing:
    """``async with adapter: ...`` closes the adapter on exit (``await self.close()``)."""

    async def close(self) -> None:
        """Release what the object holds; subclasses say what that is."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports each name of ``exports`` on first access.

    For adapters whose driver is optional (or heavy): the import, and a missing extra's
    ``ImportError`` naming it, happen where the adapter is asked for, not at package import.

    Args:
        package: the package's ``__name__`` (for the ``AttributeError`` of other names).
        exports: public name -> the module that defines it.
    """

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            msg = f"module {package!r} has no attribute {name!r}"
            raise AttributeError(msg)
        return getattr(import_module(module), name)

    return __getattr__
