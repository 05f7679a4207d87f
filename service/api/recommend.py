"""Recommendations: the three questions (the session's next items, an item's neighbours, what
is trending) answered from the store's reads and the scoring stages, and worded for the
client; the handlers of their routes.

A recommendation costs two round trips (the query items' neighbour indexes plus the trending
head; then the chosen neighbours' histories), none when the read cache holds them, and a third
only for item ids not yet in this process' name cache.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from aiohttp import web

from service import kernel
from service.api import validation
from service.api.access import client_address, is_secret
from service.api.context import (
    API_KEYS,
    SETTINGS,
    STORE,
    json_response,
    k_of,
    path_id,
    read_json,
)
from service.core import explain, scoring
from service.core.feedback import FEEDBACK_POSITIONS, Experiment, recommendation_id
from service.core.layout import ITEM_PERSON, item_hash, session_hash
from service.core.modelparams import ModelRecord
from service.core.rules import NO_RULES, CatalogueIndex, CategoryCap, Rules
from service.core.scoring import Params, Query
from service.settings import Settings
from service.store.feedback import Tally
from service.store.state import Store

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



@dataclass(frozen=True, slots=True)
class Answer:
    recommendations: list[dict[str, Any]]
    message: str
    recommendation_id: str = ""
    variant: str | None = None  # the experiment variant that scored it

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
        """Score with the shared record's parameters from now on (``service/api/model.py``
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
            shown = answer.recommendations[:FEEDBACK_POSITIONS]
            listed = kernel.hashes([row["id"] for row in shown], ITEM_PERSON)
            if await self.store.feedback.record_answer(session_id, nonce, listed, now,
                                                       asker.client):
                if name is not None:  # an experiment's answers and sessions: those recorded
                    # only, so one address weighs in the report's counts no more than its share
                    self.tally.count(serial, variant, session_id)
            else:
                self.unrecorded += 1
        return dataclasses.replace(answer, variant=name, recommendation_id=rid)

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
        hidden = await self.store.hidden_items()
        excluded = np.concatenate((hidden, _hashes(rules.exclude)))
        rows = await self._trending(k, rules, excluded, 1.0)
        return await self._stamped(Answer(rows, _short(MSG_TRENDING, len(rows), k, rules)),
                                   asker)

    async def _answer(self, query: Query, k: int, seen: scoring.U64 | None, params: Params,
                      exclude_session: int | None, rules: Rules, *,
                      fill_with_trending: bool, named: dict[int, str] | None = None
                      ) -> Answer:
        """``seen``: the session's items, not to return (None: they may be); the request's
        exclusions and filter and the hidden items are left out before the k best are chosen,
        and the trending fill skips them too, so k holds whenever k eligible items exist."""
        catalogue = await self.store.catalogue() if rules.needs_catalogue else None
        rule = rules.filter if catalogue is not None else None
        cached = None if rules.explain else \
            self.store.backend.cached_candidates(query, params, exclude_session)
        histories: list[bytes | None] = []
        similarity = np.zeros(0)
        if cached is not None:
            candidates, scores = cached
        else:
            index_blobs = await self.store.indexes(query.items)
            sessions, similarity = scoring.neighbours(query, index_blobs, params,
                                                      exclude_session)
            candidates = np.zeros(0, np.uint64)
            scores = np.zeros(0)
            if len(sessions):
                histories = await self.store.histories(sessions)
                candidates, scores = scoring.score(query, histories, similarity, params)
        if rule is not None:
            assert catalogue is not None
            kept = catalogue.admits(rule, candidates)
            candidates, scores = candidates[kept], scores[kept]
        df, n_sessions = await self.store.doc_freq(candidates) if params.idf_weight \
            else (np.zeros(0), 0.0)
        hidden = await self.store.hidden_items()
        requested = _hashes(rules.exclude)
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
        names = await self.store.item_names(best, named)
        found: list[dict[str, Any]] = [
            {"id": name, "score": sc}
            for name, sc in zip(names, kernel.relative(best_scores), strict=True)]
        if rules.explain:
            reasons = explain.because(query, histories, similarity, params, best)
            lookup = named or {}
            for row, hashes in zip(found, reasons, strict=True):
                row["because"] = [lookup[h] for h in hashes if h in lookup]
                row["source"] = "session"
        if not fill_with_trending:
            return Answer(found, _short(MSG_SIMILAR if found else MSG_NO_SIMILAR, len(found),
                                        k, rules, MSG_FEWER_SIMILAR))
        if len(found) >= k:
            return Answer(found, MSG_SESSION)
        # only now the trending head: sessions with neighbours rarely need it
        floor = float(found[-1]["score"]) if found else 1.0
        filler = await self._trending(k - len(found), rules, np.concatenate((exclude, best)),
                                      floor, cap, catalogue)
        message = MSG_POPULAR if not found else MSG_BOTH if filler else MSG_SESSION
        return Answer(found + filler, _short(message, len(found) + len(filler), k, rules))

    async def _trending(self, k: int, rules: Rules, taken: scoring.U64, ceiling: float,
                        cap: CategoryCap | None = None, catalogue: CatalogueIndex | None = None
                        ) -> list[dict[str, Any]]:
        """Up to ``k`` trending items within the rules and none of ``taken`` (hashes), scored
        into (0, ceiling] relative to the first one. ``cap`` and ``catalogue``: the answer's own
        so far (None: the fill is the whole answer, as for /popular)."""
        if rules.needs_catalogue and cap is None:
            catalogue = await self.store.catalogue()
            cap = CategoryCap(rules.max_per_category, catalogue.first_category)
        if k <= 0:
            return []
        if cap is not None and cap.limit is None:
            cap = None
        skip = set(taken.tolist())
        if rules.filter is not None and catalogue is not None:
            # the filter's items in trending order, from the process' trending snapshot (one
            # read shared by every filter: a new filter costs no Redis read)
            snapshot = await self.store.trending_snapshot()
            return _fill(catalogue.fill_order(rules.filter, snapshot.members), k, skip, cap,
                         ceiling, rules.explain)
        # what is skipped (hidden and unavailable items, the request's exclusions) is mostly
        # not trending: read a little past k first, deeper only when skipped items were there
        # (a read of one member per unavailable item cost every answer tens of milliseconds)
        depth = k + min(len(skip), 4 * k + 64)
        counts = dict(cap.counts) if cap is not None else {}
        while True:
            head = await self.store.trending_head(depth)
            if cap is not None:
                cap.counts = dict(counts)
            leader = head[0][1] if head else 0.0
            rows = _fill(_members(head, leader), k, skip, cap, ceiling, rules.explain)
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
        members = (await self.store.trending_snapshot()).members
        top = members[0][2] if members else 0.0
        return _fill(((name, h, math.pow(2.0, min(score - top, 0.0)))
                      for name, h, score in members), k, skip, cap, ceiling, rules.explain)


def _members(head: Sequence[tuple[bytes, float]], leader: float
             ) -> Iterator[tuple[str, int, float]]:
    """Trending members as (id, hash, share of the leader's score), hashed as they are used.

    Trending scores are log2 of decayed counts, so ``2^(s - s_max)`` is the share of the leader.
    """
    for member, log_score in head:
        name = member.decode("utf-8", "surrogatepass")
        yield name, int.from_bytes(item_hash(name), "little"), \
            math.pow(2.0, min(log_score - leader, 0.0))


def _fill(members: Iterable[tuple[str, int, float]], k: int, skip: set[int],
          cap: CategoryCap | None, ceiling: float, explain: bool) -> list[dict[str, Any]]:
    """The first ``k`` members not in ``skip`` that the cap allows, as answer rows."""
    rows: list[dict[str, Any]] = []
    for name, h, share in members:
        if h in skip or (cap is not None and not cap.take(h)):
            continue
        row: dict[str, Any] = {"id": name, "score": _six_decimals(ceiling * share)}
        if explain:
            row["because"] = []
            row["source"] = "trending"
        rows.append(row)
        if len(rows) == k:
            break
    return rows


def _six_decimals(score: float) -> float:
    """``score`` rounded to 6 decimals, half to even as ``kernel.relative`` rounds the session's
    scores. ``round(score, 6)`` converts through decimal digits, several times slower, which
    a fill of twenty rows per request noticed."""
    return round(score * 1e6) / 1e6


def _short(message: str, found: int, k: int, rules: Rules, wording: str = MSG_FEWER) -> str:
    """``message``, saying so when rules left fewer than ``k`` items."""
    if found >= k or not (rules.exclude or rules.filter or rules.max_per_category):
        return message
    given = [name for name, on in (("exclude", rules.exclude), ("filter", rules.filter),
                                   ("max_per_category", rules.max_per_category)) if on]
    return f"{message} {wording.format(found=found, k=k, rules=', '.join(given))}"


# --- handlers -------------------------------------------------------------------------------
RECOMMENDER = web.AppKey("recommender", Recommender)


NO_ITEMS: scoring.U64 = np.zeros(0, np.uint64)
LE_U64 = np.dtype("<u8")  # hashes are little-endian; a dtype object, not a string to parse


def _hashes(item_ids: Sequence[str]) -> scoring.U64:
    """Item hashes as u64 (read-only: they are only compared)."""
    if not item_ids:
        return NO_ITEMS
    return np.frombuffer(kernel.hashes(item_ids, ITEM_PERSON), LE_U64)


async def iid_recommend(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    req = validation.recommend_request(await read_json(request), settings, time.time())
    answer = await request.app[RECOMMENDER].recommend(req.interactions, req.k,
                                                      req.recommend_seen,
                                                      _asker(request, req.session_id),
                                                      req.rules)
    return json_response(answer.body())


def _asker(request: web.Request, session_id: str | None) -> Asker:
    """The request's session and client address; no address (no share to take) for a request
    with a secret key: the shop's own servers asking on behalf of many visitors."""
    if session_id is None or is_secret(request, request.app[API_KEYS]):
        return Asker(session_id)
    return Asker(session_id, client_address(request, request.app[SETTINGS].trusted_networks))


def _rules(request: web.Request) -> Rules:
    """The GET endpoints' rules, from the query."""
    return validation.query_rules(request.query, request.app[SETTINGS])


async def session_recommendations(request: web.Request) -> web.Response:
    session_id = path_id(request, "session_id")
    k = k_of(request)
    seen = validation.query_bool(request.query.get("recommend_seen"), "recommend_seen",
                                 default=False)
    rules = _rules(request)
    live = await request.app[STORE].live_session(session_id)
    answer = await request.app[RECOMMENDER].recommend(
        [(x.item_id, x.timestamp, x.rating) for x in live], k, seen,
        _asker(request, session_id), rules)
    return json_response(answer.body())


async def similar(request: web.Request) -> web.Response:
    item_id = path_id(request, "item_id")
    answer = await request.app[RECOMMENDER].similar(item_id, k_of(request), _rules(request),
                                                    _queried(request))
    return json_response(answer.body())


async def popular(request: web.Request) -> web.Response:
    return json_response((await request.app[RECOMMENDER].popular(
        k_of(request), _rules(request), _queried(request))).body())


def _queried(request: web.Request) -> Asker:
    """The visitor's session named in the query (``session_id``): the answer's feedback then
    counts from that session's events."""
    raw = request.query.get("session_id")
    return _asker(request, None if raw is None else validation.identifier(
        raw, "session_id", request.app[SETTINGS]))
