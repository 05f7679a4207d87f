"""Request-time scoring, free of I/O: session neighbourhoods over the live neighbour index.

Steps 1 and 2 are each fed by one Redis round trip:

1. ``neighbours``: the indexes of the session's most recent items list the sessions that touched
   each item most recently. A candidate session's similarity is the sum of the weights of the
   query items it shares (weights favour recent positions and higher ratings). Of the
   ``sample_sessions`` most recent candidates, the ``neighbours`` most similar are kept.
2. ``score``: every item of a neighbour's history scores the neighbour's similarity. Inside
   each neighbour, the *anchor* is the most recent session item it contains; an item at
   distance d after the anchor earns ``sequence_weight / d`` times more (the sequential,
   next-click signal), one before it ``before_weight / d``.
3. ``apply_idf``: scores are multiplied by ``log(1 + N / df)^idf_weight`` (N sessions, df of
   them contain the item), so that items present in every session do not crowd out specific
   ones.
4. ``add_repeats``: with ``recommend_seen``, the session's own items are boosted by their
   recency (people come back to what they just looked at).

A request touches a few thousand (session, item) pairs in arrays of a few hundred, where the
overhead of a numpy call costs more than its arithmetic. So each stage runs in the compiled
kernel (``service/_kernel.c``, built by ``pip install``). The numpy functions here are its
reference, readable and vectorised: same results in the same summation order. The tests run
every stage both ways, on hand-made and on random cases.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import numpy.typing as npt

from service.model import newest_entries
from service.settings import Settings

try:
    from service import _kernel
except ImportError as exc:  # pragma: no cover - a source checkout that was never installed
    raise ImportError("service._kernel is not built: install the package (pip install -e .), "
                      "which compiles service/_kernel.c with the C compiler") from exc

KERNEL: ModuleType | None = _kernel
"""The compiled stages; tests set it to None to run the numpy reference instead."""

U64 = npt.NDArray[np.uint64]
F64 = npt.NDArray[np.float64]

INDEX_DTYPE = np.dtype([("t", ">i8"), ("s", "<u8")])
HISTORY_DTYPE = np.dtype([("i", "<u8"), ("t", ">i8")])


@dataclass(frozen=True, slots=True)
class Params:
    query_items: int = 20
    sample_sessions: int = 500
    neighbours: int = 200
    sequence_weight: float = 1.5
    before_weight: float = 1.0
    position_decay: float = 2.0
    idf_weight: float = 1.0
    repeat_weight: float = 2.0
    index_cap: int = 500  # an index counts its newest index_cap entries (model.index_limit)

    @classmethod
    def from_settings(cls, s: Settings) -> Params:
        return cls(s.query_items, s.sample_sessions, s.neighbours, s.sequence_weight,
                   s.before_weight, s.position_decay, s.idf_weight, s.repeat_weight,
                   s.index_cap)


@dataclass(frozen=True, slots=True)
class Query:
    """The session as the scorer sees it."""

    items: U64  # the items used to find neighbours, oldest first (distinct)
    weights: F64  # one per item in ``items``
    seen: U64  # every item of the session (excluded unless recommend_seen)

    @property
    def last(self) -> int | None:
        return int(self.items[-1]) if len(self.items) else None


def as_u64(hashes: Sequence[bytes]) -> U64:
    return np.frombuffer(b"".join(hashes), dtype="<u8").astype(np.uint64)


def to_hash(value: int) -> bytes:
    return int(value).to_bytes(8, "little")


def build_query(hashes: Sequence[bytes], timestamps: Sequence[float], ratings: Sequence[float],
                params: Params) -> Query:
    """Order the session by time (stable for equal times) and weight its positions.

    The item at distance d from the end weighs ``(1 + d)^-position_decay``, times its rating
    relative to the session's highest rating (non-positive ratings weigh nothing: no evidence
    of interest).
    """
    if KERNEL is not None:
        items, weights, everything = KERNEL.query(hashes, timestamps, ratings,
                                                  params.query_items, params.position_decay)
        return Query(np.frombuffer(items, np.uint64), np.frombuffer(weights, np.float64),
                     np.frombuffer(everything, np.uint64))
    seen = as_u64(hashes)
    if not len(seen):
        return Query(seen, np.zeros(0), seen)
    order = np.argsort(np.asarray(timestamps, dtype=np.float64), kind="stable")
    order = order[-params.query_items:]
    items = seen[order]
    rates = np.clip(np.asarray(ratings, dtype=np.float64)[order], 0.0, None)
    top = rates.max()
    rates = rates / top if top > 0 else rates
    distance = np.arange(len(items) - 1, -1, -1, dtype=np.float64)
    weights = rates * np.power(1.0 + distance, -params.position_decay)
    keep = weights > 0
    return Query(items[keep], weights[keep], seen)


def neighbours(query: Query, index_blobs: Sequence[bytes | None], params: Params,
               exclude_session: int | None = None) -> tuple[U64, F64]:
    """Neighbour sessions and their similarities, most similar first."""
    if KERNEL is not None:
        sessions, similarity = KERNEL.neighbours(
            query.weights, index_blobs, params.sample_sessions, params.neighbours,
            exclude_session or 0, exclude_session is not None, params.index_cap)
        return np.frombuffer(sessions, np.uint64), np.frombuffer(similarity, np.float64)
    blobs = [newest_entries(b or b"", params.index_cap) for b in index_blobs]
    lengths = np.fromiter(map(len, blobs), dtype=np.int64,
                          count=len(blobs)) // INDEX_DTYPE.itemsize
    if not lengths.sum():
        return np.zeros(0, np.uint64), np.zeros(0)
    data = np.frombuffer(b"".join(blobs), dtype=INDEX_DTYPE)
    weight = np.repeat(query.weights, lengths)
    # group entries by session with one sort; similarity is a bincount (sums in entry order),
    # the latest time a max per group of the sorted entries (np.maximum.at is far slower)
    order = np.argsort(data["s"], kind="stable")
    grouped = data["s"][order]
    new_group = np.concatenate(([True], grouped[1:] != grouped[:-1]))
    starts = np.flatnonzero(new_group)
    sessions = grouped[starts]
    inverse = np.empty(len(order), dtype=np.int64)
    inverse[order] = np.cumsum(new_group) - 1
    similarity = np.bincount(inverse, weights=weight, minlength=len(sessions)).astype(np.float64)
    latest = np.maximum.reduceat(data["t"].astype(np.int64)[order], starts)
    if exclude_session is not None:
        keep = sessions != np.uint64(exclude_session)
        sessions, similarity, latest = sessions[keep], similarity[keep], latest[keep]
    if len(sessions) > params.sample_sessions:  # the most recent (ties: the smaller hash)
        recent = np.lexsort((sessions, -latest))[:params.sample_sessions]
        sessions, similarity, latest = sessions[recent], similarity[recent], latest[recent]
    # most similar first; among equals the most recent, then the smaller hash (deterministic)
    order = np.lexsort((sessions, -latest, -similarity))[:params.neighbours]
    return sessions[order], similarity[order].astype(np.float64)


def score(query: Query, history_blobs: Sequence[bytes | None], similarity: F64,
          params: Params) -> tuple[U64, F64]:
    """Candidate items and their raw scores (the kernel's in the order met, the reference's
    ascending)."""
    if KERNEL is not None:
        items, totals = KERNEL.score(query.items, query.weights, history_blobs, similarity,
                                     params.sequence_weight, params.before_weight)
        return np.frombuffer(items, np.uint64), np.frombuffer(totals, np.float64)
    blobs = [b or b"" for b in history_blobs]
    # one decode of the joined blobs: a frombuffer per neighbour costs more than the arithmetic
    lengths = np.fromiter(map(len, blobs), dtype=np.int64,
                          count=len(blobs)) // HISTORY_DTYPE.itemsize
    if not lengths.sum():
        return np.zeros(0, np.uint64), np.zeros(0)
    items = np.frombuffer(b"".join(blobs), dtype=HISTORY_DTYPE)["i"].astype(np.uint64)
    owner = np.repeat(np.arange(len(blobs)), lengths)
    weight = similarity[owner].astype(np.float64)
    if (params.sequence_weight or params.before_weight) and len(query.items):
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        position = np.arange(len(items)) - starts[owner]
        anchor = _anchors(query, items, owner, position, lengths)[owner]
        distance = position - anchor
        anchored = anchor >= 0  # the neighbour contains a session item
        after = anchored & (distance > 0)
        before = anchored & (distance < 0)
        gap = np.maximum(np.abs(distance), 1)
        weight = weight * (1.0 + np.where(after, params.sequence_weight / gap, 0.0)
                           + np.where(before, params.before_weight / gap, 0.0))
    # an item counts once per neighbour: keep its best-weighted occurrence. Items get dense
    # ids, so (neighbour, item) is one exact int64 key: one sort instead of a 3-key lexsort.
    candidates, item_id = np.unique(items, return_inverse=True)
    pair = owner.astype(np.int64) * len(candidates) + item_id
    order = np.argsort(pair, kind="stable")
    pair = pair[order]
    starts = np.flatnonzero(np.concatenate(([True], pair[1:] != pair[:-1])))
    best = np.maximum.reduceat(weight[order], starts)
    totals = np.bincount(item_id[order[starts]], weights=best, minlength=len(candidates))
    return candidates, totals.astype(np.float64)


def _anchors(query: Query, items: U64, owner: npt.NDArray[np.int64],
             position: npt.NDArray[np.int64], lengths: npt.NDArray[np.int64]
             ) -> npt.NDArray[np.int64]:
    """Per neighbour, the latest position of its highest-weighted session item (-1: none).

    Neighbours' entries are contiguous, so this is a max per segment of the key
    ``rank(weight) * 2^32 + position`` (rank 0: not a session item): no sort needed."""
    order = np.argsort(query.items)
    keys = query.items[order]
    ranks = np.searchsorted(np.unique(query.weights), query.weights[order]) + 1
    at = np.minimum(np.searchsorted(keys, items), len(keys) - 1)
    rank = np.where(keys[at] == items, ranks[at], 0).astype(np.int64)
    key = (rank << 32) | position
    anchors = np.full(len(lengths), -1, dtype=np.int64)
    present = lengths > 0
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))[present]
    best = np.maximum.reduceat(key, starts)
    anchors[present] = np.where(best >> 32 > 0, best & 0xFFFFFFFF, -1)
    return anchors


def rank(candidates: U64, scores: F64, doc_freq: F64, sessions: float, query: Query,
         params: Params, repeats: bool, exclude: U64, k: int) -> tuple[U64, F64]:
    """Steps 3 and 4, then the k best (``candidates`` ascending, ``doc_freq`` one per
    candidate): idf, the session's own items when ``repeats``, minus ``exclude``."""
    if KERNEL is not None:
        items, values = KERNEL.rank(
            candidates, scores, doc_freq, sessions, params.idf_weight, query.items,
            query.weights, params.repeat_weight if repeats else 0.0,
            np.ascontiguousarray(exclude, np.uint64), k)
        return np.frombuffer(items, np.uint64), np.frombuffer(values, np.float64)
    scores = apply_idf(scores, doc_freq, sessions, params)
    if repeats:
        candidates, scores = add_repeats(candidates, scores, query, params)
    return top(candidates, scores, k, exclude)


def apply_idf(scores: F64, doc_freq: F64, sessions: float, params: Params) -> F64:
    if not params.idf_weight:
        return scores
    idf = np.log1p(max(sessions, 1.0) / np.maximum(doc_freq, 1.0))
    return scores * np.power(idf, params.idf_weight)


def add_repeats(candidates: U64, scores: F64, query: Query, params: Params
                ) -> tuple[U64, F64]:
    """Repeat consumption (only used when seen items may be returned): scale neighbourhood
    scores to a best of 1, then add ``repeat_weight`` times each session item's weight."""
    if not params.repeat_weight or not len(query.items):
        return candidates, scores
    best = scores.max() if len(scores) else 0.0
    scaled = scores / best if best > 0 else scores
    items = np.concatenate((candidates, query.items))
    values = np.concatenate((scaled, params.repeat_weight * query.weights))
    merged, inverse = np.unique(items, return_inverse=True)
    return merged, np.bincount(inverse, weights=values, minlength=len(merged)).astype(np.float64)


def top(candidates: U64, scores: F64, k: int, exclude: U64 | None = None) -> tuple[U64, F64]:
    """The k best positive-scoring candidates, best first (ties: smaller hash first)."""
    keep = scores > 0
    if exclude is not None and len(exclude):
        keep &= ~np.isin(candidates, exclude)
    candidates, scores = candidates[keep], scores[keep]
    order = np.lexsort((candidates, -scores))[:k]
    return candidates[order], scores[order]
