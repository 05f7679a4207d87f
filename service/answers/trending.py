"""The trending rows of an answer: the fill after the session's items (within the request's
rules and category cap), the whole of /popular, and either reordered by a placement's boosts."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from service.answers import placements as placed
from service.answers.fill import fill, trending_members
from service.core import scoring
from service.core.catalogueindex import CatalogueIndex
from service.core.placements import Placement
from service.core.rules import CategoryCap, Rules
from service.store.state import Store

BOOST_DEPTH = 4
"""How much deeper than its ``k`` a boosted trending fill reads: a boost reorders the trending
items near the head, within what a fill may read anyway."""


async def trending(store: Store, k: int, rules: Rules, taken: scoring.U64, ceiling: float,
                   hashes: list[int], cap: CategoryCap | None = None,
                    catalogue: CatalogueIndex | None = None,
                    placement: Placement | None = None) -> list[dict[str, Any]]:
    """``_fill``, reordered by the placement's boosts: from a deeper read (``BOOST_DEPTH``
    times ``k``), so that a boosted item from further down trending can rise into it."""
    if placement is None or not placement.boosts or k <= 0:
        return await fill_rows(store, k, rules, taken, ceiling, hashes, cap, catalogue)
    if catalogue is None:
        catalogue = await store.items.index()
    deeper: list[int] = []
    before = None if cap is None else dict(cap.counts)
    rows = await fill_rows(store, BOOST_DEPTH * k, rules, taken, ceiling, deeper, cap, catalogue)
    found = placed.factors(catalogue, placement.boosts, np.array(deeper, np.uint64))
    rows, chosen = placed.reorder(rows, deeper, found, k)
    if rules.explain:
        placed.mark_boosts(rows, placed.factors(catalogue, placement.boosts,
                                                np.array(chosen, np.uint64)))
    hashes.extend(chosen)
    if cap is not None and before is not None:  # it counted the deeper read: recount
        cap.counts = before
        for h in chosen:
            cap.take(h)
    return rows

async def fill_rows(store: Store, k: int, rules: Rules, taken: scoring.U64, ceiling: float,
                hashes: list[int], cap: CategoryCap | None = None,
                catalogue: CatalogueIndex | None = None) -> list[dict[str, Any]]:
    """Up to ``k`` trending items within the rules and none of ``taken`` (hashes), scored
    into (0, ceiling] relative to the first one; their hashes in ``hashes``. ``cap`` and
    ``catalogue``: the answer's own so far (None: the fill is the whole answer, as for
    /popular)."""
    if rules.needs_catalogue and cap is None:
        catalogue = await store.items.index()
        cap = CategoryCap(rules.max_per_category, catalogue.first_category)
    if k <= 0:
        return []
    if cap is not None and cap.limit is None:
        cap = None
    skip = set(taken.tolist())
    if rules.filter is not None and catalogue is not None:
        # the filter's items in trending order, from the process' trending snapshot (one
        # read shared by every filter: a new filter costs no Redis read)
        snapshot = await store.reads.trending_snapshot()
        return fill(catalogue.fill_order(rules.filter, snapshot.members, snapshot.score_of),
                    k, skip, cap, ceiling, rules.explain, hashes)
    # what is skipped (hidden and unavailable items, the request's exclusions) is mostly
    # not trending: read a little past k first, deeper only when skipped items were there
    # (a read of one member per unavailable item cost every answer tens of milliseconds)
    depth = k + min(len(skip), 4 * k + 64)
    counts = dict(cap.counts) if cap is not None else {}
    while True:
        head = await store.reads.trending_head(depth)
        if cap is not None:
            cap.counts = dict(counts)
        leader = head[0][1] if head else 0.0
        hashes.clear()
        rows = fill(trending_members(head, leader), k, skip, cap, ceiling, rules.explain,
                    hashes)
        if len(rows) == k:
            return rows
        if cap is not None:
            break
        if len(head) < depth or depth >= k + len(skip):
            return rows  # the whole set read, or read past every skipped item
        depth = min(depth * 4, k + len(skip))
    # the cap skipped items: deeper from the process' trending snapshot, not from Redis (a
    # read that grew with the set, a few categories among many trending items, blocked
    # Redis for every client); past its 4,096 items the answer says it has fewer than k
    cap.counts = dict(counts)
    members = (await store.reads.trending_snapshot()).members
    top = members[0][2] if members else 0.0
    hashes.clear()
    return fill(((name, h, math.pow(2.0, min(score - top, 0.0)))
                 for name, h, score in members), k, skip, cap, ceiling, rules.explain,
                hashes)
