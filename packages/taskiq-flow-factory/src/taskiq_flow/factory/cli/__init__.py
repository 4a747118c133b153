"""The ``taskiq-flow`` command: run the demo, inspect the store and the cache.

Every subcommand reads the same configuration as ``StorageAdapterFactory``
(``TASKIQ_FLOW_*`` variables, overridden by flags), with one CLI default: when
neither a storage Redis URL nor a SQLite path is configured, storage is the SQLite
file ``./.taskiq-flow/store.sqlite3``, so that ``demo`` writes where ``storage``
reads.

One module per command (``demo``, ``storage``, ``tasks``, ``schedules``, ``cache``,
``config``), what they share in ``_common`` (and ``_scan``, ``_task_records``), the
parser and ``main`` in ``_app``.
"""

from taskiq_flow.factory.builder import DEFAULT_SQLITE_PATH
from taskiq_flow.factory.cli._app import build_parser, main
from taskiq_flow.factory.cli._common import (
    EXIT_BACKEND_ERROR,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
)

__all__ = [
    "DEFAULT_SQLITE_PATH",
    "EXIT_BACKEND_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "build_parser",
    "main",
]
