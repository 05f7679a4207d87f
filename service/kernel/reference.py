"""The pure reference of every compiled kernel function: numpy and Python, readable, with the
compiled functions' signatures and results (tests/test_kernel.py holds the two equal on
hand-made and random cases).

It runs when the extension was not built (a machine without a C compiler) or when
``SESSIONREC_KERNEL=reference`` asks for it. The scoring stages are vectorised and sum in the
kernel's order; the tables and the RESP packing (``reference_tables``, ``reference_resp``:
``native/tables.c`` and ``native/resp.c``) are plain loops, correct but much slower per request
than the compiled versions: the price is in the README.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from service.core.layout import ENTRY_BYTES, HASH_BYTES, HISTORY_DTYPE, INDEX_DTYPE, newest_entries
from service.kernel.reference_reorder import checked_pairs, gather, reorder
from service.kernel.reference_rerank import arrange, rows, rows_json
from service.kernel.reference_resp import mget, pack
from service.kernel.reference_sequence import sequence_values
from service.kernel.reference_tables import (
    F64,
    U64,
    Buffer,
    _f64,
    _table_mask,
    _u64,
    first_absent,
    insert,
    lookup,
    objects_get,
    objects_pop,
    objects_put,
    reseed,
    select,
)

__all__ = ["arrange", "candidates", "checked_hashes", "entry_weights", "first_absent", "gather",
           "hashes",
           "insert", "lookup", "mget", "neighbours", "objects_get", "objects_pop", "objects_put",
           "pack", "query", "rank", "ranked", "relative", "reorder", "reseed", "rows",
           "rows_json",
           "score", "select", "sequence_values"]


def _blobs(blobs: Iterable[bytes | None]) -> list[bytes]:
    out = []
    for blob in blobs:
        if blob is not None and not isinstance(blob, bytes):
            raise TypeError("blobs must hold bytes or None")
        out.append(blob or b"")
    return out



# --- scoring stages ------------------------------------------------------------------------

def query(hashes: Sequence[bytes], timestamps: Sequence[float], ratings: Sequence[float],
          query_items: int, position_decay: float) -> tuple[bytes, bytes, bytes]:
    """The session ordered by time (stable), its last ``query_items`` items weighted by
    ``(1 + distance from the end)^-position_decay`` times the rating relative to the highest
    (non-positive ratings weigh nothing) -> (items, weights, every item)."""
    seen = np.frombuffer(b"".join(hashes), dtype="<u8").astype(np.uint64)
    if not len(seen):
        return b"", b"", b""
    order = np.argsort(np.asarray(timestamps, dtype=np.float64), kind="stable")
    order = order[-query_items:] if query_items > 0 else order[:0]
    items = seen[order]
    rates = np.clip(np.asarray(ratings, dtype=np.float64)[order], 0.0, None)
    top = rates.max() if len(rates) else 0.0
    rates = rates / top if top > 0 else rates
    distance = np.arange(len(items) - 1, -1, -1, dtype=np.float64)
    weights = rates * np.power(1.0 + distance, -position_decay)
    keep = weights > 0
    return items[keep].tobytes(), weights[keep].tobytes(), seen.tobytes()


def neighbours(weights: Buffer, index_blobs: Iterable[bytes | None], sample_sessions: int,
               neighbours: int, exclude: int, has_exclude: bool, cap: int,
               half_life: float) -> tuple[bytes, bytes]:
    """Sessions sharing the query's items, most similar first: similarity sums the weights of
    the shared items; of the ``sample_sessions`` most recent, the ``neighbours`` best, each
    similarity first halved per ``half_life`` seconds its latest shared entry is older than
    the newest one's (when positive)."""
    query_weights = _f64(weights)
    blobs = [newest_entries(b, cap) for b in _blobs(index_blobs)]
    lengths = np.fromiter(map(len, blobs), dtype=np.int64, count=len(blobs)) // ENTRY_BYTES
    if not lengths.sum():
        return b"", b""
    data = np.frombuffer(b"".join(blobs), dtype=INDEX_DTYPE)
    weight = np.repeat(query_weights[:len(blobs)], lengths)
    # group entries by session with one sort; similarity is a bincount (sums in entry order),
    # the latest time a max per group of the sorted entries
    order = np.argsort(data["s"], kind="stable")
    grouped = data["s"][order]
    new_group = np.concatenate(([True], grouped[1:] != grouped[:-1]))
    starts = np.flatnonzero(new_group)
    sessions = grouped[starts].astype(np.uint64)
    inverse = np.empty(len(order), dtype=np.int64)
    inverse[order] = np.cumsum(new_group) - 1
    similarity = np.bincount(inverse, weights=weight, minlength=len(sessions)).astype(np.float64)
    latest = np.maximum.reduceat(data["t"].astype(np.int64)[order], starts)
    if has_exclude:
        keep = sessions != np.uint64(exclude)
        sessions, similarity, latest = sessions[keep], similarity[keep], latest[keep]
    if len(sessions) > sample_sessions:  # the most recent (ties: the smaller hash)
        recent = np.lexsort((sessions, -latest))[:max(sample_sessions, 0)]
        sessions, similarity, latest = sessions[recent], similarity[recent], latest[recent]
    if half_life > 0 and len(sessions):
        newest = int(latest.max())
        # math.exp2 per candidate: the C library's exp2, as the compiled kernel calls it
        similarity = similarity * np.array(
            [math.exp2(-(float(newest - t) / 1e6) / half_life) for t in latest.tolist()])
    # most similar first; among equals the most recent, then the smaller hash (deterministic)
    order = np.lexsort((sessions, -latest, -similarity))[:max(neighbours, 0)]
    return sessions[order].tobytes(), similarity[order].astype(np.float64).tobytes()


_neighbours = neighbours  # for candidates(), whose argument of that name shadows it


def score(query_items: Buffer, query_weights: Buffer, history_blobs: Iterable[bytes | None],
          similarity: Buffer, sequence_weight: float, before_weight: float
          ) -> tuple[bytes, bytes, bytes]:
    """Every item of a neighbour's history scores the neighbour's similarity, once per
    neighbour (its best occurrence), times ``1 + sequence_weight / d`` d places after the
    neighbour's anchor (its highest-weighted session item, latest) or ``1 + before_weight / d``
    d places before it -> (candidates ascending, scores, each one's newest time key in the
    histories)."""
    blobs = _blobs(history_blobs)
    items, owner, weight = entry_weights(query_items, query_weights, blobs, similarity,
                                         sequence_weight, before_weight)
    if not len(items):
        return b"", b"", b""
    # an item counts once per neighbour: keep its best-weighted occurrence. Items get dense
    # ids, so (neighbour, item) is one exact int64 key: one sort instead of a 3-key lexsort.
    candidates, item_id = np.unique(items, return_inverse=True)
    pair = owner.astype(np.int64) * len(candidates) + item_id
    order = np.argsort(pair, kind="stable")
    pair = pair[order]
    starts = np.flatnonzero(np.concatenate(([True], pair[1:] != pair[:-1])))
    best = np.maximum.reduceat(weight[order], starts)
    totals = np.bincount(item_id[order[starts]], weights=best, minlength=len(candidates))
    times = np.frombuffer(b"".join(b[:len(b) - len(b) % ENTRY_BYTES] for b in blobs),
                          HISTORY_DTYPE)["t"].astype(np.int64)
    latest = np.full(len(candidates), np.iinfo(np.int64).min, np.int64)
    np.maximum.at(latest, item_id, times)
    return candidates.tobytes(), totals.astype(np.float64).tobytes(), latest.tobytes()



def entry_weights(query_items: Buffer, query_weights: Buffer,
                  history_blobs: Iterable[bytes | None], similarity: Buffer,
                  sequence_weight: float, before_weight: float
                  ) -> tuple[U64, npt.NDArray[np.int64], F64]:
    """``score`` before its sum: every history entry's item, its neighbour (the position in
    ``history_blobs``) and its weight (the explanations split these among session items)."""
    items_q, weights_q, sims = _u64(query_items), _f64(query_weights), _f64(similarity)
    blobs = _blobs(history_blobs)
    lengths = np.fromiter(map(len, blobs), dtype=np.int64, count=len(blobs)) // ENTRY_BYTES
    blobs = [b[:n * ENTRY_BYTES] for b, n in zip(blobs, lengths.tolist(), strict=True)]
    items = np.frombuffer(b"".join(blobs), dtype=HISTORY_DTYPE)["i"].astype(np.uint64)
    owner = np.repeat(np.arange(len(blobs)), lengths)
    weight = sims[owner].astype(np.float64)
    if len(items) and (sequence_weight or before_weight) and len(items_q):
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        position = np.arange(len(items)) - starts[owner]
        anchor = _anchors(items_q, weights_q, items, position, lengths)[owner]
        distance = position - anchor
        anchored = anchor >= 0  # the neighbour contains a session item
        after = anchored & (distance > 0)
        before = anchored & (distance < 0)
        gap = np.maximum(np.abs(distance), 1)
        weight = weight * (1.0 + np.where(after, sequence_weight / gap, 0.0)
                           + np.where(before, before_weight / gap, 0.0))
    return items, owner, weight


def _anchors(query_items: U64, query_weights: F64, items: U64,
             position: npt.NDArray[np.int64], lengths: npt.NDArray[np.int64]
             ) -> npt.NDArray[np.int64]:
    """Per neighbour, the latest position of its highest-weighted session item (-1: none).

    Neighbours' entries are contiguous, so this is a max per segment of the key
    ``rank(weight) * 2^32 + position`` (rank 0: not a session item): no sort needed."""
    order = np.argsort(query_items)
    keys = query_items[order]
    ranks = np.searchsorted(np.unique(query_weights), query_weights[order]) + 1
    at = np.minimum(np.searchsorted(keys, items), len(keys) - 1)
    rank = np.where(keys[at] == items, ranks[at], 0).astype(np.int64)
    key = (rank << 32) | position
    anchors = np.full(len(lengths), -1, dtype=np.int64)
    present = lengths > 0
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))[present]
    best = np.maximum.reduceat(key, starts)
    anchors[present] = np.where(best >> 32 > 0, best & 0xFFFFFFFF, -1)
    return anchors


def rank(candidates: Buffer, scores: Buffer, doc_freq: Buffer, sessions: float,
         idf_weight: float, query_items: Buffer, query_weights: Buffer, repeat_weight: float,
         exclude: Buffer, k: int) -> tuple[bytes, bytes]:
    """Scores times ``log(1 + N / df)^idf_weight``; with ``repeat_weight``, scaled to a best
    of 1 plus ``repeat_weight`` times each session item's weight; then the k best positive
    ones not in ``exclude`` (ties: the smaller hash first)."""
    items, values = _u64(candidates), _f64(scores).copy()
    if len(values) != len(items):
        raise ValueError("one score and one frequency per candidate")
    if idf_weight:
        df = _f64(doc_freq)
        if len(df) != len(items):
            raise ValueError("one score and one frequency per candidate")
        idf = np.log1p(max(sessions, 1.0) / np.maximum(df, 1.0))
        values = values * np.power(idf, idf_weight)
    q_items, q_weights = _u64(query_items), _f64(query_weights)
    if repeat_weight and len(q_items):
        best = values.max() if len(values) else 0.0
        scaled = values / best if best > 0 else values
        merged, inverse = np.unique(np.concatenate((items, q_items)), return_inverse=True)
        values = np.bincount(inverse, weights=np.concatenate((scaled, repeat_weight * q_weights)),
                             minlength=len(merged)).astype(np.float64)
        items = merged
    keep = values > 0
    excluded = _u64(exclude)
    if len(excluded):
        keep &= ~np.isin(items, excluded)
    items, values = items[keep], values[keep]
    order = np.lexsort((items, -values))[:max(k, 0)]
    return items[order].tobytes(), values[order].tobytes()


def _nbytes(buffer: Buffer) -> int:
    return buffer.nbytes if isinstance(buffer, np.ndarray) else len(buffer)


def ranked(candidates: Buffer, scores: Buffer, doc_freq: Buffer, sessions: float,
           idf_weight: float, query_items: Buffer, query_weights: Buffer, repeat_weight: float,
           exclude: Buffer, table_keys: Buffer, table_values: Buffer, seen: Buffer,
           found_items: Buffer, found_latest: Buffer, model_table: Buffer,
           model_directory: Buffer, model_codes: Buffer, model_inputs: Buffer,
           model_last: Buffer, model_positions: Buffer, weights: Buffer, pairs: Buffer,
           depth: int, k: int) -> tuple[bytes, bytes] | None:
    """A request's learned order in one call: ``rank``'s ``max(k, depth)`` best, each one's
    frequency (its candidate's in ``doc_freq`` when that holds one per candidate, which are
    distinct as ``score`` gives them; else the table's: None when the table holds none), the
    sequence model's values of the first ``depth`` (none when ``model_table`` is empty), then
    ``reorder`` (``sessions`` is both steps' count)."""
    items = _u64(candidates)
    has_df = len(_f64(doc_freq)) == len(items)
    if (len(_f64(scores)) != len(items) or (idf_weight and not has_df)
            or len(_f64(query_weights)) != len(_u64(query_items))
            or len(_u64(found_latest)) != len(_u64(found_items))):
        raise ValueError("one score and one frequency per candidate")
    _table_mask(np.asarray(table_keys), np.asarray(table_values))
    checked_pairs(weights, pairs)
    k = max(k, 0)
    best, values = rank(candidates, scores, doc_freq, sessions, idf_weight, query_items,
                        query_weights, repeat_weight, exclude, max(k, depth))
    answers = _u64(best)
    freq = np.zeros(len(answers))
    position = {item: n for n, item in reversed(list(enumerate(items.tolist())))} \
        if has_df else {}
    from_candidates = np.array([h in position for h in answers.tolist()], bool)
    if has_df:
        freq[from_candidates] = _f64(doc_freq)[[position[h] for h in
                                                answers[from_candidates].tolist()]]
    table, missing = lookup(table_keys, table_values, answers[~from_candidates])
    if missing:
        return None
    freq[~from_candidates] = _f64(table)
    sequence = sequence_values(model_table, model_directory, model_codes, model_inputs,
                               model_last, model_positions, query_items,
                               answers[:max(min(len(answers), depth), 0)]) \
        if _nbytes(model_table) else b""
    return reorder(best, values, freq, sessions, query_items, query_weights, seen, found_items,
                   found_latest, sequence, weights, pairs, depth, k)


def candidates(query_items: Buffer, query_weights: Buffer, index_keys: Buffer,
               index_slots: list[Any], history_keys: Buffer, history_slots: list[Any],
               sample_sessions: int, neighbours: int, exclude: int, has_exclude: bool,
               cap: int, half_life: float, sequence_weight: float, before_weight: float
               ) -> tuple[bytes, bytes, bytes, int] | None:
    """``neighbours`` then ``score`` on blobs read from the read cache's object tables; None
    when one of them is not there (the caller reads Redis instead)."""
    q_items = _u64(query_items)
    if len(_f64(query_weights)) != len(q_items):
        raise ValueError("one weight per query item")
    indexes = objects_get(index_keys, index_slots, q_items)
    if any(not isinstance(blob, bytes) for blob in indexes):
        return None
    sessions, sims = _neighbours(query_weights, indexes, sample_sessions, neighbours, exclude,
                                 has_exclude, cap, half_life)
    histories = objects_get(history_keys, history_slots, _u64(sessions))
    if any(not isinstance(blob, bytes) for blob in histories):
        return None
    found, totals, latest = score(query_items, query_weights, histories, sims, sequence_weight,
                                  before_weight)
    return found, totals, latest, len(sessions) // 8


def relative(scores: Buffer) -> list[float]:
    """Each score over the first, rounded to 6 decimals (half to even, as numpy rounds)."""
    values = _f64(scores)
    if not len(values):
        return []
    return (np.rint(values / values[0] * 1e6) / 1e6).tolist()  # type: ignore[no-any-return]


def hashes(ids: Sequence[str], person: bytes) -> bytes:
    """Each id's BLAKE2b, 8-byte digest personalised with ``person``, of its UTF-8 (lone
    surrogates as they are), concatenated."""
    return b"".join(hashlib.blake2b(i.encode("utf-8", "surrogatepass"), digest_size=HASH_BYTES,
                                    person=person).digest() for i in ids)


def checked_hashes(ids: Sequence[Any], person: bytes, max_length: int) -> bytes | None:
    """``hashes(ids, person)`` when every id is a str of 1 to ``max_length`` characters and no
    two hash alike (so none repeats); None otherwise (the caller's slower path names the
    entry)."""
    if not all(type(i) is str and 0 < len(i) <= max_length for i in ids):
        return None
    digests = hashes(ids, person)
    if len({digests[n:n + HASH_BYTES] for n in range(0, len(digests), HASH_BYTES)}) != len(ids):
        return None
    return digests
