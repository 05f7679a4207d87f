"""The store's two small in-process caches: item names by hash, and document frequencies."""

from __future__ import annotations

import sys
import time

import numpy as np

from service import kernel
from service.core import scoring
from service.kernel import pages


class NameCache:
    """Item hash -> id, for ids Redis returned (a hash names one id, so entries never go
    stale). Only what Redis said goes in: a request's own ids are any strings a client
    invents, and caching them let one client fill the cache and stall every request on its
    eviction. Bounded in bytes by two generations: when the young one holds half the budget it
    becomes the old one and the previous old one is dropped whole, O(1); a hit in the old one
    is promoted. Bytes, not entries: ids are up to 256 characters of any script, so a bound by
    count let learned long ids hold gigabytes."""

    PER_NAME_OVERHEAD = 100
    """A dict entry and an int key, beside the id's own string."""

    def __init__(self, capacity_bytes: int = 256 << 20) -> None:
        self.capacity_bytes = capacity_bytes
        self._young: dict[int, str] = {}
        self._old: dict[int, str] = {}
        self._young_bytes = 0

    def get(self, key: int) -> str | None:
        name = self._young.get(key)
        if name is None:
            name = self._old.get(key)
            if name is not None:
                self.put(key, name)
        return name

    def get_many(self, keys: list[int]) -> list[str | None]:
        """``get`` of each key: the young generation's hits by one C-level pass (an answer
        names twenty items, and a method call per item cost more than the lookups), then
        ``get`` for the rest."""
        found = list(map(self._young.get, keys))
        if None in found:
            get = self.get
            found = [name if name is not None else get(key)
                     for key, name in zip(keys, found, strict=True)]
        return found

    def put(self, key: int, name: str) -> None:
        if self._young_bytes >= self.capacity_bytes // 2:
            self._old = self._young
            self._young = {}
            self._young_bytes = 0
        self._young[key] = name
        # a name the kernel writes into an answer keeps its UTF-8 beside it (at most 4 bytes a
        # character; an ASCII name is its own UTF-8)
        utf8 = 0 if name.isascii() else 4 * len(name) + 1
        self._young_bytes += sys.getsizeof(name) + utf8 + self.PER_NAME_OVERHEAD

    def __len__(self) -> int:
        return len(self._young) + len(self._old)


class FrequencyCache:
    """Item hash -> sessions containing it, for idf weighting: an open-addressing table over
    two numpy arrays, probed by the kernel (a request looks up a few hundred candidates; a
    dict or a bisection costs more than the scoring). Cleared after ``ttl`` seconds: a
    slightly stale frequency is harmless, a missing one costs a round trip."""

    def __init__(self, ttl: float = 300.0, capacity: int = 1 << 12) -> None:
        self.ttl = ttl
        self.initial = capacity
        self.clear()

    def clear(self) -> None:
        self.keys, self.values = self._empty(self.initial)
        self.size = 0
        self.sessions: float | None = None
        self.since = time.monotonic()

    @staticmethod
    def _empty(capacity: int) -> tuple[scoring.U64, scoring.F64]:
        """An empty table (keys 0, values NaN). On huge pages once it spans half of one: a
        request probes a few hundred slots scattered over it."""
        keys, values = np.zeros(capacity, np.uint64), np.full(capacity, np.nan)
        if keys.nbytes + values.nbytes < pages.HUGE_PAGE // 2:
            return keys, values
        keys, values = pages.on_huge_pages((keys, values))
        return keys, values

    def lookup(self, items: scoring.U64) -> tuple[scoring.F64, scoring.U64]:
        """Each item's frequency (0 if unknown) and the unknown items."""
        if self._aged():
            self.clear()
        values, missing = kernel.lookup(self.keys, self.values, items)
        return np.frombuffer(values, np.float64), np.frombuffer(missing, np.uint64)

    def known(self, items: scoring.U64) -> bytes | None:
        """Each item's frequency as the kernel gives them (float64 bytes) when the table holds
        every one and the sessions' count, else None: what a request reads with no round
        trip, the common case, without ``lookup``'s arrays."""
        if not self._ready():
            return None  # ``lookup`` clears a table past its age
        values, missing = kernel.lookup(self.keys, self.values, items)
        return None if missing else values

    def table(self) -> tuple[scoring.U64, scoring.F64, float] | None:
        """The table's two arrays and the sessions' count, for a kernel that looks items up
        itself (``kernel.ranked``), or None when it has no count or is past its age (then
        ``lookup`` clears it)."""
        if not self._ready():
            return None
        assert self.sessions is not None
        return self.keys, self.values, self.sessions

    def _aged(self) -> bool:
        return time.monotonic() - self.since > self.ttl

    def _ready(self) -> bool:
        """The table may answer without Redis: it has the sessions' count and is in age."""
        return self.sessions is not None and not self._aged()

    def add(self, items: scoring.U64, values: scoring.F64) -> None:
        if (self.size + len(items)) * 2 > len(self.keys):  # at most half full: short probes
            old = ~np.isnan(self.values)
            capacity = len(self.keys)
            while (self.size + len(items)) * 2 > capacity:
                capacity *= 2
            keys, vals = self.keys[old], self.values[old]
            self.keys, self.values = self._empty(capacity)
            kernel.insert(self.keys, self.values, keys, vals)
        self.size += kernel.insert(self.keys, self.values,
                                    np.ascontiguousarray(items, np.uint64),
                                    np.ascontiguousarray(values, np.float64))
