"""A taskiq-redis ``ListQueueBroker`` whose idle workers neither crash nor lose messages.

redis-py 8 gives every connection a 5 s ``socket_timeout`` by default. taskiq-redis's
``ListQueueBroker.listen`` blocks in an unbounded ``BRPOP`` and catches only Python's
builtin ``ConnectionError``, none of redis-py's errors: after 5 s idle the read times
out, the worker process dies and taskiq starts another (seen: every ~6 s), and a message
the server pops just as the client gives up can be lost (a result that never comes).
Passing ``socket_timeout=None`` restores the blocking read the broker was written for.
Every test app and benchmark builds its broker here.
"""

from __future__ import annotations

from typing import Any


def list_queue_broker(url: str, queue_name: str, **options: Any) -> Any:
    """``ListQueueBroker(url, queue_name=...)`` with no socket timeout (see the module doc)."""
    from taskiq_redis import ListQueueBroker  # noqa: PLC0415 - only the apps that use it need it

    options.setdefault("socket_timeout", None)
    return ListQueueBroker(url, queue_name=queue_name, **options)
