"""Answering the three questions (the session's next items, an item's neighbours, what is
trending) from the store's reads and the scoring stages: what the HTTP handlers
(``service/api/recommend.py``), the offline evaluation and the tuning runs all call.

A recommendation costs two round trips (the query items' neighbour indexes plus the trending
head; then the chosen neighbours' histories), none when the read cache holds them, and a third
only for item ids not yet in this process' name cache.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from service import kernel
from service.answers.fill import (
    MSG_BOTH,
    MSG_FEWER_SIMILAR,
    MSG_NO_SIMILAR,
    MSG_POPULAR,
    MSG_SESSION,
    MSG_SIMILAR,
    MSG_TRENDING,
    fill,
    item_hashes,
    trending_members,
    worded,
)
from service.answers.fromrecord import from_record
from service.core import explain, scoring
from service.core.catalogueindex import CatalogueIndex
from service.core.feedback import FEEDBACK_POSITIONS, Experiment, recommendation_id
from service.core.layout import ITEM_PERSON, item_hash, session_hash
from service.core.modelparams import ModelRecord
from service.core.rules import NO_RULES, CategoryCap, Rules
from service.core.scoring import Params, Query
from service.settings import Settings
from service.store.feedback import Tally
from service.store.state import Store


@dataclass(frozen=True, slots=True)
class Answer:
    recommendations: list[dict[str, Any]]
    message: str
    recommendation_id: str = ""
    variant: str | None = None  # the experiment variant that scored it
    listed: bytes = b""
    """The rows' item hashes (8 bytes each, in order), as the answer found them: its record
    lists them without hashing the ids again."""

    def body(self) -> dict[str, Any]:
        body = {"recommendations": self.recommendations, "message": self.message,
                "recommendation_id": self.recommendation_id}
        if self.variant is not None:
            body["variant"] = self.variant
        return body


@dataclass(frozen=True, slots=True)
class Asker:
    """Who asks: the visitor's session (its experiment variant; the session whose events may
    count feedback on the answer) and the client address (whose share of answers with
    feedback it takes)."""

    session_id: str | None = None
    client: str = ""


NOBODY = Asker()


class Recommender:
    """The answers, over one store. ``similar`` asks the same stages with one query item, no
    sequence weighting and every indexed session as a candidate neighbour."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.base = Params.from_settings(settings)
        """The process' flags and environment: what the shared record's values overlay."""
        self.signing_key = b""
        self.experiment: Experiment | None = None
        self.variant_params: list[Params] = []
        self.tally = Tally()
        """Answers and sessions per variant, added to Redis every second (``follow_model``)."""
        self.unrecorded = 0
        """Answers whose record the hour's budget refused (``--feedback-mb``; /metrics)."""
        self.use(ModelRecord())

    def use(self, record: ModelRecord) -> None:
        """Score with the shared record's parameters from now on (``service/api/parameters.py``
        follows the record)."""
        self.record = record
        self.params = record.params(self.base)
        cap = self.params.index_cap
        self.similar_params = Params(1, cap, cap, 0.0, index_cap=cap)
        self.use_experiment(self.signing_key, self.experiment)

    def use_experiment(self, signing_key: bytes, experiment: Experiment | None) -> None:
        """Sign answers with ``signing_key``; score sessions with their variant's parameters
        over the current version while ``experiment`` runs."""
        self.signing_key = signing_key
        self.experiment = experiment
        self.variant_params = [] if experiment is None else [
            dataclasses.replace(self.params, **cast(dict[str, Any], dict(v.params)))
            for v in experiment.variants]

    async def _stamped(self, answer: Answer, asker: Asker, serial: int = 0, variant: int = 0,
                       name: str | None = None) -> Answer:
        """The answer with its id; given to a session, its list recorded first, so that the
        session's impressions and clicks, which may follow at once, find it."""
        session_id = asker.session_id
        now = time.time()
        rid, nonce = recommendation_id(self.signing_key, session_id, serial, variant, now)
        if session_id is not None and answer.recommendations:
            listed = answer.listed[:8 * FEEDBACK_POSITIONS] if answer.listed else kernel.hashes(
                [row["id"] for row in answer.recommendations[:FEEDBACK_POSITIONS]], ITEM_PERSON)
            if await self.store.feedback.record_answer(session_id, nonce, listed, now,
                                                       asker.client):
                if name is not None:  # an experiment's answers and sessions: those recorded
                    # only, so one address weighs in the report's counts no more than its share
                    self.tally.count(serial, variant, session_id)
            else:
                self.unrecorded += 1
        return Answer(answer.recommendations, answer.message, rid, name)

    async def recommend(self, interactions: Sequence[tuple[str, float, float]], k: int,
                        recommend_seen: bool, asker: Asker = NOBODY,
                        rules: Rules = NO_RULES) -> Answer:
        session_id = asker.session_id
        params, serial, variant, name = self.params, 0, 0, None
        experiment = self.experiment
        if session_id is not None and experiment is not None:
            variant = experiment.assign(session_id)
            serial, name = experiment.serial, experiment.variants[variant].name
            params = self.variant_params[variant]
        hashes = [item_hash(item) for item, _, _ in interactions]
        query = scoring.build_query(hashes, [ts for _, ts, _ in interactions],
                                    [r for _, _, r in interactions], params)
        exclude_session = (int.from_bytes(session_hash(session_id), "little")
                           if session_id is not None else None)
        seen = None if recommend_seen else query.seen
        # the request names its own items (recommend_seen may return them; explanations
        # name them): for this answer only, never into the shared name cache
        named = {int.from_bytes(h, "little"): item
                 for h, (item, _, _) in zip(hashes, interactions, strict=True)} \
            if recommend_seen or rules.explain else None
        answer = await self._answer(query, k, seen, params, exclude_session, rules,
                                    fill_with_trending=True, named=named)
        return await self._stamped(answer, asker, serial, variant, name)

    async def similar(self, item_id: str, k: int, rules: Rules = NO_RULES,
                      asker: Asker = NOBODY) -> Answer:
        h = item_hash(item_id)
        query = scoring.build_query([h], [0.0], [1.0], self.similar_params)
        return await self._stamped(await self._answer(
            query, k, query.seen, self.similar_params, None, rules, fill_with_trending=False,
            named={int.from_bytes(h, "little"): item_id}), asker)

    async def popular(self, k: int, rules: Rules = NO_RULES, asker: Asker = NOBODY) -> Answer:
        hidden = await self.store.reads.hidden_items()
        excluded = np.concatenate((hidden, item_hashes(rules.exclude)))
        hashes: list[int] = []
        rows = await self._trending(k, rules, excluded, 1.0, hashes)
        return await self._stamped(Answer(rows, worded(MSG_TRENDING, len(rows), k, rules),
                                          listed=_listed(hashes)), asker)

    async def _answer(self, query: Query, k: int, seen: scoring.U64 | None, params: Params,
                      exclude_session: int | None, rules: Rules, *,
                      fill_with_trending: bool, named: dict[int, str] | None = None
                      ) -> Answer:
        """``seen``: the session's items, not to return (None: they may be); the request's
        exclusions and filter and the hidden items are left out before the k best are chosen,
        and the trending fill skips them too, so k holds whenever k eligible items exist."""
        catalogue = await self.store.items.index() if rules.needs_catalogue else None
        rule = rules.filter if catalogue is not None else None
        cached = None if rules.explain else \
            self.store.backend.cached_candidates(query, params, exclude_session)
        histories: list[bytes | None] = []
        similarity = np.zeros(0)
        if cached is not None:
            candidates, scores = cached
        else:
            index_blobs = await self.store.reads.indexes(query.items)
            sessions, similarity = scoring.neighbours(query, index_blobs, params,
                                                      exclude_session)
            candidates = np.zeros(0, np.uint64)
            scores = np.zeros(0)
            if len(sessions):
                histories = await self.store.reads.histories(sessions)
                candidates, scores = scoring.score(query, histories, similarity, params)
        if rule is not None:
            assert catalogue is not None
            candidates, scores = catalogue.keep(rule, candidates, scores)
        df, n_sessions = await self.store.reads.doc_freq(candidates) if params.idf_weight \
            else (np.zeros(0), 0.0)
        hidden = await self.store.reads.hidden_items()
        requested = item_hashes(rules.exclude)
        exclude = np.concatenate((hidden, requested) if seen is None
                                 else (seen, hidden, requested))
        if rule is not None and seen is None:  # repeats, within the filter too
            assert catalogue is not None
            exclude = np.concatenate((exclude, query.seen[~catalogue.admits(rule,
                                                                              query.seen)]))
        capped = catalogue is not None and rules.max_per_category is not None
        best, best_scores = scoring.rank(candidates, scores, df, n_sessions, query, params,
                                         seen is None, exclude,
                                         len(candidates) + len(query.seen) if capped else k)
        cap = CategoryCap(rules.max_per_category,
                          catalogue.first_category if catalogue is not None else {})
        if capped:
            keep: list[int] = []
            for n, h in enumerate(best.tolist()):
                if cap.take(h):
                    keep.append(n)
                    if len(keep) == k:
                        break
            best, best_scores = best[keep], best_scores[keep]
        names = await self.store.reads.item_names(best, named)
        found: list[dict[str, Any]] = [
            {"id": name, "score": sc}
            for name, sc in zip(names, kernel.relative(best_scores), strict=True)]
        if rules.explain:
            reasons = explain.because(query, histories, similarity, params, best)
            lookup = named or {}
            for row, behind in zip(found, reasons, strict=True):
                row["because"] = [lookup[h] for h in behind if h in lookup]
                row["source"] = "session"
        listed = best.astype("<u8").tobytes()
        if not fill_with_trending:  # similar: fewer than k, completed from the record
            completed = await from_record(self.store, found, listed, query.items, k, rules, cap)
            if completed is not None:
                rows, message, listed = completed
                return Answer(rows, message, listed=listed)
            return Answer(found, worded(MSG_SIMILAR if found else MSG_NO_SIMILAR, len(found),
                                        k, rules, MSG_FEWER_SIMILAR), listed=listed)
        if len(found) >= k:
            return Answer(found, MSG_SESSION, listed=listed)
        # only now the trending head: sessions with neighbours rarely need it
        floor = float(found[-1]["score"]) if found else 1.0
        filled: list[int] = []
        filler = await self._trending(k - len(found), rules, np.concatenate((exclude, best)),
                                      floor, filled, cap, catalogue)
        message = MSG_POPULAR if not found else MSG_BOTH if filler else MSG_SESSION
        return Answer(found + filler, worded(message, len(found) + len(filler), k, rules),
                      listed=listed + _listed(filled))

    async def _trending(self, k: int, rules: Rules, taken: scoring.U64, ceiling: float,
                        hashes: list[int], cap: CategoryCap | None = None,
                        catalogue: CatalogueIndex | None = None) -> list[dict[str, Any]]:
        """Up to ``k`` trending items within the rules and none of ``taken`` (hashes), scored
        into (0, ceiling] relative to the first one; their hashes in ``hashes``. ``cap`` and
        ``catalogue``: the answer's own so far (None: the fill is the whole answer, as for
        /popular)."""
        if rules.needs_catalogue and cap is None:
            catalogue = await self.store.items.index()
            cap = CategoryCap(rules.max_per_category, catalogue.first_category)
        if k <= 0:
            return []
        if cap is not None and cap.limit is None:
            cap = None
        skip = set(taken.tolist())
        if rules.filter is not None and catalogue is not None:
            # the filter's items in trending order, from the process' trending snapshot (one
            # read shared by every filter: a new filter costs no Redis read)
            snapshot = await self.store.reads.trending_snapshot()
            return fill(catalogue.fill_order(rules.filter, snapshot.members, snapshot.score_of),
                        k, skip, cap, ceiling, rules.explain, hashes)
        # what is skipped (hidden and unavailable items, the request's exclusions) is mostly
        # not trending: read a little past k first, deeper only when skipped items were there
        # (a read of one member per unavailable item cost every answer tens of milliseconds)
        depth = k + min(len(skip), 4 * k + 64)
        counts = dict(cap.counts) if cap is not None else {}
        while True:
            head = await self.store.reads.trending_head(depth)
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
        members = (await self.store.reads.trending_snapshot()).members
        top = members[0][2] if members else 0.0
        hashes.clear()
        return fill(((name, h, math.pow(2.0, min(score - top, 0.0)))
                     for name, h, score in members), k, skip, cap, ceiling, rules.explain,
                    hashes)


def _listed(hashes: list[int]) -> bytes:
    """Item hashes as an answer's record lists them (8 bytes each, little-endian)."""
    return np.array(hashes, dtype="<u8").tobytes() if hashes else b""
