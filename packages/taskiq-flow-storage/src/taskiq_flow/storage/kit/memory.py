"""``TTLStore``: the in-process store under every in-memory adapter (storage and cache).

A dict of encoded entries in least-recently-used order, each with its creation and
expiry time (epoch seconds, wall clock: the same clock Redis and SQLite entries carry,
so every backend agrees on an entry's age), plus a heap of expiries so that entries
nobody reads again do not pile up. Every method completes without suspending, so
concurrent tasks on one event loop never see a half-done operation.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Callable, Iterator

__all__ = ["Item", "TTLStore"]

_heappush = heapq.heappush

Item = tuple[bytes, float, float | None]
"""An entry as held: encoded value, created_at, expires_at (``None``: never)."""


class TTLStore:
    """Entries with per-key expiry and an optional LRU bound.

    Args:
        max_entries: keep at most this many, evicting the least recently used (read or
            written) first; ``None`` for no bound. Checked by the caller.
    """

    __slots__ = ("_data", "_expiries", "max_entries")

    def __init__(self, max_entries: int | None = None) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[str, Item] = OrderedDict()
        # (expires_at, key) of every write with a TTL; may hold outdated pairs, each
        # checked against _data before it removes anything.
        self._expiries: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str, now: float) -> Item | None:
        """The live entry under ``key`` (an expired one is removed and reads as absent)."""
        item = self._data.get(key)
        if item is None:
            return None
        expires = item[2]
        if expires is not None and now >= expires:
            del self._data[key]
            return None
        if self.max_entries is not None:
            self._data.move_to_end(key)  # recency only matters when something is evicted
        return item

    def put(self, key: str, item: Item) -> None:
        """Store ``item`` (its ``created_at`` is taken as now), evicting what must go."""
        data = self._data
        if key in data:
            del data[key]  # re-inserted below: last in recency order
        data[key] = item
        heap = self._expiries
        if item[2] is not None:
            _heappush(heap, (item[2], key))
        # The common write (nothing expired, nothing to evict) stops at these checks.
        # Expired entries go first, so the LRU bound never evicts a live one for them.
        if heap and (heap[0][0] <= item[1] or len(heap) > 2 * len(data) + 64):
            self._sweep(item[1])
        max_entries = self.max_entries
        if max_entries is not None:
            while len(data) > max_entries:
                data.popitem(last=False)

    def pop(self, key: str, now: float) -> bool:
        """Remove ``key``; whether a live entry was there."""
        item = self._data.pop(key, None)
        return item is not None and (item[2] is None or now < item[2])

    def live_keys(self, now: float) -> Iterator[str]:
        """The keys of live entries, over a snapshot of the key set (safe to mutate)."""
        data = self._data
        for key in list(data):
            item = data.get(key)
            if item is not None and (item[2] is None or now < item[2]):
                yield key

    def remove_where(self, doomed: Callable[[Item], bool]) -> int:
        """Remove every entry for which ``doomed(item)`` holds; how many were removed."""
        keys = [key for key, item in self._data.items() if doomed(item)]
        for key in keys:
            del self._data[key]
        return len(keys)

    def clear(self, now: float) -> int:
        """Remove every entry; how many of them were live."""
        live = sum(1 for item in self._data.values() if item[2] is None or now < item[2])
        self._data.clear()
        self._expiries.clear()
        return live

    def _sweep(self, now: float) -> None:
        heap, data = self._expiries, self._data
        while heap and heap[0][0] <= now:
            expires, key = heapq.heappop(heap)
            item = data.get(key)
            if item is not None and item[2] == expires:
                del data[key]
        # Overwritten or deleted keys leave outdated pairs; rebuild before they dominate.
        if len(heap) > 2 * len(data) + 64:
            self._expiries = [(i[2], k) for k, i in data.items() if i[2] is not None]
            heapq.heapify(self._expiries)
