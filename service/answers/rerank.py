"""Ordering a given list for a session (``POST /rerank``: a category page, search results):
the items the session's neighbourhood scores first, by that score (with its repeats: items the
visitor looked at come back up); then the items the model knows from other sessions, by how
many sessions hold them; then those it knows nothing of, in their given order. The request's
rules leave items out (and only they do: the answer is the given list, minus its exclusions);
a placement's boosts and promotion then act on the order."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from service.answers import placements as placed
from service.answers.fill import item_hashes, six_decimals
from service.answers.recommender import NOBODY, Answer, Asker, Recommender
from service.core import explain, scoring
from service.core.catalogueindex import CatalogueIndex
from service.core.layout import item_hash, session_hash
from service.core.placements import Placement
from service.core.rules import NO_RULES, CategoryCap, Rules

MSG_RERANK = ("The given items ordered for the session: those its neighbourhood scores, then "
              "those other sessions hold, then the rest in their given order.")
MSG_RERANK_FEWER = "{left} of the given items were left out by the request's rules ({rules})."
POPULAR_SHARE = 0.5
"""Where the items other sessions hold stand: below this share of the lowest score the session
gives, in proportion to how many sessions hold them."""


@dataclasses.dataclass(slots=True)
class Ordered:
    """The given items in their order for the session, with their scores and sources."""

    ids: list[str]
    hashes: scoring.U64
    scores: list[float]
    sources: list[str]
    because: list[list[str]]
    factors: list[float] | None = None  # each item's boost, when the placement has boosts


async def rerank(recommender: Recommender, interactions: Sequence[tuple[str, float, float]],
                 items: Sequence[str], k: int, asker: Asker = NOBODY,
                 rules: Rules = NO_RULES, placement: Placement | None = None) -> Answer:
    """``items`` (distinct) ordered for the session of ``interactions``, at most ``k``."""
    store = recommender.store
    params, serial, variant, name = recommender.scoring_params(asker, placement)
    catalogue = await store.items.index() if rules.needs_catalogue or (
        placement is not None and placement.needs_catalogue) else None
    ordered = await _ordered(recommender, interactions, items, params, asker, rules,
                             catalogue, placement)

    async def produce(k: int, rules: Rules, prior: bytes) -> Answer:
        return _taken(ordered, k, rules, prior, catalogue)

    answer = await recommender.with_placement(produce, k, rules, placement)
    left = len(items) - len(ordered.ids)
    message = MSG_RERANK if not left else MSG_RERANK + " " + MSG_RERANK_FEWER.format(
        left=left, rules=", ".join(_given(rules)) or "hidden or unavailable items")
    return await recommender.stamped(dataclasses.replace(answer, message=message), asker,
                                     serial, variant, name, placement)


def _given(rules: Rules) -> list[str]:
    return [n for n, on in (("exclude", rules.exclude), ("filter", rules.filter)) if on]


async def _ordered(recommender: Recommender, interactions: Sequence[tuple[str, float, float]],
                   items: Sequence[str], params: scoring.Params, asker: Asker, rules: Rules,
                   catalogue: CatalogueIndex | None, placement: Placement | None) -> Ordered:
    store = recommender.store
    given = item_hashes(items)
    keep = ~np.isin(given, np.concatenate((await store.reads.hidden_items(),
                                           item_hashes(rules.exclude))))
    if rules.filter is not None:
        assert catalogue is not None
        keep &= catalogue.admits(rules.filter, given)
    ids = [item for item, kept in zip(items, keep.tolist(), strict=True) if kept]
    given = given[keep]
    hashes = [item_hash(item) for item, _, _ in interactions]
    query = scoring.build_query(hashes, [ts for _, ts, _ in interactions],
                                [r for _, _, r in interactions], params)
    exclude_session = int.from_bytes(session_hash(asker.session_id), "little") \
        if asker.session_id is not None else None
    index_blobs = await store.reads.indexes(query.items) if len(query.items) else []
    sessions, similarity = scoring.neighbours(query, index_blobs, params, exclude_session) \
        if len(query.items) else (np.zeros(0, np.uint64), np.zeros(0))
    histories = await store.reads.histories(sessions) if len(sessions) else []
    candidates, raw = scoring.score(query, histories, similarity, params) if len(sessions) \
        else (np.zeros(0, np.uint64), np.zeros(0))
    wanted = np.isin(candidates, given)
    candidates, raw = candidates[wanted], raw[wanted]
    df, n_sessions = await store.reads.doc_freq(candidates) if params.idf_weight \
        else (np.zeros(0), 0.0)
    # every other item is excluded from the ranking: the given ones the session scores (and
    # its own items among them, with their repeat weight) are what it ranks
    others = query.seen[~np.isin(query.seen, given)]
    best, best_scores = scoring.rank(candidates, raw, df, n_sessions, query, params, True,
                                     others, len(candidates) + len(query.seen))
    scored = np.isin(best, given)
    best, best_scores = best[scored], best_scores[scored]
    rest_at = ~np.isin(given, best)
    rest = given[rest_at]
    held, _ = await store.reads.doc_freq(rest, learned_only=True)
    floor = float(best_scores[-1] / best_scores[0]) if len(best) else 1.0
    top = float(held.max()) if len(held) else 0.0
    popular = np.argsort(-held, kind="stable")
    popular = popular[held[popular] > 0]
    unknown = np.flatnonzero(held <= 0)
    order = np.concatenate((best, rest[popular], rest[unknown]))
    scores = (best_scores / best_scores[0]).tolist() if len(best) else []
    scores += (floor * POPULAR_SHARE * held[popular] / top).tolist() if top else []
    scores += [0.0] * len(unknown)
    sources = ["session"] * len(best) + ["popular"] * len(popular) + ["unknown"] * len(unknown)
    boosts = () if placement is None else placement.boosts
    if boosts:
        assert catalogue is not None
        found = placed.factors(catalogue, boosts, order)
        boosted = placed.within(np.array(scores) * found, 1.0)
        known = len(best) + len(popular)  # the unknown stay last, in their given order
        resort = np.argsort(-boosted[:known], kind="stable")
        index = np.concatenate((resort, np.arange(known, len(order))))
        order, found = order[index], found[index]
        scores = boosted[index].tolist()
        sources = [sources[n] for n in index.tolist()]
    name_of = dict(zip(given.tolist(), ids, strict=True))
    because: list[list[str]] = [[] for _ in range(len(order))]
    if rules.explain and len(best):
        lookup = {int.from_bytes(h, "little"): item for h, (item, _, _)
                  in zip(hashes, interactions, strict=True)}
        reasons = explain.because(query, histories, similarity, params, order)
        because = [[lookup[h] for h in behind if h in lookup] for behind in reasons]
    return Ordered([name_of[h] for h in order.tolist()], order,
                   [six_decimals(s) for s in scores], sources, because,
                   found.tolist() if boosts else None)


def _taken(ordered: Ordered, k: int, rules: Rules, prior: bytes,
           catalogue: CatalogueIndex | None) -> Answer:
    """The first ``k`` of the order that ``rules`` (a promotion's filter among them) and the
    category cap allow."""
    allowed = ~np.isin(ordered.hashes, item_hashes(rules.exclude))
    if rules.filter is not None:
        assert catalogue is not None
        allowed &= catalogue.admits(rules.filter, ordered.hashes)
    cap = CategoryCap(rules.max_per_category,
                      catalogue.first_category if catalogue is not None else {})
    for h in np.frombuffer(prior, placed.LE_U64).tolist():
        cap.take(h)
    rows: list[dict[str, Any]] = []
    listed: list[int] = []
    factors = ordered.factors
    for n, (h, ok) in enumerate(zip(ordered.hashes.tolist(), allowed.tolist(), strict=True)):
        if not ok or not cap.take(h):
            continue
        row: dict[str, Any] = {"id": ordered.ids[n], "score": ordered.scores[n]}
        if rules.explain:
            row["because"] = ordered.because[n]
            row["source"] = ordered.sources[n]
            if factors is not None and factors[n] != 1.0:
                row["boost"] = factors[n]
        rows.append(row)
        listed.append(h)
        if len(rows) == k:
            break
    return Answer(rows, MSG_RERANK, listed=np.array(listed, placed.LE_U64).tobytes())

