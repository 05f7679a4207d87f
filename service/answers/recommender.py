"""Answering the three questions (the session's next items, an item's neighbours, what is
trending) from the store's reads and the scoring stages: what the HTTP handlers
(``service/api/recommend.py``), the offline evaluation and the tuning runs all call.

A recommendation costs two round trips (the query items' neighbour indexes plus the trending
head; then the chosen neighbours' histories), none when the read cache holds them, and a third
only for item ids not yet in this process' name cache.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from service import kernel
from service.answers import placements as placed
from service.answers.explore import explore
from service.answers.fill import (
    LE_U64,
    MSG_BOTH,
    MSG_FEWER_SIMILAR,
    MSG_NO_SIMILAR,
    MSG_POPULAR,
    MSG_SESSION,
    MSG_SIMILAR,
    MSG_TRENDING,
    item_hashes,
    row_order,
    worded,
)
from service.answers.fromrecord import from_record
from service.answers.trending import trending
from service.core import explain, reorder, scoring
from service.core.feedback import (
    FEEDBACK_POSITIONS,
    NO_PLACEMENT,
    Experiment,
    recommendation_id,
)
from service.core.layout import ITEM_PERSON, item_hash, session_hash
from service.core.modelparams import ModelRecord
from service.core.placements import Placement
from service.core.rules import NO_RULES, CategoryCap, Rules
from service.core.scoring import Params, Query
from service.core.sequence import SequenceModel
from service.requests.jsonutil import fragment, loads
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
    placement: str | None = None  # the placement it answered for
    encoded: bytes | None = None
    """The rows already written as a JSON array, by the kernel (a long reranked list: as dicts
    and encoded they cost more than the rest of its answer); ``recommendations`` is then
    empty: ``rows()`` reads either."""

    def rows(self) -> list[dict[str, Any]]:
        return self.recommendations if self.encoded is None else loads(self.encoded)

    def empty(self) -> bool:
        return not self.recommendations and self.encoded in (None, b"[]")

    def body(self) -> dict[str, Any]:
        rows = self.recommendations if self.encoded is None else fragment(self.encoded)
        body = {"recommendations": rows, "message": self.message,
                "recommendation_id": self.recommendation_id}
        if self.variant is not None:
            body["variant"] = self.variant
        if self.placement is not None:
            body["placement"] = self.placement
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
        self.placements: dict[str, Placement] = {}
        self.placement_answers: Counter[bytes] = Counter()
        """Answers per placement (by code), added to Redis every second."""
        self.placement_params: dict[str, Params] = {}
        """The parameters of each placement that sets some, over the shared record's."""
        self.sequence: SequenceModel | None = None
        """The sequence model the learned order reads (``order_sequence``), once one is
        trained: ``service/api/parameters.py`` follows the stored one."""
        self.sequence_version = 0
        self.use(ModelRecord())

    def use(self, record: ModelRecord) -> None:
        """Score with the shared record's parameters from now on (``service/api/parameters.py``
        follows the record)."""
        self.record = record
        self.params = record.params(self.base)
        cap = self.params.index_cap
        self.similar_params = Params(1, cap, cap, 0.0, index_cap=cap)
        self.use_experiment(self.signing_key, self.experiment)
        self.use_placements(self.placements)

    def use_placements(self, placements: dict[str, Placement]) -> None:
        """Answer requests naming a placement with these (``service/api/placements.py``
        follows them)."""
        self.placements = placements
        self.placement_params = {
            name: dataclasses.replace(self.params, **cast(dict[str, Any], dict(p.params)))
            for name, p in placements.items() if p.params}

    def use_experiment(self, signing_key: bytes, experiment: Experiment | None) -> None:
        """Sign answers with ``signing_key``; score sessions with their variant's parameters
        over the current version while ``experiment`` runs."""
        self.signing_key = signing_key
        self.experiment = experiment
        self.variant_params = [] if experiment is None else [
            dataclasses.replace(self.params, **cast(dict[str, Any], dict(v.params)))
            for v in experiment.variants]

    async def stamped(self, answer: Answer, asker: Asker, serial: int = 0, variant: int = 0,
                      name: str | None = None, placement: Placement | None = None) -> Answer:
        """The answer with its id; given to a session, its list recorded first, so that the
        session's impressions and clicks, which may follow at once, find it."""
        session_id = asker.session_id
        now = time.time()
        code = NO_PLACEMENT if placement is None else placement.code
        rid, nonce = recommendation_id(self.signing_key, session_id, serial, variant, now, code)
        if session_id is not None and not answer.empty():
            listed = answer.listed[:8 * FEEDBACK_POSITIONS] if answer.listed else kernel.hashes(
                [row["id"] for row in answer.rows()[:FEEDBACK_POSITIONS]], ITEM_PERSON)
            if await self.store.feedback.record_answer(session_id, nonce, listed, now,
                                                       asker.client):
                # an experiment's and a placement's answers (and sessions): those recorded
                # only, so one address weighs in the reports' counts no more than its share
                if name is not None:
                    self.tally.count(serial, variant, session_id)
                if placement is not None:
                    self.placement_answers[code] += 1
            else:
                self.unrecorded += 1
        return Answer(answer.recommendations, answer.message, rid, name,
                      placement=None if placement is None else placement.name,
                      encoded=answer.encoded)

    def scoring_params(self, asker: Asker, placement: Placement | None
                       ) -> tuple[Params, int, int, str | None]:
        """The parameters a session's request is scored with (the placement's, the variant's
        of a running experiment over them), and the experiment's serial, variant index and
        variant name (0, 0, None: no experiment)."""
        session_id = asker.session_id
        params = self.params if placement is None else \
            self.placement_params.get(placement.name, self.params)
        experiment = self.experiment
        if session_id is None or experiment is None or (experiment.placement is not None and (
                placement is None or placement.name != experiment.placement)):
            return params, 0, 0, None
        variant = experiment.assign(session_id)
        chosen = experiment.variants[variant]
        params = self.variant_params[variant] if params is self.params else \
            dataclasses.replace(params, **cast(dict[str, Any], dict(chosen.params)))
        return params, experiment.serial, variant, chosen.name

    async def recommend(self, interactions: Sequence[tuple[str, float, float]], k: int,
                        recommend_seen: bool, asker: Asker = NOBODY,
                        rules: Rules = NO_RULES, placement: Placement | None = None
                        ) -> Answer:
        session_id = asker.session_id
        params, serial, variant, name = self.scoring_params(asker, placement)
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
        answer = await self.with_placement(lambda k, r, prior: self.answer(
            query, k, seen, params, exclude_session, r, fill_with_trending=True, named=named,
            placement=placement, prior=prior), k, rules, placement)
        if placement is not None and placement.explore is not None:  # before the answer is
            # stamped: its record lists the new items, so their feedback counts
            answer = await explore(self, answer, [i for i, _, _ in interactions], k,
                                   placement.explore.share, placement.explore.max_age_days,
                                   rules)
        return await self.stamped(answer, asker, serial, variant, name, placement)

    async def similar(self, item_id: str, k: int, rules: Rules = NO_RULES,
                      asker: Asker = NOBODY, placement: Placement | None = None) -> Answer:
        h = item_hash(item_id)
        query = scoring.build_query([h], [0.0], [1.0], self.similar_params)
        named = {int.from_bytes(h, "little"): item_id}
        return await self.stamped(await self.with_placement(lambda k, r, prior: self.answer(
            query, k, query.seen, self.similar_params, None, r, fill_with_trending=False,
            named=named, placement=placement, prior=prior), k, rules, placement), asker,
            placement=placement)

    async def popular(self, k: int, rules: Rules = NO_RULES, asker: Asker = NOBODY,
                      placement: Placement | None = None) -> Answer:
        async def produce(k: int, rules: Rules, prior: bytes) -> Answer:
            hidden = await self.store.reads.hidden_items()
            excluded = np.concatenate((hidden, item_hashes(rules.exclude)))
            hashes: list[int] = []
            cap = catalogue = None
            if prior and rules.max_per_category is not None:
                catalogue = await self.store.items.index()
                cap = CategoryCap(rules.max_per_category, catalogue.first_category)
                for h in np.frombuffer(prior, LE_U64).tolist():
                    cap.take(h)
            rows = await trending(self.store, k, rules, excluded, 1.0, hashes, cap, catalogue,
                                  placement)
            return Answer(rows, worded(MSG_TRENDING, len(rows), k, rules),
                          listed=_listed(hashes))
        return await self.stamped(await self.with_placement(produce, k, rules, placement),
                                  asker, placement=placement)

    async def with_placement(self, produce: placed.Produce, k: int, rules: Rules,
                             placement: Placement | None) -> Answer:
        """The answer ``produce`` gives, with the placement's promotion if it has one."""
        if placement is None or placement.promote is None:
            return cast(Answer, await produce(k, rules, b""))
        return cast(Answer, await placed.promoted(produce, k, rules, placement.promote))

    async def answer(self, query: Query, k: int, seen: scoring.U64 | None, params: Params,
                      exclude_session: int | None, rules: Rules, *,
                      fill_with_trending: bool, named: dict[int, str] | None = None,
                      placement: Placement | None = None, prior: bytes = b""
                      ) -> Answer:
        """``seen``: the session's items, not to return (None: they may be); the request's
        exclusions and filter and the hidden items are left out before the k best are chosen,
        and the trending fill skips them too, so k holds whenever k eligible items exist."""
        reads = self.store.reads
        boosts = () if placement is None else placement.boosts
        catalogue = await self.store.items.index() \
            if rules.needs_catalogue or boosts or prior else None
        rule = rules.filter if catalogue is not None else None
        cached = None if rules.explain else \
            self.store.backend.cached_candidates(query, params, exclude_session)
        histories: list[bytes | None] = []
        similarity = np.zeros(0)
        scored = scoring.NO_CANDIDATES
        if cached is not None:
            scored = cached
        else:
            index_blobs = await reads.indexes(query.items)
            sessions, similarity = scoring.neighbours(query, index_blobs, params,
                                                      exclude_session)
            if len(sessions):
                histories = await reads.histories(sessions)
                scored = scoring.score(query, histories, similarity, params)
        candidates, scores = scored.items, scored.scores
        if rule is not None:
            assert catalogue is not None
            candidates, scores = catalogue.keep(rule, candidates, scores)
        if boosts:
            assert catalogue is not None
            scores = scores * placed.factors(catalogue, boosts, candidates)
        df, n_sessions = (reads.known_doc_freq(candidates) or await reads.doc_freq(candidates)) \
            if params.idf_weight else (b"", 0.0)
        hidden = await reads.hidden_items()
        requested = item_hashes(rules.exclude)
        exclude = np.concatenate((hidden, requested) if seen is None
                                 else (seen, hidden, requested))
        if rule is not None and seen is None:  # repeats, within the filter too
            assert catalogue is not None
            exclude = np.concatenate((exclude, query.seen[~catalogue.admits(rule,
                                                                              query.seen)]))
        capped = catalogue is not None and rules.max_per_category is not None
        order = reorder.order_of(params)
        table = reads.frequency_table() if order.active and not capped else None
        found_order = None if table is None else reorder.ranked(
            order, self.sequence, candidates, scores, df, table, query, params, seen is None,
            exclude, scored, k)
        if found_order is not None:
            best, best_scores = found_order
        else:
            best, best_scores = scoring.rank(candidates, scores, df, n_sessions, query, params,
                                             seen is None, exclude,
                                             len(candidates) + len(query.seen) if capped
                                             else order.depth(k))
        if order.active and found_order is None:
            best_df, n_sessions = reads.known_doc_freq(best) or await reads.doc_freq(best)
            best, best_scores = reorder.served(order, self.sequence, best, best_scores, best_df,
                                               n_sessions, query, scored,
                                               len(best) if capped else k)
        cap = CategoryCap(rules.max_per_category,
                          catalogue.first_category if catalogue is not None else {})
        for h in np.frombuffer(prior, LE_U64).tolist():  # listed ahead of this answer
            cap.take(h)
        if capped:
            keep: list[int] = []
            for n, h in enumerate(best.tolist()):
                if cap.take(h):
                    keep.append(n)
                    if len(keep) == k:
                        break
            best, best_scores = best[keep], best_scores[keep]
        names = await reads.item_names(best, named)
        listed = best.astype("<u8").tobytes()
        if fill_with_trending and not rules.explain and len(names) >= k:
            # the common answer, k rows of the session's own: written as JSON by the kernel,
            # not as k dicts for the encoder to walk (None: an id it cannot write)
            encoded = kernel.rows_json(names, row_order(len(names)),
                                       best_scores / best_scores[0], k)
            if encoded is not None:
                return Answer([], MSG_SESSION, listed=listed, encoded=encoded)
        found: list[dict[str, Any]] = [
            {"id": name, "score": sc}
            for name, sc in zip(names, kernel.relative(best_scores), strict=True)]
        if rules.explain:
            reasons = explain.because(query, histories, similarity, params, best)
            lookup = named or {}
            for row, behind in zip(found, reasons, strict=True):
                row["because"] = [lookup[h] for h in behind if h in lookup]
                row["source"] = "session"
            if boosts:
                assert catalogue is not None
                placed.mark_boosts(found, placed.factors(catalogue, boosts, best))
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
        filler = await trending(self.store, k - len(found), rules,
                                np.concatenate((exclude, best)), floor, filled, cap, catalogue,
                                placement)
        message = MSG_POPULAR if not found else MSG_BOTH if filler else MSG_SESSION
        return Answer(found + filler, worded(message, len(found) + len(filler), k, rules),
                      listed=listed + _listed(filled))


def _listed(hashes: list[int]) -> bytes:
    """Item hashes as an answer's record lists them (8 bytes each, little-endian)."""
    return np.array(hashes, dtype="<u8").tobytes() if hashes else b""
