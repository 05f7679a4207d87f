"""The pure reference of the learned order (``native/reorder.c``): each answer's features and
the answers ordered by their weights (``service/core/reorder.py`` gives them their types and
says what each feature is for). Vectorised numpy; the compiled version saves the thirty-odd
array calls that cost a request more than their arithmetic.

Each value is summed feature by feature, left to right, as the compiled version sums it.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from service.kernel.reference_tables import F64, Buffer, _f64, _u64

WIDTH = 9
"""Features per answer: score, idf, sessions, session weight, last item, age, sequence,
seen, and the session's length (the same for every answer)."""

LENGTH_CAP = 10
"""The session's length counts at most this many distinct items. Sessions longer than that
are few, and a crafted one's length would otherwise lie where no honest session's does: a
tuning run's fit could then bend the length's weights to a few such sessions at no cost to
any other. Capped, they share their value with every honest session of ten items or
more."""

WEIGHED = 8
"""The first columns, each weighed alone too; the rest (the session's) only in products: a
value the same for every answer orders nothing."""

SCORE_FLOOR = 1e-9
"""An answer's relative score is floored before its log (a score of 0 is never ranked)."""

AGE_CAP = 365.0
"""Days: the age of an answer no neighbour touched (one of the session's own items), and the
most any age counts."""

DAY_KEYS = 86_400 * 1_000_000  # time keys are microseconds


def _i64(buffer: Buffer) -> npt.NDArray[np.int64]:
    return np.frombuffer(buffer, dtype=np.int64)


def gather(keys: Buffer, values: Buffer, wanted: Buffer) -> bytes:
    """The value of each wanted key (the first of its equals in ``keys``), 0 for a key not in
    ``keys``."""
    k, v, w = _u64(keys), _i64(values), _u64(wanted)
    if len(v) != len(k):
        raise ValueError("one value per key")
    first: dict[int, int] = {}
    for key, value in zip(k.tolist(), v.tolist(), strict=True):
        first.setdefault(key, value)
    return np.array([first.get(x, 0) for x in w.tolist()], np.int64).tobytes()


def ages(found_items: Buffer, found_latest: Buffer, best: Buffer) -> F64:
    """Days since a neighbour last touched each of ``best`` (``found_*``: the candidates and
    their newest times in the neighbours' histories), against the newest of those times,
    within ``AGE_CAP``; ``AGE_CAP`` for an answer none touched."""
    answers, latest_all = _u64(best), _i64(found_latest)
    if not len(latest_all):
        return np.full(len(answers), AGE_CAP)
    latest = _i64(gather(found_items, found_latest, best))
    days = (int(latest_all.max()) - latest) / DAY_KEYS
    return np.where(latest > 0, np.clip(days, 0.0, AGE_CAP), AGE_CAP)


def features(best: Buffer, values: Buffer, doc_freq: Buffer, sessions: float,
             query_items: Buffer, query_weights: Buffer, seen: Buffer, found_items: Buffer,
             found_latest: Buffer, sequence: Buffer) -> F64:
    """One row per answer (``best``, scored ``values``, best first; ``doc_freq`` one per
    answer), ``WIDTH`` columns: log(score / best score), log(1 + sessions / df),
    log(1 + df), the answer's weight in the query (0 when not in it), 1 for the query's last
    item, log(1 + ``ages``), the sequence model's value (``sequence``, one per answer from
    the first; 0 past its end: no model, no value), 1 for an answer in ``seen`` (every item
    of the session), log of the number of distinct items in ``seen`` (0 for none), at most
    ``LENGTH_CAP``."""
    answers, scores, df = _u64(best), _f64(values), np.maximum(_f64(doc_freq), 0.0)
    q_items, q_weights = _u64(query_items), _f64(query_weights)
    n = len(answers)
    out = np.zeros((n, WIDTH), np.float64)
    if not n:
        return out
    top = scores[0] if scores[0] > 0 else 1.0
    out[:, 0] = np.log(np.maximum(scores / top, SCORE_FLOOR))
    out[:, 1] = np.log1p(max(sessions, 1.0) / np.maximum(df, 1.0))
    out[:, 2] = np.log1p(df)
    if len(q_items):
        weight_of = dict(zip(q_items.tolist(), q_weights.tolist(), strict=True))
        out[:, 3] = [weight_of.get(a, 0.0) for a in answers.tolist()]
        out[:, 4] = (answers == q_items[-1]).astype(np.float64)
    out[:, 5] = np.log1p(ages(found_items, found_latest, best))
    given = _f64(sequence)[:n]
    out[:len(given), 6] = given
    session = _u64(seen)
    out[:, 7] = np.isin(answers, session).astype(np.float64)
    out[:, 8] = np.log(min(max(len(np.unique(session)), 1), LENGTH_CAP))
    return out


def checked_pairs(weights: Buffer, pairs: Buffer) -> npt.NDArray[np.int64]:
    """The products' column pairs, two indexes each, once ``weights`` holds one weight per
    feature weighed alone and one per pair, and every index names a column."""
    both = np.frombuffer(pairs, np.int64)
    if (len(both) % 2 or len(_f64(weights)) != WEIGHED + len(both) // 2
            or not np.all((both >= 0) & (both < WIDTH))):
        raise ValueError(f"one score and one frequency per answer, {WEIGHED} weights and one "
                         "per pair of features")
    return both


def reorder(best: Buffer, values: Buffer, doc_freq: Buffer, sessions: float,
            query_items: Buffer, query_weights: Buffer, seen: Buffer, found_items: Buffer,
            found_latest: Buffer, sequence: Buffer, weights: Buffer, pairs: Buffer, depth: int,
            k: int) -> tuple[bytes, bytes]:
    """The ``k`` first answers: the ``depth`` first ordered by ``features``' first
    ``WEIGHED`` columns times the first ``WEIGHED`` ``weights``, then each product of two
    columns (``pairs``: two per product) times the next weight (summed left to right), ties
    in the given order, each scored ``exp(its value - the first's)``; any further answers
    after them in the given order, their values scaled below the last ordered one."""
    answers, scores, w = _u64(best), _f64(values), _f64(weights)
    both = checked_pairs(weights, pairs)
    if len(_f64(doc_freq)) != len(answers) or len(scores) != len(answers):
        raise ValueError(f"one score and one frequency per answer, {WEIGHED} weights and one "
                         "per pair of features")
    head = min(len(answers), max(depth, 0))
    if not head or k <= 0:
        return b"", b""
    rows = features(answers[:head], scores[:head], _f64(doc_freq)[:head], sessions,
                    query_items, query_weights, seen, found_items, found_latest, sequence)
    value = rows[:, 0] * w[0]
    for j in range(1, WEIGHED):
        value = value + rows[:, j] * w[j]
    for p in range(len(both) // 2):
        value = value + rows[:, both[2 * p]] * rows[:, both[2 * p + 1]] * w[WEIGHED + p]
    order = np.argsort(-value, kind="stable")
    scored = np.exp(value[order] - value[order[0]])
    items = answers[order]
    if head < len(answers) and k > head:
        rest = scores[head:k]
        tail = rest / scores[head - 1] * scored[-1] if scores[head - 1] > 0 \
            else np.zeros(len(rest))
        items, scored = np.concatenate((items, answers[head:k])), np.concatenate((scored, tail))
    return items[:k].tobytes(), scored[:k].tobytes()


__all__ = ["ages", "checked_pairs", "features", "gather", "reorder"]
