"""Request-time scoring, free of I/O: session neighbourhoods over the live neighbour index.

Steps 1 and 2 are each fed by one Redis round trip:

1. ``neighbours``: the indexes of the session's most recent items list the sessions that touched
   each item most recently. A candidate session's similarity is the sum of the weights of the
   query items it shares (weights favour recent positions and higher ratings). Of the
   ``sample_sessions`` most recent candidates, the ``neighbours`` most similar are kept; with
   ``neighbour_half_life``, a candidate's similarity first halves per half-life its latest
   shared event is older than the newest candidate's (V-STAN's neighbour recency, in time).
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
overhead of a numpy call costs more than its arithmetic. So each stage runs in the kernel
(``service/kernel``: compiled, or its pure reference, which reads as the specification of each
stage); the functions here give its bytes their types.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from service import kernel
from service.core.parameters import ORDER_PAIR_NAMES, default_float, default_int
from service.kernel.reference_tables import Buffer
from service.settings import Settings

U64 = npt.NDArray[np.uint64]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Params:
    """The scoring parameters (``core/parameters.py`` defines each: default, limits, meaning)."""

    query_items: int = default_int("query_items")
    sample_sessions: int = default_int("sample_sessions")
    neighbours: int = default_int("neighbours")
    sequence_weight: float = default_float("sequence_weight")
    before_weight: float = default_float("before_weight")
    position_decay: float = default_float("position_decay")
    idf_weight: float = default_float("idf_weight")
    repeat_weight: float = default_float("repeat_weight")
    neighbour_half_life: float = default_float("neighbour_half_life")
    order_score: float = default_float("order_score")
    order_idf: float = default_float("order_idf")
    order_sessions: float = default_float("order_sessions")
    order_session_weight: float = default_float("order_session_weight")
    order_last: float = default_float("order_last")
    order_age: float = default_float("order_age")
    order_sequence: float = default_float("order_sequence")
    order_seen: float = default_float("order_seen")
    index_cap: int = default_int("index_cap")  # an index counts its newest entries (layout)
    # the learned order's weights of products of two features (parameters.ORDER_PAIRS):
    # fitted by tuning runs, set by the model record, no flag of their own
    order_score_x_score: float = default_float("order_score_x_score")
    order_score_x_idf: float = default_float("order_score_x_idf")
    order_score_x_sessions: float = default_float("order_score_x_sessions")
    order_score_x_session_weight: float = default_float("order_score_x_session_weight")
    order_score_x_last: float = default_float("order_score_x_last")
    order_score_x_age: float = default_float("order_score_x_age")
    order_score_x_sequence: float = default_float("order_score_x_sequence")
    order_idf_x_idf: float = default_float("order_idf_x_idf")
    order_idf_x_sessions: float = default_float("order_idf_x_sessions")
    order_idf_x_session_weight: float = default_float("order_idf_x_session_weight")
    order_idf_x_last: float = default_float("order_idf_x_last")
    order_idf_x_age: float = default_float("order_idf_x_age")
    order_idf_x_sequence: float = default_float("order_idf_x_sequence")
    order_sessions_x_sessions: float = default_float("order_sessions_x_sessions")
    order_sessions_x_session_weight: float = default_float("order_sessions_x_session_weight")
    order_sessions_x_last: float = default_float("order_sessions_x_last")
    order_sessions_x_age: float = default_float("order_sessions_x_age")
    order_sessions_x_sequence: float = default_float("order_sessions_x_sequence")
    order_session_weight_x_session_weight: float = default_float(
        "order_session_weight_x_session_weight")
    order_session_weight_x_last: float = default_float("order_session_weight_x_last")
    order_session_weight_x_age: float = default_float("order_session_weight_x_age")
    order_session_weight_x_sequence: float = default_float("order_session_weight_x_sequence")
    order_last_x_age: float = default_float("order_last_x_age")
    order_last_x_sequence: float = default_float("order_last_x_sequence")
    order_age_x_age: float = default_float("order_age_x_age")
    order_age_x_sequence: float = default_float("order_age_x_sequence")
    order_sequence_x_sequence: float = default_float("order_sequence_x_sequence")
    order_score_x_seen: float = default_float("order_score_x_seen")
    order_idf_x_seen: float = default_float("order_idf_x_seen")
    order_sessions_x_seen: float = default_float("order_sessions_x_seen")
    order_age_x_seen: float = default_float("order_age_x_seen")
    order_sequence_x_seen: float = default_float("order_sequence_x_seen")
    order_score_x_length: float = default_float("order_score_x_length")
    order_idf_x_length: float = default_float("order_idf_x_length")
    order_sessions_x_length: float = default_float("order_sessions_x_length")
    order_session_weight_x_length: float = default_float("order_session_weight_x_length")
    order_last_x_length: float = default_float("order_last_x_length")
    order_age_x_length: float = default_float("order_age_x_length")
    order_sequence_x_length: float = default_float("order_sequence_x_length")
    order_seen_x_length: float = default_float("order_seen_x_length")

    @classmethod
    def from_settings(cls, s: Settings) -> Params:
        """The flags' and environment's parameters (the order's pair weights have none:
        they start at their defaults)."""
        return cls(**{f.name: getattr(s, f.name) for f in dataclasses.fields(cls)
                      if f.name not in ORDER_PAIR_NAMES})


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


def query_settings(params: Params) -> tuple[int, float]:
    """What ``build_query`` reads of the parameters (a tuning run keeps what they found)."""
    return params.query_items, params.position_decay


def neighbour_settings(params: Params) -> tuple[int, int, int, float]:
    """What ``neighbours`` reads of the parameters."""
    return (params.sample_sessions, params.neighbours, params.index_cap,
            params.neighbour_half_life)


def build_query(hashes: Sequence[bytes], timestamps: Sequence[float], ratings: Sequence[float],
                params: Params) -> Query:
    """Order the session by time (stable for equal times) and weight its positions.

    The item at distance d from the end weighs ``(1 + d)^-position_decay``, times its rating
    relative to the session's highest rating (non-positive ratings weigh nothing: no evidence
    of interest).
    """
    items, weights, everything = kernel.query(hashes, timestamps, ratings,
                                              *query_settings(params))
    return Query(np.frombuffer(items, np.uint64), np.frombuffer(weights, np.float64),
                 np.frombuffer(everything, np.uint64))


def neighbours(query: Query, index_blobs: Sequence[bytes | None], params: Params,
               exclude_session: int | None = None) -> tuple[U64, F64]:
    """Neighbour sessions and their similarities, most similar first."""
    sample_sessions, most, cap, half_life = neighbour_settings(params)
    sessions, similarity = kernel.neighbours(
        query.weights, index_blobs, sample_sessions, most, exclude_session or 0,
        exclude_session is not None, cap, half_life)
    return np.frombuffer(sessions, np.uint64), np.frombuffer(similarity, np.float64)


class Candidates(NamedTuple):
    """The score stage's answer: candidate items (in an order of the kernel's choosing),
    their raw scores, and each one's newest time key in the neighbours' histories (when a
    neighbour last touched it: the learned order's age)."""

    items: U64
    scores: F64
    latest: I64


def score(query: Query, history_blobs: Sequence[bytes | None], similarity: F64,
          params: Params) -> Candidates:
    items, totals, latest = kernel.score(query.items, query.weights, history_blobs, similarity,
                                         params.sequence_weight, params.before_weight)
    return Candidates(np.frombuffer(items, np.uint64), np.frombuffer(totals, np.float64),
                      np.frombuffer(latest, np.int64))


NO_CANDIDATES = Candidates(np.zeros(0, np.uint64), np.zeros(0), np.zeros(0, np.int64))


def rank(candidates: U64, scores: F64, doc_freq: Buffer, sessions: float, query: Query,
         params: Params, repeats: bool, exclude: U64, k: int) -> tuple[U64, F64]:
    """Steps 3 and 4, then the k best (``doc_freq`` one per candidate): idf, the session's own
    items when ``repeats``, minus ``exclude``."""
    items, values = kernel.rank(
        candidates, scores, doc_freq, sessions, params.idf_weight, query.items, query.weights,
        params.repeat_weight if repeats else 0.0, np.ascontiguousarray(exclude, np.uint64), k)
    return np.frombuffer(items, np.uint64), np.frombuffer(values, np.float64)
