"""The index and history blobs a tuning run's holdout reads, as each holdout session would
have found them (``service/offline/holdout.py``): entries older than its start, of sessions
that arrived before it.

Offline tool: the serving path never imports it.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from service.core.layout import ENTRY_BYTES, entries_of


class Timeline:
    """An index or a history blob whose entries older than a moment (``before``) a run asks
    for every prediction of every candidate: the time keys are read once. In a blob whose
    times never decrease (the usual case: entries are appended as they arrive) those entries
    are a prefix, found by bisection; any other blob is masked, not cut, so that the run does
    not depend on a blob being in time order to be honest. Either way the entries keep their
    order.

    An index's entries count, besides, only for sessions that reached the server before the
    holdout session did (``arrivals``: their arrival, ms; a session whose arrival is not kept
    arrived before every kept one). Timestamps are the client's: a burst sent after the
    holdout sessions, backdated, would otherwise be every holdout session's neighbour, and
    reach every arrival slice a promotion must gain in."""

    __slots__ = ("_arrived", "_blob", "_entries", "_in_order", "_memo", "_newest", "_times")

    def __init__(self, blob: bytes | None, dtype: np.dtype[Any],
                 arrivals: Mapping[int, float] | None = None) -> None:
        entries = entries_of(blob, dtype)
        self._blob = blob[:len(entries) * ENTRY_BYTES] if blob else blob
        times = entries["t"].astype(np.int64)
        in_order = bool(np.all(times[1:] >= times[:-1]))
        # a list: bisecting a few entries in Python costs a tenth of a numpy call, and a
        # run asks hundreds of millions of times
        self._in_order: list[int] | None = times.tolist() if in_order else None
        self._arrived: npt.NDArray[np.float64] | None = None
        self._newest: list[float] = []  # the newest arrival among the first n + 1 entries
        if arrivals is not None and len(entries):
            self._arrived = np.array([arrivals.get(s, -math.inf)
                                      for s in entries["s"].tolist()], np.float64)
            self._newest = np.maximum.accumulate(self._arrived).tolist()
        # the entries themselves only where a mask needs them
        keep = self._arrived is not None or not in_order
        self._entries = entries if keep else None
        self._times = times if keep else None
        self._memo: tuple[int, float, bytes] | None = None

    def before(self, start: int, arrival: float = math.inf) -> bytes | None:
        """The entries older than ``start`` (of sessions that arrived before ``arrival``,
        for an index), in the blob's order."""
        if not self._blob:
            return self._blob
        if self._in_order is not None:
            at = len(self._in_order) if self._in_order[-1] < start else \
                bisect.bisect_left(self._in_order, start)
            if at == 0 or self._arrived is None or self._newest[at - 1] < arrival:
                return self._blob if at == len(self._in_order) else \
                    self._blob[:at * ENTRY_BYTES]
        # a mask: kept for the last moment asked (a holdout session's predictions ask for
        # the same one in turn), so that a run pays it once per session and blob
        if self._memo is not None and self._memo[:2] == (start, arrival):
            return self._memo[2]
        assert self._entries is not None and self._times is not None
        keep = self._times < start
        if self._arrived is not None:
            keep &= self._arrived < arrival
        got = self._entries[keep].tobytes()
        self._memo = (start, arrival, got)
        return got
