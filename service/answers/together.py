"""Bought together: the items added to cart or purchased in the same sessions as a cart's items
(``core/carts.py`` scores them), within a request's rules, completed from ``similar`` (the
item-neighbour answer of the cart's newest item) when the carts give fewer than ``k``; the
answer's message says which, and with ``explain`` each row's ``source`` does
(``"bought_together"`` or ``"similar"``).

What ``GET /items/{item_id}/bought-together`` (a cart of one item) and a placement's
``bought_together`` strategy (the request's ``user_interactions`` as the cart) call. A
companion of ``recommender.py``: it asks the recommender's own stages for the completion and
stamps its answers the same way.

Two round trips (the cart items' cart indexes, then the chosen sessions' carts), then the
completion's own when the carts give fewer than ``k``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from service import kernel
from service.answers.fill import item_hashes, worded
from service.answers.recommender import NOBODY, Answer, Asker, Recommender
from service.core import carts, scoring
from service.core.layout import item_hash, session_hash
from service.core.placements import Placement
from service.core.rules import NO_RULES, CategoryCap, Rules

MSG_TOGETHER = "Items added to cart or bought in the same sessions as these."
MSG_TOGETHER_SIMILAR = ("Items added to cart or bought in the same sessions as these, completed "
                        "with items similar to the newest one (too few carts).")
MSG_ONLY_SIMILAR = ("No cart has these items with another one yet: items similar to the "
                    "newest one.")
MSG_NOTHING = "No session has these items in its cart or visits with another one yet."
MSG_FEWER_TOGETHER = ("{found} items bought together or similar satisfy the request's rules "
                      "({rules}); k={k} asked for more.")

FILL_DEPTH = 8
"""With ``max_per_category``, the completion walks the newest item's ``FILL_DEPTH * k`` best
neighbours (plus those it must skip) under the answer's cap."""


async def bought_together(recommender: Recommender, cart: Sequence[str], k: int,
                          rules: Rules = NO_RULES, asker: Asker = NOBODY,
                          placement: Placement | None = None) -> Answer:
    """The answer for ``cart`` (item ids, oldest first), stamped for ``asker`` (whose own
    session's cart is no evidence for its answer) and the placement it was asked for."""
    return await recommender.stamped(
        await answer(recommender, cart, k, rules, asker.session_id), asker,
        placement=placement)


async def answer(recommender: Recommender, cart: Sequence[str], k: int,
                 rules: Rules = NO_RULES, session_id: str | None = None) -> Answer:
    """The answer before its id (what the evaluation compares); ``session_id``: the asking
    session, left out of the evidence."""
    store = recommender.store
    query = carts.cart_query([item_hash(item) for item in cart])
    named = {int.from_bytes(h, "little"): item for item, h in
             ((item, item_hash(item)) for item in cart)}
    ids = [named[int.from_bytes(h, "little")] for h in query]
    cart_hashes: scoring.U64 = np.frombuffer(b"".join(query), "<u8") if query \
        else np.zeros(0, np.uint64)
    candidates, scores, contributors = np.zeros(0, np.uint64), np.zeros(0), \
        np.zeros(0, np.uint64)
    if query:
        blobs = await store.reads.mget(store.keys.cart_indexes(cart_hashes))
        sessions, overlap, masks = carts.cart_sessions(
            blobs, recommender.params.index_cap, exclude_session=None if session_id is None
            else int.from_bytes(session_hash(session_id), "little"))
        if len(sessions):
            candidates, scores, contributors = carts.co_carted(
                cart_hashes, await store.reads.mget(store.keys.carts(sessions)), overlap, masks)
    catalogue = await store.items.index() if rules.needs_catalogue else None
    cap = CategoryCap(rules.max_per_category,
                      catalogue.first_category if catalogue is not None else {})
    # the whole cart, not only the newest items its query reads: nothing the shopper has is
    # offered back
    skip = set(np.concatenate((await store.reads.hidden_items(), item_hashes(rules.exclude),
                               item_hashes(list(cart)))).tolist())
    admitted = catalogue.admits(rules.filter, candidates) \
        if catalogue is not None and rules.filter is not None else None
    picked: list[int] = []
    for n, h in enumerate(candidates.tolist()):
        if len(picked) == k:
            break
        if h in skip or (admitted is not None and not admitted[n]) or not cap.take(h):
            continue
        picked.append(n)
    best = candidates[picked]
    names = await store.reads.item_names(best, named)
    rows: list[dict[str, Any]] = [
        {"id": name, "score": score}
        for name, score in zip(names, kernel.relative(scores[picked]), strict=True)]
    if rules.explain:
        for row, mask in zip(rows, contributors[picked].tolist(), strict=True):
            row["because"] = carts.contributors_of(mask, ids)
            row["source"] = "bought_together"
    listed = best.astype("<u8").tobytes()
    filler: list[dict[str, Any]] = []
    if len(rows) < k and ids:
        filler, filled = await _similar(recommender, ids[-1], k - len(rows), rules,
                                        skip | set(best.tolist()), len(query) + len(rows),
                                        cap, float(rows[-1]["score"]) if rows else 1.0)
        listed += filled
    message = (MSG_TOGETHER if not filler else MSG_TOGETHER_SIMILAR) if rows \
        else MSG_ONLY_SIMILAR if filler else MSG_NOTHING
    return Answer(rows + filler, worded(message, len(rows) + len(filler), k, rules,
                                        MSG_FEWER_TOGETHER), listed=listed)


async def _similar(recommender: Recommender, anchor: str, k: int, rules: Rules,
                   skip: set[int], taken: int, cap: CategoryCap, ceiling: float
                   ) -> tuple[list[dict[str, Any]], bytes]:
    """Up to ``k`` of ``anchor``'s neighbours (the similar answer, within the rules) that are
    none of ``skip`` and that the answer's ``cap`` allows, scored into (0, ceiling]; and their
    hashes as the answer's record lists them. ``taken``: how many of ``skip`` the similar
    answer may list (the cart's items and the answer's rows: it leaves out the hidden and
    excluded items itself)."""
    depth = k + taken + (FILL_DEPTH * k if cap.limit is not None else 0)
    query = scoring.build_query([item_hash(anchor)], [0.0], [1.0], recommender.similar_params)
    similar = await recommender.answer(
        query, depth, query.seen, recommender.similar_params, None,
        dataclasses.replace(rules, max_per_category=None), fill_with_trending=False,
        named={int.from_bytes(item_hash(anchor), "little"): anchor})
    hashes = np.frombuffer(similar.listed, "<u8").tolist()
    rows: list[dict[str, Any]] = []
    kept: list[int] = []
    for row, h in zip(similar.recommendations, hashes, strict=True):
        if len(rows) == k:
            break
        if h in skip or not cap.take(h):
            continue
        row = {"id": row["id"], "score": round(ceiling * row["score"] * 1e6) / 1e6}
        if rules.explain:
            row["because"] = [anchor]
            row["source"] = "similar"
        rows.append(row)
        kept.append(h)
    return rows, np.array(kept, "<u8").tobytes()
