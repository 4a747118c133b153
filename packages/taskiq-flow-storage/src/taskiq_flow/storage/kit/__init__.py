"""The storage package's low-level API: the building blocks every taskiq-flow package uses.

The cache package (and everything above it) builds on these instead of keeping copies,
so a rule is written once and means the same everywhere:

- :mod:`~taskiq_flow.storage.kit.checks` — keys, glob patterns, TTLs, durations and
  counts; each check raises through the caller's own error factory;
- :mod:`~taskiq_flow.storage.kit.urls` — Redis URL parsing (one server, Cluster,
  Sentinel), SQLite locations and password redaction;
- :mod:`~taskiq_flow.storage.kit.cluster` — Redis Cluster key rules: hash tags that keep
  one record's keys in one slot, keys grouped by slot;
- :mod:`~taskiq_flow.storage.kit.memory` — :class:`TTLStore`, the in-process TTL/LRU
  store under both in-memory adapters;
- :mod:`~taskiq_flow.storage.kit.coalesce` — :class:`Coalescer`: the commands concurrent
  callers issue in one event-loop turn leave as one batch, each caller awaiting its own
  reply or error (auto-pipelining, as ioredis and Lettuce do);
- :mod:`~taskiq_flow.storage.kit.redis` — :class:`RedisConnection`: URL or client to a
  bounded, coalescing client with one retry policy and one error-mapping boundary
  (needs the ``redis`` extra; import it from its module, it is not loaded here);
- :func:`taskiq_flow.storage.glob.escape_glob` / ``compile_glob`` — Redis glob rules.

Everything here is public and documented, and changes only with a minor version.
"""

from taskiq_flow.storage.kit.checks import (
    ErrorFactory,
    check_count,
    check_key,
    check_keys,
    check_pattern,
    check_seconds,
    check_timestamp,
    check_ttl,
)
from taskiq_flow.storage.kit.coalesce import Coalescer, Command
from taskiq_flow.storage.kit.memory import Item, TTLStore
from taskiq_flow.storage.kit.urls import (
    REDIS_URL_FORMS,
    SQLITE_PATH_FORMS,
    RedisTarget,
    check_redis_url,
    parse_redis_url,
    redact_url,
    sqlite_location,
)

__all__ = [
    "REDIS_URL_FORMS",
    "SQLITE_PATH_FORMS",
    "Coalescer",
    "Command",
    "ErrorFactory",
    "Item",
    "RedisTarget",
    "TTLStore",
    "check_count",
    "check_key",
    "check_keys",
    "check_pattern",
    "check_redis_url",
    "check_seconds",
    "check_timestamp",
    "check_ttl",
    "parse_redis_url",
    "redact_url",
    "sqlite_location",
]
