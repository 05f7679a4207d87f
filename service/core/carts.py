"""Bought together, scored: the items carted (added to cart or purchased) in the same sessions as
a cart's items, from the learned cart indexes and carts (``core/model.py``). Pure numpy, no I/O
(``service/answers/together.py`` reads and answers).

Two stages, as the session answer's:

* ``cart_sessions``: the sessions listed by the cart items' cart indexes (the newest
  ``index_cap`` entries of each, what counts), each with its **overlap** (how many of the cart's
  items it carted), its latest such time, and which of them (a bit per cart item: what
  ``explain`` names); the ``limit`` best by (overlap, time, hash);
* ``co_carted``: their carts' other items, each scored by the sessions that carted it. A
  session's evidence is one unit per cart item it shares, **spread** over the other items of its
  cart: a session of two items gives its one co-carted item 1, a session of twenty gives each of
  its 19 others 1/19. So one session, honest or crafted, moves the scores by at most its overlap
  in all, however many items it carts (the cart keeps ``CART_CAP`` at most), and pushing one
  item into many items' answers costs a session per answer, as honest carts would. An item
  carted with the cart's items by fewer than ``MIN_SUPPORT`` sessions is thin evidence and
  left out (the answer completes from similar instead): one session alone puts nothing in
  anyone's answer.

Candidates are ordered by score, ties by hash: deterministic, so every process and topology
gives the same answer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from service.core.layout import HISTORY_DTYPE, INDEX_DTYPE, newest_entries

U64 = npt.NDArray[np.uint64]
F64 = npt.NDArray[np.float64]

CART_QUERY = 16
"""Most cart items an answer asks about (the newest): a bit each in the contributors' masks,
and a bound on the indexes read per answer."""
CART_NEIGHBOURS = 300
"""Most sessions whose carts an answer reads (the best by overlap, then the most recent)."""
MIN_SUPPORT = 2
"""Fewest sessions that must have carted an item with the cart's items for it to be answered
from carts. On YOOCHOOSE 100k with generated carts (scripts/eval_bought_together.py) 2 took
the answer's HR@20 from 0.444 to 0.499 (3: 0.513, but nine answers in ten from similar)."""


def cart_query(cart: Sequence[bytes]) -> list[bytes]:
    """The cart's distinct items, oldest first, its newest ``CART_QUERY`` kept (a repeated item
    counts at its last place)."""
    latest = list(dict.fromkeys(reversed(cart)))[:CART_QUERY]
    return latest[::-1]


def cart_sessions(blobs: Sequence[bytes | None], cap: int, limit: int = CART_NEIGHBOURS,
                  exclude_session: int | None = None) -> tuple[U64, F64, U64]:
    """The sessions that carted the cart's items: ``blobs[j]`` is cart item j's cart index
    (None: none). Returns the ``limit`` best sessions (u64 hashes), their overlaps and their
    masks (bit j: the session carted item j), best first."""
    parts_s, parts_t, parts_j = [], [], []
    for n, blob in enumerate(blobs):
        if not blob:
            continue
        entries = np.frombuffer(newest_entries(blob, cap), INDEX_DTYPE)
        parts_s.append(entries["s"].astype(np.uint64))
        parts_t.append(entries["t"].astype(np.int64))
        parts_j.append(np.full(len(entries), n, np.uint64))
    if not parts_s:
        return np.zeros(0, np.uint64), np.zeros(0), np.zeros(0, np.uint64)
    s, t, j = np.concatenate(parts_s), np.concatenate(parts_t), np.concatenate(parts_j)
    if exclude_session is not None:
        keep = s != np.uint64(exclude_session)
        s, t, j = s[keep], t[keep], j[keep]
        if not len(s):
            return np.zeros(0, np.uint64), np.zeros(0), np.zeros(0, np.uint64)
    # one row per (session, cart item): an index may list a session twice (an item that left
    # its cart and came back), and it counts once
    order = np.lexsort((t, j, s))
    s, t, j = s[order], t[order], j[order]
    last = np.ones(len(s), bool)
    last[:-1] = (s[1:] != s[:-1]) | (j[1:] != j[:-1])
    s, t, j = s[last], t[last], j[last]
    sessions, first = np.unique(s, return_index=True)
    overlap = np.diff(np.append(first, len(s))).astype(np.float64)
    latest = np.maximum.reduceat(t, first)
    masks = np.bitwise_or.reduceat(np.left_shift(np.uint64(1), j), first)
    best = np.lexsort((sessions, -latest, -overlap))[:limit]
    return sessions[best], overlap[best], masks[best]


def co_carted(cart: U64, carts: Sequence[bytes | None], overlap: F64, masks: U64,
              spread: bool = True, min_support: int = MIN_SUPPORT) -> tuple[U64, F64, U64]:
    """The items of the sessions' ``carts`` that are not in ``cart`` and that ``min_support``
    sessions or more carted, scored (see the module: each session gives its overlap, spread
    over its other items unless ``spread`` is False), best first, ties by hash; with each
    item's contributors (the OR of its sessions' masks)."""
    parts_i, parts_w, parts_m = [], [], []
    for n, blob in enumerate(carts):
        if not blob:
            continue
        items = np.unique(np.frombuffer(blob, HISTORY_DTYPE)["i"].astype(np.uint64))
        items = items[~np.isin(items, cart)]
        if not len(items):
            continue
        weight = overlap[n] / len(items) if spread else overlap[n]
        parts_i.append(items)
        parts_w.append(np.full(len(items), weight))
        parts_m.append(np.full(len(items), masks[n], np.uint64))
    if not parts_i:
        return np.zeros(0, np.uint64), np.zeros(0), np.zeros(0, np.uint64)
    i, w, m = np.concatenate(parts_i), np.concatenate(parts_w), np.concatenate(parts_m)
    order = np.argsort(i, kind="stable")
    i, w, m = i[order], w[order], m[order]
    items, first = np.unique(i, return_index=True)
    scores = np.add.reduceat(w, first)
    contributors = np.bitwise_or.reduceat(m, first)
    supported = np.diff(np.append(first, len(i))) >= min_support  # a session lists an item once
    items, scores, contributors = items[supported], scores[supported], contributors[supported]
    best = np.lexsort((items, -scores))
    return items[best], scores[best], contributors[best]


def contributors_of(mask: int, cart_ids: Sequence[str]) -> list[str]:
    """The cart items a candidate's mask names, newest first (``explain``'s ``because``)."""
    return [cart_ids[j] for j in range(len(cart_ids) - 1, -1, -1) if mask >> j & 1]
