"""Unknown ``TASKIQ_FLOW_*`` variables: a typo must not silently mean "the default".

``TASKIQ_FLOW_STORAGE_URL=redis://...`` (for ``..._STORAGE_REDIS_URL``) used to give an
in-memory store without a word. Each variable with the prefix that no setting reads is
logged once per process, with the closest known name; ``TASKIQ_FLOW_STRICT_CONFIG=true``
makes them a ``ConfigError`` instead.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Collection, Mapping
from typing import Final

from taskiq_flow.config._parse import parse_bool
from taskiq_flow.config.errors import ConfigError

__all__ = ["STRICT_VARIABLE", "check_environment", "unknown_variables"]

logger = logging.getLogger("taskiq_flow.config")

STRICT_VARIABLE: Final = "TASKIQ_FLOW_STRICT_CONFIG"
"""``true``: an unknown ``TASKIQ_FLOW_*`` variable is a ``ConfigError``, not a warning."""

# Read by other parts of this repository, not by TaskiqFlowConfig: never "unknown".
_OTHER_VARIABLES: Final = frozenset({STRICT_VARIABLE, "TASKIQ_FLOW_REQUIRE_REDIS"})
_OTHER_PREFIXES: Final = (
    "TASKIQ_FLOW_TEST_",
    "TASKIQ_FLOW_IT_",
    "TASKIQ_FLOW_SOAK_",
    "TASKIQ_FLOW_FAULT_",
)

_warned: set[str] = set()


def unknown_variables(
    env: Mapping[str, str], known: Collection[str], prefix: str
) -> tuple[tuple[str, str | None], ...]:
    """``(variable, closest known variable or None)`` for each unknown ``prefix`` variable."""
    found = []
    for name in sorted(env):
        if not name.startswith(prefix) or name in known or name in _OTHER_VARIABLES:
            continue
        if name.startswith(_OTHER_PREFIXES):
            continue
        found.append((name, _closest(name, known, prefix)))
    return tuple(found)


def _closest(name: str, known: Collection[str], prefix: str) -> str | None:
    """The known variable ``name`` most likely meant, or ``None``.

    A known name holding every word of ``name`` wins first (``STORAGE_URL`` →
    ``STORAGE_REDIS_URL``, ``CACHE_TTL`` → ``CACHE_DEFAULT_TTL``); otherwise the closest
    spelling (difflib), comparing what follows the shared prefix.
    """
    suffix = name[len(prefix) :]
    suffixes = {k[len(prefix) :]: k for k in known if k.startswith(prefix)}
    words = set(suffix.split("_"))
    holding = [s for s in suffixes if words <= set(s.split("_"))]
    pool = holding or list(suffixes)
    close = difflib.get_close_matches(suffix, pool, n=1, cutoff=0.0 if holding else 0.6)
    return suffixes[close[0]] if close else None


def _line(name: str, suggestion: str | None, *, ignored: bool = True) -> str:
    hint = f"did you mean {suggestion}?" if suggestion else "no setting has a similar name"
    return f"{name} is not a taskiq-flow setting{' and is ignored' if ignored else ''} ({hint})"


def check_environment(
    env: Mapping[str, str], known: Collection[str], prefix: str
) -> tuple[tuple[str, str | None], ...]:
    """Report the unknown variables of ``env``: a warning each (once per process), or raise.

    Raises:
        ConfigError: ``TASKIQ_FLOW_STRICT_CONFIG`` is true and a variable is unknown.
    """
    unknown = unknown_variables(env, known, prefix)
    if not unknown:
        return unknown
    strict = env.get(STRICT_VARIABLE, "").strip()
    if strict and parse_bool(strict, STRICT_VARIABLE):
        lines = "; ".join(_line(name, close, ignored=False) for name, close in unknown)
        msg = f"unknown variable(s) with {STRICT_VARIABLE}=true: {lines}"
        raise ConfigError(msg, source=unknown[0][0], allowed=tuple(sorted(known)))
    for name, close in unknown:
        if name not in _warned:
            _warned.add(name)
            logger.warning("taskiq-flow: %s", _line(name, close))
    return unknown
