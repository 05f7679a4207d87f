"""Recommendations: the three questions (the session's next items, an item's neighbours, what
is trending) answered from the store's reads and the scoring stages, and worded for the
client; the handlers of their routes.

A recommendation costs two round trips (the query items' neighbour indexes plus the trending
head; then the chosen neighbours' histories), none when the read cache holds them, and a third
only for item ids not yet in this process' name cache.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from aiohttp import web

from service import kernel
from service.api import validation
from service.api.context import SETTINGS, STORE, json_response, k_of, path_id, read_json
from service.core import scoring
from service.core.layout import item_hash, session_hash
from service.core.scoring import Params, Query
from service.settings import Settings
from service.store.state import Store

MSG_SESSION = "Recommendations based on session interactions."
MSG_BOTH = "Recommendations based on session interactions, completed with trending items."
MSG_POPULAR = "Trending items: the session gives no co-visitation signal yet."
MSG_SIMILAR = "Items most often visited in the same sessions as this item."
MSG_NO_SIMILAR = "No session has visited this item with another one yet."
MSG_TRENDING = "Trending items (time-decayed popularity)."


@dataclass(frozen=True, slots=True)
class Answer:
    recommendations: list[dict[str, Any]]
    message: str

    def body(self) -> dict[str, Any]:
        return {"recommendations": self.recommendations, "message": self.message}


class Recommender:
    """The answers, over one store. ``similar`` asks the same stages with one query item, no
    sequence weighting and every indexed session as a candidate neighbour."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.params = Params.from_settings(settings)
        self.similar_params = Params(1, settings.index_cap, settings.index_cap, 0.0,
                                     index_cap=settings.index_cap)

    async def recommend(self, interactions: Sequence[tuple[str, float, float]], k: int,
                        recommend_seen: bool, session_id: str | None = None,
                        exclude: Sequence[str] = ()) -> Answer:
        hashes = [item_hash(item) for item, _, _ in interactions]
        query = scoring.build_query(hashes, [ts for _, ts, _ in interactions],
                                    [r for _, _, r in interactions], self.params)
        exclude_session = (int.from_bytes(session_hash(session_id), "little")
                           if session_id is not None else None)
        seen = None if recommend_seen else query.seen
        # the request names its own items (recommend_seen may return them): for this answer
        # only, never into the shared name cache
        named = {int.from_bytes(h, "little"): item
                 for h, (item, _, _) in zip(hashes, interactions, strict=True)} \
            if recommend_seen else None
        return await self._answer(query, k, seen, self.params, exclude_session,
                                  fill_with_trending=True, named=named,
                                  excluded=_hashes(exclude))

    async def similar(self, item_id: str, k: int, exclude: Sequence[str] = ()) -> Answer:
        h = item_hash(item_id)
        query = scoring.build_query([h], [0.0], [1.0], self.similar_params)
        return await self._answer(query, k, query.seen, self.similar_params, None,
                                  fill_with_trending=False, excluded=_hashes(exclude))

    async def popular(self, k: int, exclude: Sequence[str] = ()) -> Answer:
        hidden = await self.store.hidden_items()
        excluded = _hashes(exclude)
        trending = await self.store.trending_head(k + len(hidden) + len(excluded))
        return Answer(_normalised_trending(trending, k, {int(h) for h in hidden}
                                           | {int(h) for h in excluded}, 1.0), MSG_TRENDING)

    async def _answer(self, query: Query, k: int, seen: scoring.U64 | None, params: Params,
                      exclude_session: int | None, *, fill_with_trending: bool,
                      named: dict[int, str] | None = None,
                      excluded: scoring.U64 | None = None) -> Answer:
        """``seen``: the session's items, not to return (None: they may be); ``excluded``:
        the request's own exclusions. Both are left out before the k best are chosen, and
        the trending fill skips them too, so k holds whenever k other items exist."""
        requested = excluded if excluded is not None else np.zeros(0, np.uint64)
        extra = (len(query.seen) if seen is not None else 0) + len(requested)
        cached = self.store.backend.cached_candidates(query, params, exclude_session)
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
        df, n_sessions = await self.store.doc_freq(candidates) if params.idf_weight \
            else (np.zeros(0), 0.0)
        hidden = await self.store.hidden_items()
        exclude = np.concatenate((hidden, requested) if seen is None
                                 else (seen, hidden, requested))
        best, best_scores = scoring.rank(candidates, scores, df, n_sessions, query, params,
                                         seen is None, exclude, k)
        names = await self.store.item_names(best, named)
        relative = kernel.relative(best_scores)
        found: list[dict[str, Any]] = [{"id": name, "score": sc}
                                       for name, sc in zip(names, relative, strict=True)]
        if not fill_with_trending:
            return Answer(found, MSG_SIMILAR if found else MSG_NO_SIMILAR)
        if len(found) >= k:
            return Answer(found, MSG_SESSION)
        # only now the trending head: sessions with neighbours rarely need it
        trending = await self.store.trending_head(k + extra + len(hidden))
        taken: set[Any] = {r["id"] for r in found} | {int(x) for x in exclude}
        floor = float(found[-1]["score"]) if found else 1.0
        filler = _normalised_trending(trending, k - len(found), taken, floor)
        if not found:
            return Answer(filler, MSG_POPULAR)
        return Answer(found + filler, MSG_BOTH if filler else MSG_SESSION)


def _normalised_trending(trending: Sequence[tuple[bytes, float]], k: int, taken: set[Any],
                         ceiling: float) -> list[dict[str, Any]]:
    """Trending members as answer rows scaled into (0, ceiling], skipping taken ids/hashes.

    Trending scores are log2 of decayed counts, so ``2^(s - s_max)`` is the share of the leader.
    """
    rows: list[dict[str, Any]] = []
    if not trending:
        return rows
    leader = trending[0][1]
    for member, log_score in trending:
        name = member.decode("utf-8", "surrogatepass")
        if name in taken or int.from_bytes(item_hash(name), "little") in taken:
            continue
        rows.append({"id": name,
                     "score": round(ceiling * math.pow(2.0, log_score - leader), 6)})
        if len(rows) == k:
            break
    return rows


# --- handlers -------------------------------------------------------------------------------
RECOMMENDER = web.AppKey("recommender", Recommender)


def _hashes(item_ids: Sequence[str]) -> scoring.U64:
    return scoring.as_u64([item_hash(i) for i in item_ids])


def _exclude(request: web.Request) -> tuple[str, ...]:
    """The GET endpoints' ``exclude`` (repeatable)."""
    return validation.exclusions(request.query.getall("exclude", []), "exclude",
                                 request.app[SETTINGS])


async def iid_recommend(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    req = validation.recommend_request(await read_json(request), settings, time.time())
    answer = await request.app[RECOMMENDER].recommend(req.interactions, req.k,
                                                      req.recommend_seen, exclude=req.exclude)
    return json_response(answer.body())


async def session_recommendations(request: web.Request) -> web.Response:
    session_id = path_id(request, "session_id")
    k = k_of(request)
    seen = validation.query_bool(request.query.get("recommend_seen"), "recommend_seen",
                                 default=False)
    exclude = _exclude(request)
    live = await request.app[STORE].live_session(session_id)
    answer = await request.app[RECOMMENDER].recommend(
        [(x.item_id, x.timestamp, x.rating) for x in live], k, seen, session_id=session_id,
        exclude=exclude)
    return json_response(answer.body())


async def similar(request: web.Request) -> web.Response:
    item_id = path_id(request, "item_id")
    answer = await request.app[RECOMMENDER].similar(item_id, k_of(request), _exclude(request))
    return json_response(answer.body())


async def popular(request: web.Request) -> web.Response:
    return json_response((await request.app[RECOMMENDER].popular(
        k_of(request), _exclude(request))).body())
