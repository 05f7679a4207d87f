"""The learned order of the top answers, free of I/O: a linear model over features every
request already has, whose weights are scoring parameters (``order_*``) that a tuning run
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
  neighbourhood clicked lately, where tastes and stock move.

All weights 0 (the default) leave the scores' order and cost nothing. A feature is honest in
a tuning run when its holdout can measure it without seeing the future: these are (the
session counts are today's, as idf's are, and one session weighs one in them), which is why
the item's trending score is not among them (today's trending counts the holdout's own later
clicks; docs/ACCURACY.md measures what it would add).
"""

from __future__ import annotations

import numpy as np

from service import kernel
from service.core.scoring import F64, U64, Candidates, Params, Query

FEATURES = ("order_score", "order_idf", "order_sessions", "order_session_weight", "order_last",
            "order_age")
"""The order's features, by the name of the parameter that weighs each."""

DEPTH = 100
"""The answers ordered again: the served order's top, where nearly every next click it
finds lies (beyond it a weight could only promote what the neighbourhood barely saw)."""

SCORE_FLOOR = 1e-9
"""An answer's relative score is floored before its log (a score of 0 is never ranked)."""

AGE_CAP = 365.0
"""Days: the age of an answer no neighbour touched (one of the session's own items), and the
most any age counts."""

DAY_KEYS = 86_400 * 1_000_000  # time keys are microseconds


def weights_of(params: Params) -> F64:
    return np.array([getattr(params, name) for name in FEATURES], np.float64)


def active(params: Params) -> bool:
    """Whether ``params`` order the answers again (any weight not 0)."""
    return any(getattr(params, name) for name in FEATURES)


def depth(params: Params, k: int) -> int:
    """How many answers to rank before ``reorder`` cuts them to ``k``."""
    return max(k, DEPTH) if active(params) else k


def ages(found: Candidates, best: U64) -> F64:
    """Days since a neighbour last touched each of ``best``, against the newest event in
    ``found`` (the neighbours' candidates and their latest times), within ``AGE_CAP``."""
    if not len(found.items):
        return np.full(len(best), AGE_CAP)
    latest = np.frombuffer(kernel.gather(found.items, found.latest, best), np.int64)
    days = (int(found.latest.max()) - latest) / DAY_KEYS
    return np.where(latest > 0, np.clip(days, 0.0, AGE_CAP), AGE_CAP)


def features(best: U64, values: F64, doc_freq: F64, sessions: float, query: Query,
             found: Candidates) -> F64:
    """One row per answer (``best``, scored ``values``, best first; ``doc_freq`` one per
    answer; ``found`` what they were ranked from), one column per ``FEATURES``."""
    n = len(best)
    out = np.zeros((n, len(FEATURES)), np.float64)
    if not n:
        return out
    top = values[0] if values[0] > 0 else 1.0
    out[:, 0] = np.log(np.maximum(values / top, SCORE_FLOOR))
    df = np.maximum(np.asarray(doc_freq, np.float64), 0.0)
    out[:, 1] = np.log1p(max(sessions, 1.0) / np.maximum(df, 1.0))
    out[:, 2] = np.log1p(df)
    if len(query.items):
        order = np.argsort(query.items, kind="stable")
        keys = query.items[order]
        at = np.minimum(np.searchsorted(keys, best), len(keys) - 1)
        in_session = keys[at] == best
        out[:, 3] = np.where(in_session, query.weights[order][at], 0.0)
        out[:, 4] = (best == query.items[-1]).astype(np.float64)
    out[:, 5] = np.log1p(ages(found, best))
    return out


def reorder(best: U64, values: F64, doc_freq: F64, sessions: float, query: Query,
            found: Candidates, params: Params, k: int) -> tuple[U64, F64]:
    """The ``k`` first answers: the ``DEPTH`` first (of ``best``, scored ``values``, best
    first; ``doc_freq`` one per answer) ordered by the learned model, each scored
    ``exp(its value - the first's)`` so the first scores 1 as a relative score does, ties in
    the served order; any further answers after them in the served order, scored below.
    Unchanged (cut to ``k``) when no weight is set."""
    if not active(params) or not len(best):
        return best[:k], values[:k]
    head = min(len(best), DEPTH)
    value = features(best[:head], values[:head], doc_freq[:head], sessions, query, found) \
        @ weights_of(params)
    order = np.argsort(-value, kind="stable")
    scored = np.exp(value[order] - value[order[0]])
    if head == len(best) or k <= head:
        return best[order][:k], scored[:k]
    tail = values[head:k] / values[head - 1] * scored[-1] if values[head - 1] > 0 \
        else np.zeros(min(k, len(best)) - head)
    return np.concatenate((best[order], best[head:k])), np.concatenate((scored, tail))

