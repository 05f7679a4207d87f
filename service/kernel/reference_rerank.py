"""The pure reference of the compiled rerank steps (``native/rerank.c``): where each given
item of a ``POST /rerank`` stands, and the answer's rows. Vectorised numpy; the compiled
versions save the dozen array passes and the row loop of a request's few hundred items."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from service.kernel.reference_tables import Buffer, _f64

SCORE_DIGITS = 1e6
"""Scores are answered rounded to 6 decimals (round half to even, as ``np.rint``)."""


def _i64(buffer: Buffer) -> npt.NDArray[np.int64]:
    return np.frombuffer(buffer, dtype=np.int64)


def arrange(positions: Buffer, scores: Buffer, keep: Buffer, held: Buffer,
            popular_share: float) -> tuple[bytes, bytes, int, int]:
    """The order of a given list of n items.

    ``positions``: i64, the 1-based places in the list of the items the session ranks, in rank
    order (0: not in the list); ``scores``: theirs (f64, the best first); ``keep``: u8 per place
    (n + 1 of them, [0] for "not in the list"), 0 for items the rules leave out; ``held``: f64
    per item of the list, how many sessions hold it.

    Returns the order as i64 indexes into the list, its scores (f64), how many of it the session
    scored and how many other sessions hold: first the ranked items that are kept, their scores
    relative to the best; then the other kept items some session holds, most held first (ties
    in their given order), at ``popular_share`` of the lowest relative session score in
    proportion to the most held; then the rest in their given order, at 0.
    """
    at, best = _i64(positions), _f64(scores)
    keeps = np.frombuffer(keep, np.uint8).astype(bool)
    holds = _f64(held)
    if len(keeps) != len(holds) + 1 or len(at) != len(best):
        raise ValueError("keep has one entry per item and one more; a score per position")
    if len(at) and (at.min() < 0 or at.max() > len(holds)):
        raise ValueError("a position outside the list")
    scored = keeps[at]
    at, best = at[scored], best[scored]
    unscored = keeps.copy()
    unscored[at] = False
    rest = np.flatnonzero(unscored[1:])
    rest_held = holds[rest]
    floor = float(best[-1] / best[0]) if len(best) else 1.0
    top = float(rest_held.max()) if len(rest_held) else 0.0
    popular = np.argsort(-rest_held, kind="stable")
    popular = popular[rest_held[popular] > 0]
    unknown = np.flatnonzero(rest_held <= 0)
    index = np.concatenate((at - 1, rest[popular], rest[unknown])).astype(np.int64)
    values = np.concatenate((best / best[0] if len(best) else np.zeros(0),
                             floor * popular_share * rest_held[popular] / top if top
                             else np.zeros(0), np.zeros(len(unknown))))
    return index.tobytes(), values.astype(np.float64).tobytes(), len(at), len(popular)


def _first(ids: Sequence[str], index: Buffer, scores: Buffer, k: int
           ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """The first ``k`` indexes and scores of an order, checked against ``ids``."""
    at, values = _i64(index), _f64(scores)
    if len(at) != len(values):
        raise ValueError("one score per index")
    at, values = at[:max(k, 0)], values[:max(k, 0)]
    if len(at) and (at.min() < 0 or at.max() >= len(ids)):
        raise IndexError("an index outside ids")
    return at, values


def rows(ids: Sequence[str], index: Buffer, scores: Buffer, k: int) -> list[dict[str, Any]]:
    """The first ``k`` of an order as answer rows: ``{"id": ids[index[n]], "score":
    scores[n]}``, each score rounded to 6 decimals."""
    at, values = _first(ids, index, scores, k)
    rounded = np.rint(values * SCORE_DIGITS) / SCORE_DIGITS
    return [{"id": ids[n], "score": v} for n, v in zip(at.tolist(), rounded.tolist(),
                                                       strict=True)]


def _json_string(text: str) -> str:
    """``text`` as a JSON string: quote and backslash escaped, control characters as
    ``\\u00xx``, everything else as it is."""
    out = []
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif c < " ":
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def _json_score(value: float) -> str | None:
    """A score rounded to 6 decimals, written from its count of millionths (at least one
    digit after the point); None out of exact range."""
    millionths = float(np.rint(value * SCORE_DIGITS))
    if not abs(millionths) < 9e15:
        return None
    count = int(millionths)
    whole, part = divmod(abs(count), 1_000_000)
    fraction = f"{part:06d}".rstrip("0") or "0"
    return f"{'-' if count < 0 else ''}{whole}.{fraction}"


def rows_json(ids: Sequence[str], index: Buffer, scores: Buffer, k: int) -> bytes | None:
    """``rows(ids, index, scores, k)`` written as a JSON array, or None when an id holds a lone
    surrogate or a score is too large or not finite (the caller writes those another way)."""
    at, values = _first(ids, index, scores, k)
    rows = []
    for n, value in zip(at.tolist(), values.tolist(), strict=True):
        item = ids[n]
        if not isinstance(item, str):
            raise TypeError("ids must be str")
        try:
            item.encode("utf-8")
        except UnicodeEncodeError:
            return None
        score = _json_score(value)
        if score is None:
            return None
        rows.append(f'{{"id":{_json_string(item)},"score":{score}}}')
    return ("[" + ",".join(rows) + "]").encode("utf-8")
