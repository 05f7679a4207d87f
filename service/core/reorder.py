"""The learned order of the top answers, free of I/O: a model over features every request
already has, whose weights are scoring parameters (``order_*``) that a tuning run
fits from the next clicks of its holdout (``service/offline/fitorder.py``).

The neighbourhood's score ranks the candidates; what it leaves out is how much a next click
follows an item's popularity, its specificity, or the session's own items, beyond what idf
and the repeat boost fixed once for every shop. So the ``DEPTH`` best answers are ordered
again by ``sum(weight * feature)``, each feature a column of ``features``:

* ``order_score``: log of the answer's score relative to the best (the served order);
* ``order_idf``: ``log(1 + sessions / sessions with the item)``;
* ``order_sessions``: ``log(1 + sessions with the item)``;
* ``order_session_weight``: the item's weight in the session's query (0 when not in it);
* ``order_last``: 1 for the session's last item;
* ``order_age``: ``log(1 + days)`` since a neighbour session last touched the item, against
  the newest event in the neighbours' histories (``AGE_CAP`` when none did): what the
  neighbourhood clicked lately, where tastes and stock move;
* ``order_sequence``: the sequence model's score of the answer after the session's items,
  against the best answer's (``core/sequence.py``; 0 for every answer while no model is
  trained): what follows what across all sessions, not only the neighbours;
* ``order_seen``: 1 for any of the session's items: the query weighs only its newest
  ``query_items``, so without it an item the visitor looked at earlier in the session looks
  like one never seen (a session holds an item once, as the API takes it: keyed by item);

and one feature of the request, the same for each of its answers, weighed only in its
products with those (``parameters.SESSION_FEATURES``):

* ``order_length``: ``log`` of the session's distinct items, at most ``LENGTH_CAP``: a long
  session's next click follows the neighbourhood, the sequence model and the visitor's own
  items in other measure than a first click's.

and by ``sum(weight * feature * other feature)`` over ``PAIRS``, the products of two of them
(``parameters.ORDER_PAIRS``): a model quadratic in the features, still linear in its
weights, so the fit stays convex. How much the sequence model's score should count depends
on how many sessions hold the item, how much the neighbourhood's score on its idf; one
weight per feature cannot say so.

The features' arithmetic is the kernel's (``service/kernel/reference_reorder.py``, compiled
in ``native/reorder.c``): a request orders its answers in one compiled call.

All weights 0 (the default) leave the scores' order and cost nothing. A feature is honest in
a tuning run when its holdout can measure it without seeing the future: these are (the
session counts are today's, as idf's are, and one session weighs one in them), which is why
the item's trending score is not among them (today's trending counts the holdout's own later
clicks; docs/ACCURACY.md measures what it would add).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service import kernel
from service.core.parameters import ORDER_COLUMNS, ORDER_FEATURES, ORDER_PAIR_NAMES, ORDER_PAIRS
from service.core.scoring import F64, U64, Candidates, Params, Query
from service.core.sequence import ModelArrays, SequenceModel
from service.kernel import reference_reorder
from service.kernel.reference_reorder import AGE_CAP, DAY_KEYS, LENGTH_CAP
from service.kernel.reference_tables import Buffer

__all__ = ["AGE_CAP", "COLUMNS", "DAY_KEYS", "DEPTH", "FEATURES", "KNOWN_ORDERS", "LENGTH_CAP",
           "NO_VALUES", "PAIRS", "SEQUENCE_WEIGHTS", "WEIGHTS", "Order", "active", "depth",
           "features", "order_of", "reads_sequence", "reorder", "sequence_values", "served",
           "weights_of"]

FEATURES = ORDER_FEATURES
"""The order's answer features, by the name of the parameter that weighs each."""

COLUMNS = ORDER_COLUMNS
"""Every column ``features`` gives: ``FEATURES``, then the session's (no weight alone)."""

WEIGHTS = ORDER_FEATURES + ORDER_PAIR_NAMES
"""Every weight of the order: one per feature, then one per product of two features
(``PAIRS``)."""

PAIRS = np.array(ORDER_PAIRS, np.int64).reshape(-1)
"""The products' columns, two each, as the kernel reads them."""

DEPTH = 100
"""The answers ordered again: the served order's top, where nearly every next click it
finds lies (beyond it a weight could only promote what the neighbourhood barely saw)."""

NO_VALUES: F64 = np.zeros(0)
"""No sequence model: its feature is 0 for every answer."""


@dataclass(frozen=True, slots=True)
class Order:
    """What a request needs of ``params``' order: built once per ``params`` object."""

    params: Params
    weights: F64
    active: bool
    reads_sequence: bool

    def depth(self, k: int) -> int:
        """How many answers to rank before the order cuts them to ``k``."""
        return max(k, DEPTH) if self.active else k


def order_of(params: Params) -> Order:
    """The same ``Order`` again while the same ``params`` object asks: a serving process
    scores every request under the few it follows (the record's, an experiment's variants, the
    placements'), and a hash of all the parameters, or a ``getattr`` of each weight per
    request, would cost more than the order's own work. Keyed by identity, each entry holding
    its object (so no other can take its id); a tuning run's many candidates clear it."""
    known = _known.get(id(params))
    if known is not None and known.params is params:
        return known
    weights = np.array([getattr(params, name) for name in WEIGHTS], np.float64)
    weights.setflags(write=False)
    if len(_known) >= KNOWN_ORDERS:
        _known.clear()
    order = _known[id(params)] = Order(params, weights, bool(weights.any()),
                                       bool(weights[_SEQUENCE_MASK].any()))
    return order


def weights_of(params: Params) -> F64:
    """The order's weights, one per ``WEIGHTS`` (read-only)."""
    return order_of(params).weights


def active(params: Params) -> bool:
    """Whether ``params`` order the answers again (any weight not 0)."""
    return order_of(params).active


SEQUENCE_WEIGHTS = tuple(name for name in WEIGHTS if "sequence" in name)
"""The weights that read the sequence feature: its own and its products'."""


def reads_sequence(params: Params) -> bool:
    """Whether ``params``' order reads the sequence model (a weight of its own or of one of
    its products not 0)."""
    return order_of(params).reads_sequence


_SEQUENCE_MASK = np.array([name in SEQUENCE_WEIGHTS for name in WEIGHTS])
KNOWN_ORDERS = 16
_known: dict[int, Order] = {}


def depth(params: Params, k: int) -> int:
    """How many answers to rank before ``reorder`` cuts them to ``k``."""
    return order_of(params).depth(k)


def features(best: U64, values: F64, doc_freq: F64, sessions: float, query: Query,
             found: Candidates, sequence: F64 = NO_VALUES) -> F64:
    """One row per answer (``best``, scored ``values``, best first; ``doc_freq`` one per
    answer; ``found`` what they were ranked from; ``sequence`` the sequence model's values,
    ``sequence_values``), one column per ``COLUMNS``: what a tuning run fits the weights on
    (the kernel computes the same inside ``reorder``)."""
    return reference_reorder.features(best, values, doc_freq, sessions, query.items,
                                      query.weights, query.seen, found.items, found.latest,
                                      np.ascontiguousarray(sequence, np.float64))


def sequence_values(model: SequenceModel | None, query: Query, best: U64) -> F64:
    """The sequence model's values of the first ``DEPTH`` answers to ``query`` (none without a
    model: the feature is 0 for all)."""
    if model is None or not len(best):
        return NO_VALUES
    return model.values(query.items, best[:DEPTH])


def reorder(best: U64, values: F64, doc_freq: F64, sessions: float, query: Query,
            found: Candidates, params: Params, k: int, sequence: F64 = NO_VALUES
            ) -> tuple[U64, F64]:
    """The ``k`` first answers: the ``DEPTH`` first (of ``best``, scored ``values``, best
    first; ``doc_freq`` one per answer) ordered by the learned model, each scored
    ``exp(its value - the first's)`` so the first scores 1 as a relative score does, ties in
    the served order; any further answers after them in the served order, scored below.
    Unchanged (cut to ``k``) when no weight is set."""
    if not active(params) or not len(best):
        return best[:k], values[:k]
    return _ordered(best, values, np.ascontiguousarray(doc_freq, np.float64), sessions, query,
                    found, np.ascontiguousarray(sequence, np.float64), weights_of(params), k)


def served(order: Order, model: SequenceModel | None, best: U64, values: F64,
           doc_freq: Buffer, sessions: float, query: Query, found: Candidates, k: int
           ) -> tuple[U64, F64]:
    """``reorder`` with ``sequence_values`` as a serving request runs them when it ranks
    apart (``ranked`` could not: a category cap, or a frequency to read first), ``order``
    being ``order_of(params)`` and ``order.active``: the same answers, in two kernel calls.
    A request's arrays are contiguous already and its frequencies come as the cache holds
    them, so nothing is copied or wrapped between the calls."""
    sequence = model.packed_values(query.items, best[:DEPTH]) \
        if order.reads_sequence and model is not None and len(best) else b""
    return _ordered(best, values, doc_freq, sessions, query, found, sequence, order.weights, k)


def _ordered(best: U64, values: F64, doc_freq: Buffer, sessions: float, query: Query,
             found: Candidates, sequence: Buffer, weights: F64, k: int) -> tuple[U64, F64]:
    """The order's kernel over contiguous arguments (``reorder`` and ``served``)."""
    items, scores = kernel.reorder(best, values, doc_freq, sessions, query.items, query.weights,
                                   query.seen, found.items, found.latest, sequence, weights,
                                   PAIRS, DEPTH, k)
    return np.frombuffer(items, np.uint64), np.frombuffer(scores, np.float64)


NO_MODEL: ModelArrays = (b"", b"", b"", b"", b"", b"")
"""``kernel.ranked``'s model arguments when the order reads no sequence values."""


def ranked(order: Order, model: SequenceModel | None, candidates: U64, scores: F64,
           doc_freq: Buffer, table: tuple[U64, F64, float], query: Query, params: Params,
           repeats: bool, exclude: U64, found: Candidates, k: int) -> tuple[U64, F64] | None:
    """``scoring.rank`` to ``order.depth(k)`` and then ``served``, in one kernel call: the
    answers' frequencies are their candidates' (``doc_freq``, when the idf reads them) or the
    frequency ``table``'s (its keys, values and sessions' count); None when the table lacks
    one (the caller ranks and reads them apart). The same answers as the two steps give (a
    request's answers and values no longer cross into Python between its kernels, where
    each crossing cost about what a kernel did)."""
    keys, values, sessions = table
    arrays = model.kernel_arrays if order.reads_sequence and model is not None else NO_MODEL
    got = kernel.ranked(candidates, scores, doc_freq, sessions, params.idf_weight, query.items,
                        query.weights, params.repeat_weight if repeats else 0.0,
                        np.ascontiguousarray(exclude, np.uint64), keys, values, query.seen,
                        found.items, found.latest, *arrays, order.weights, PAIRS, DEPTH, k)
    if got is None:
        return None
    return np.frombuffer(got[0], np.uint64), np.frombuffer(got[1], np.float64)
