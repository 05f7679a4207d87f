"""The dashboard's time series, free of I/O: per-minute counts and latency histograms that
every process tallies for itself and adds to Redis (``service/store/series.py``), so every
API process shows the same numbers.

A minute's bucket holds plain counters (``requests``, ``events``) and histograms as one
counter per bound (``latency:<n>``, ``freshness:<n>``: observations at or below ``bounds[n]``
and above the bound before); quantiles are read back as a bucket's upper bound, which is what
a histogram can say.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

LATENCY_MS = (0.5, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0,
              10000.0)
FRESHNESS_MS = (5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
                60000.0, 600000.0)
KEEP_MINUTES = 24 * 60
"""A day of minutes (the keys expire an hour after it)."""


def minute_of(now: float) -> int:
    return int(now // 60)


class MinuteTally:
    """One process' counts per minute since its last flush."""

    def __init__(self) -> None:
        self.minutes: dict[int, dict[str, int]] = {}

    def _bucket(self, now: float) -> dict[str, int]:
        minute = minute_of(now)
        counts = self.minutes.get(minute)
        if counts is None:
            counts = self.minutes[minute] = {}
        return counts

    def add(self, now: float, name: str, n: int = 1) -> None:
        counts = self._bucket(now)
        counts[name] = counts.get(name, 0) + n

    def observe(self, now: float, name: str, bounds: Sequence[float], value: float) -> None:
        """One observation into the histogram ``name`` (beyond the last bound: the last)."""
        slot = min(bisect_left(bounds, value), len(bounds) - 1)
        self.add(now, f"{name}:{slot}")

    def observe_many(self, now: float, name: str, bounds: Sequence[float],
                     values: Iterable[float]) -> None:
        """Many observations at once (a worker's batch: one numpy pass, not one per event)."""
        array = np.fromiter(values, dtype=np.float64)
        if not len(array):
            return
        slots = np.minimum(np.searchsorted(np.asarray(bounds), array, side="left"),
                           len(bounds) - 1)
        for slot, count in enumerate(np.bincount(slots, minlength=len(bounds)).tolist()):
            if count:
                self.add(now, f"{name}:{slot}", count)

    def take(self) -> dict[int, dict[str, int]]:
        minutes, self.minutes = self.minutes, {}
        return minutes

    def give_back(self, minutes: Mapping[int, Mapping[str, int]]) -> None:
        """A flush that failed (Redis away): added again at the next one."""
        for minute, counts in minutes.items():
            bucket = self.minutes.setdefault(minute, {})
            for name, n in counts.items():
                bucket[name] = bucket.get(name, 0) + n


def quantile(counts: Mapping[str, int], name: str, bounds: Sequence[float], q: float
             ) -> float | None:
    """The ``q`` quantile of histogram ``name`` in a minute's counts (the upper bound of the
    bucket it falls in); None without observations."""
    histogram = [counts.get(f"{name}:{slot}", 0) for slot in range(len(bounds))]
    total = sum(histogram)
    if not total:
        return None
    rank = q * total
    seen = 0
    for slot, n in enumerate(histogram):
        seen += n
        if seen >= rank:
            return bounds[slot]
    return bounds[-1]


def minute_figures(minute: int, counts: Mapping[str, int]) -> dict[str, float | int | None]:
    """What the dashboard plots for one minute."""
    return {"t": minute * 60,
            "events_per_s": counts.get("events", 0) / 60,
            "requests_per_s": counts.get("requests", 0) / 60,
            "latency_p50_ms": quantile(counts, "latency", LATENCY_MS, 0.5),
            "latency_p99_ms": quantile(counts, "latency", LATENCY_MS, 0.99),
            "freshness_p50_ms": quantile(counts, "freshness", FRESHNESS_MS, 0.5),
            "freshness_p99_ms": quantile(counts, "freshness", FRESHNESS_MS, 0.99)}
