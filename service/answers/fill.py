"""Filling an answer from trending, and wording it: the rows a fill adds (within a request's
rules and category cap, scored relative to the answer's last session score) and the message
that says when rules left fewer items than asked for."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from service import kernel
from service.core import scoring
from service.core.layout import ITEM_PERSON, item_hash
from service.core.rules import CategoryCap, Rules

MSG_SESSION = "Recommendations based on session interactions."
MSG_BOTH = "Recommendations based on session interactions, completed with trending items."
MSG_POPULAR = "Trending items: the session gives no co-visitation signal yet."
MSG_SIMILAR = "Items most often visited in the same sessions as this item."
MSG_NO_SIMILAR = "No session has visited this item with another one yet."
MSG_TRENDING = "Trending items (time-decayed popularity)."
MSG_FEWER = ("Only {found} of the k={k} items asked for satisfy the request's rules ({rules}); "
             "loosen them for more.")
MSG_FEWER_SIMILAR = ("{found} co-visited items satisfy the request's rules ({rules}); k={k} "
                     "asked for more.")



NO_ITEMS: scoring.U64 = np.zeros(0, np.uint64)
LE_U64 = np.dtype("<u8")  # hashes are little-endian; a dtype object, not a string to parse


_ROW_ORDER = np.arange(1024, dtype=np.int64).tobytes()


def row_order(n: int) -> bytes:
    """Positions 0..n-1 as int64 bytes: ``kernel.rows_json``'s index for rows in their given
    order (a slice of one constant for the lengths answers have)."""
    return _ROW_ORDER[:8 * n] if n <= 1024 else np.arange(n, dtype=np.int64).tobytes()


def item_hashes(item_ids: Sequence[str]) -> scoring.U64:
    """Item hashes as u64 (read-only: they are only compared)."""
    if not item_ids:
        return NO_ITEMS
    return np.frombuffer(kernel.hashes(item_ids, ITEM_PERSON), LE_U64)


def trending_members(head: Sequence[tuple[bytes, float]], leader: float
             ) -> Iterator[tuple[str, int, float]]:
    """Trending members as (id, hash, share of the leader's score), hashed as they are used.

    Trending scores are log2 of decayed counts, so ``2^(s - s_max)`` is the share of the leader.
    """
    for member, log_score in head:
        name = member.decode("utf-8", "surrogatepass")
        yield name, int.from_bytes(item_hash(name), "little"), \
            math.pow(2.0, min(log_score - leader, 0.0))


def fill(members: Iterable[tuple[str, int, float]], k: int, skip: set[int],
         cap: CategoryCap | None, ceiling: float, explain: bool,
         hashes: list[int] | None = None) -> list[dict[str, Any]]:
    """The first ``k`` members not in ``skip`` that the cap allows, as answer rows; their
    hashes appended to ``hashes`` (what the answer's record lists, hashed once)."""
    rows: list[dict[str, Any]] = []
    for name, h, share in members:
        if h in skip or (cap is not None and not cap.take(h)):
            continue
        row: dict[str, Any] = {"id": name, "score": six_decimals(ceiling * share)}
        if explain:
            row["because"] = []
            row["source"] = "trending"
        rows.append(row)
        if hashes is not None:
            hashes.append(h)
        if len(rows) == k:
            break
    return rows


def six_decimals(score: float) -> float:
    """``score`` rounded to 6 decimals, half to even as ``kernel.relative`` rounds the session's
    scores. ``round(score, 6)`` converts through decimal digits, several times slower, which
    a fill of twenty rows per request noticed."""
    return round(score * 1e6) / 1e6


def worded(message: str, found: int, k: int, rules: Rules, wording: str = MSG_FEWER) -> str:
    """``message``, saying so when rules left fewer than ``k`` items."""
    if found >= k or not (rules.exclude or rules.filter or rules.max_per_category):
        return message
    given = [name for name, on in (("exclude", rules.exclude), ("filter", rules.filter),
                                   ("max_per_category", rules.max_per_category)) if on]
    return f"{message} {wording.format(found=found, k=k, rules=', '.join(given))}"


