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
import numpy.typing as npt

from service import kernel
from service.answers import placements as placed
from service.answers.fill import LE_U64, item_hashes
from service.answers.recommender import NOBODY, Answer, Asker, Recommender
from service.core import explain, scoring
from service.core.catalogueindex import CatalogueIndex
from service.core.layout import item_hash, session_hash
from service.core.placements import Placement
from service.core.rules import NO_RULES, CategoryCap, Rules
from service.requests.rerank import MAX_RERANK_ITEMS

MSG_RERANK = ("The given items ordered for the session: those its neighbourhood scores, then "
              "those other sessions hold, then the rest in their given order.")
MSG_RERANK_FEWER = "{left} of the given items were left out by the request's rules ({rules})."
POPULAR_SHARE = 0.5
"""Where the items other sessions hold stand: below this share of the lowest score the session
gives, in proportion to how many sessions hold them."""


@dataclasses.dataclass(slots=True)
class Ordered:
    """The given items in their order for the session, with their scores (unrounded)."""

    items: Sequence[str]  # as given
    index: npt.NDArray[np.int64]  # the order, as indexes into ``items``
    hashes: scoring.U64  # the order's
    scores: scoring.F64
    sources: list[str]  # each one's source, for explain (empty without it)
    because: list[list[str]]
    factors: list[float] | None = None  # each item's boost, when the placement has boosts

    @property
    def ids(self) -> list[str]:
        return [self.items[n] for n in self.index.tolist()]


PLACES = np.arange(1, MAX_RERANK_ITEMS + 1, dtype=np.float64)
PLACES.flags.writeable = False


class Positions:
    """Where each of the given items stands in the list (1-based; 0: not given), as an
    open-addressing table the kernel probes: a request's few hundred candidates are looked up
    in one call, not one set test each."""

    def __init__(self, hashes: scoring.U64) -> None:
        capacity = 8
        while capacity < 2 * len(hashes):
            capacity *= 2
        self.keys = np.zeros(capacity, np.uint64)
        self.values = np.full(capacity, np.nan)
        kernel.insert(self.keys, self.values, hashes, PLACES[:len(hashes)])

    def of(self, items: scoring.U64) -> npt.NDArray[np.int64]:
        found, _ = kernel.lookup(self.keys, self.values, np.ascontiguousarray(items, np.uint64))
        return np.frombuffer(found, np.float64).astype(np.int64)


async def rerank(recommender: Recommender, interactions: Sequence[tuple[str, float, float]],
                 items: Sequence[str], hashes: bytes, k: int, asker: Asker = NOBODY,
                 rules: Rules = NO_RULES, placement: Placement | None = None) -> Answer:
    """``items`` (distinct; ``hashes``: theirs, as the request checked them) ordered for the
    session of ``interactions``, at most ``k``."""
    store = recommender.store
    params, serial, variant, name = recommender.scoring_params(asker, placement)
    catalogue = await store.items.index() if rules.needs_catalogue or (
        placement is not None and placement.needs_catalogue) else None
    ordered = await _ordered(recommender, interactions, items, np.frombuffer(hashes, LE_U64),
                             params, asker, rules, catalogue, placement)

    async def produce(k: int, rules: Rules, prior: bytes) -> Answer:
        return _taken(ordered, k, rules, prior, catalogue)

    answer = await recommender.with_placement(produce, k, rules, placement)
    left = len(items) - len(ordered.index)
    message = MSG_RERANK if not left else MSG_RERANK + " " + MSG_RERANK_FEWER.format(
        left=left, rules=", ".join(_given(rules)) or "hidden or unavailable items")
    return await recommender.stamped(dataclasses.replace(answer, message=message), asker,
                                     serial, variant, name, placement)


def _given(rules: Rules) -> list[str]:
    return [n for n, on in (("exclude", rules.exclude), ("filter", rules.filter)) if on]


async def _ordered(recommender: Recommender, interactions: Sequence[tuple[str, float, float]],
                   items: Sequence[str], given: scoring.U64, params: scoring.Params,
                   asker: Asker, rules: Rules, catalogue: CatalogueIndex | None,
                   placement: Placement | None) -> Ordered:
    store = recommender.store
    at = Positions(given)
    keep = np.ones(len(given) + 1, bool)  # by position; [0]: not given
    keep[at.of(np.concatenate((await store.reads.hidden_items(),
                               item_hashes(rules.exclude))))] = False
    keep[0] = False
    if rules.filter is not None:
        assert catalogue is not None
        keep[1:] &= catalogue.admits(rules.filter, given)
    hashes = [item_hash(item) for item, _, _ in interactions]
    query = scoring.build_query(hashes, [ts for _, ts, _ in interactions],
                                [r for _, _, r in interactions], params)
    exclude_session = int.from_bytes(session_hash(asker.session_id), "little") \
        if asker.session_id is not None else None
    histories: list[bytes | None] = []
    similarity = np.zeros(0)
    cached = None if rules.explain or not len(query.items) else \
        store.backend.cached_candidates(query, params, exclude_session)
    if cached is not None:
        candidates, raw, _ = cached
    elif len(query.items):
        sessions, similarity = scoring.neighbours(
            query, await store.reads.indexes(query.items), params, exclude_session)
        histories = await store.reads.histories(sessions) if len(sessions) else []
        candidates, raw, _ = scoring.score(query, histories, similarity, params) \
            if len(sessions) else scoring.NO_CANDIDATES
    else:
        candidates, raw, _ = scoring.NO_CANDIDATES
    where = at.of(candidates)
    wanted = keep[where]
    candidates, raw, where = candidates[wanted], raw[wanted], where[wanted]
    # one read for the whole list: the scored items' frequencies weigh their scores, the
    # others' order them (only learned items are cached: the ids are a client's)
    held, n_sessions = await store.reads.doc_freq(given, learned_only=True)
    df = held[where - 1] if params.idf_weight else np.zeros(0)
    # every other item is excluded from the ranking: the given ones the session scores (and
    # its own items among them, with their repeat weight) are what it ranks
    others = query.seen[~keep[at.of(query.seen)]]
    best, best_scores = scoring.rank(candidates, raw, df, n_sessions, query, params, True,
                                     others, len(candidates) + len(query.seen))
    index_bytes, score_bytes, n_scored, n_popular = kernel.arrange(
        np.ascontiguousarray(at.of(best)), best_scores, keep.view(np.uint8), held,
        POPULAR_SHARE)
    index = np.frombuffer(index_bytes, np.int64)
    scores = np.frombuffer(score_bytes, np.float64)
    sources = (["session"] * n_scored + ["popular"] * n_popular
               + ["unknown"] * (len(index) - n_scored - n_popular)) if rules.explain else []
    order = given[index]
    found = None
    boosts = () if placement is None else placement.boosts
    if boosts:
        assert catalogue is not None
        found = placed.factors(catalogue, boosts, order)
        boosted = placed.within(scores * found, 1.0)
        known = n_scored + n_popular  # the unknown stay last, in their given order
        resort = np.concatenate((np.argsort(-boosted[:known], kind="stable"),
                                 np.arange(known, len(order))))
        order, found, scores, index = order[resort], found[resort], boosted[resort], \
            index[resort]
        sources = [sources[n] for n in resort.tolist()] if sources else sources
    because: list[list[str]] = []
    if rules.explain:
        lookup = {int.from_bytes(h, "little"): item for h, (item, _, _)
                  in zip(hashes, interactions, strict=True)}
        reasons = explain.because(query, histories, similarity, params, order) \
            if n_scored else [[] for _ in range(len(order))]
        because = [[lookup[h] for h in behind if h in lookup] for behind in reasons]
    return Ordered(items, index, order, scores, sources, because,
                   None if found is None else found.tolist())


def _taken(ordered: Ordered, k: int, rules: Rules, prior: bytes,
           catalogue: CatalogueIndex | None) -> Answer:
    """The first ``k`` of the order that ``rules`` (a promotion's filter among them) and the
    category cap allow."""
    if not (rules.exclude or rules.filter or rules.max_per_category or rules.explain
            or prior):  # the common case: the first k as they stand
        first = ordered.hashes[:k].astype(LE_U64).tobytes()
        encoded = kernel.rows_json(ordered.items, ordered.index, ordered.scores, k)
        if encoded is not None:
            return Answer([], MSG_RERANK, listed=first, encoded=encoded)
        return Answer(kernel.rows(ordered.items, ordered.index, ordered.scores, k), MSG_RERANK,
                      listed=first)
    allowed = ~np.isin(ordered.hashes, item_hashes(rules.exclude))
    if rules.filter is not None:
        assert catalogue is not None
        allowed &= catalogue.admits(rules.filter, ordered.hashes)
    cap = CategoryCap(rules.max_per_category,
                      catalogue.first_category if catalogue is not None else {})
    for h in np.frombuffer(prior, LE_U64).tolist():
        cap.take(h)
    rows: list[dict[str, Any]] = []
    listed: list[int] = []
    factors = ordered.factors
    ids, scores = ordered.ids, (np.rint(ordered.scores * 1e6) / 1e6).tolist()
    for n, (h, ok) in enumerate(zip(ordered.hashes.tolist(), allowed.tolist(), strict=True)):
        if not ok or not cap.take(h):
            continue
        row: dict[str, Any] = {"id": ids[n], "score": scores[n]}
        if rules.explain:
            row["because"] = ordered.because[n]
            row["source"] = ordered.sources[n]
            if factors is not None and factors[n] != 1.0:
                row["boost"] = factors[n]
        rows.append(row)
        listed.append(h)
        if len(rows) == k:
            break
    return Answer(rows, MSG_RERANK, listed=np.array(listed, LE_U64).tobytes())

