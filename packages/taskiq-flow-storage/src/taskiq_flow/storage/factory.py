"""The guide's import path for the factory: ``from taskiq_flow.storage.factory import ...``.

The factory lives in the ``taskiq-flow-factory`` distribution (it depends on taskiq and
on every other member); this module only re-exports it. Importing
``taskiq_flow.storage`` never imports this module, so storage stays free of taskiq.
"""

from __future__ import annotations

try:
    from taskiq_flow.factory import StorageAdapterFactory
except ModuleNotFoundError as exc:
    if exc.name is None or not exc.name.startswith("taskiq_flow.factory"):
        raise
    msg = (
        "StorageAdapterFactory is in the taskiq-flow-factory package: "
        "pip install taskiq-flow-factory (or pip install taskiq-flow)"
    )
    raise ImportError(msg, name=exc.name) from exc

__all__ = ["StorageAdapterFactory"]
