"""The handlers of the recommendation routes: each reads its request, asks the process'
``Recommender`` (``service/answers``) and writes its answer."""

from __future__ import annotations

import time

from aiohttp import web

from service.answers import together
from service.answers.recommender import Answer, Asker, Recommender
from service.answers.rerank import rerank
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
from service.core.placements import Placement, overlay
from service.core.rules import Rules
from service.requests.recommend import recommend_request
from service.requests.rerank import rerank_request
from service.requests.rules import RULE_FIELDS, query_rules
from service.requests.values import Invalid, identifier, placement_name, query_bool

RECOMMENDER = web.AppKey("recommender", Recommender)


ASKED = ("session", "similar", "popular", "bought_together")
"""The strategies POST /iid_recommend answers a placement with (a rerank placement orders a
given list: POST /rerank)."""


def _placement(request: web.Request, name: str | None, strategies: tuple[str, ...]
               ) -> Placement | None:
    """The placement a request names (None: it names none), if this route answers its
    strategy."""
    if name is None:
        return None
    found = request.app[RECOMMENDER].placements.get(name)
    if found is None or found.strategy not in strategies:
        # one answer for both: a page learns no placement's strategy from its refusals
        raise Invalid("placement", f"No placement named {name!r} answers this route (it "
                                   f"answers placements of strategy {', '.join(strategies)}; "
                                   "GET /admin/placements lists them).")
    return found


def _k(k: int, given: frozenset[str] | set[str], placement: Placement | None) -> int:
    return k if "k" in given or placement is None or placement.k is None else placement.k


async def iid_recommend(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    req = recommend_request(await read_json(request), settings, time.time())
    placement = _placement(request, req.placement, ASKED)
    k = _k(req.k, req.given, placement)
    rules = overlay(placement, req.rules, req.given)
    asker = _asker(request, req.session_id)
    recommender = request.app[RECOMMENDER]
    answer: Answer
    if placement is not None and placement.strategy == "similar":
        if not req.interactions:
            raise Invalid("user_interactions", f"Placement {placement.name!r} answers items "
                                               "like the page's item: user_interactions must "
                                               "name it (the last one given).")
        answer = await recommender.similar(req.interactions[-1].item_id, k, rules, asker,
                                           placement)
    elif placement is not None and placement.strategy == "popular":
        answer = await recommender.popular(k, rules, asker, placement)
    elif placement is not None and placement.strategy == "bought_together":
        cart = sorted(req.interactions, key=lambda x: x.timestamp)  # oldest first (stable)
        answer = await together.bought_together(recommender, [x.item_id for x in cart], k,
                                                rules, asker, placement)
    else:
        answer = await recommender.recommend(req.interactions, k, req.recommend_seen, asker,
                                             rules, placement)
    return json_response(answer.body())


async def post_rerank(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    req = rerank_request(await read_json(request), settings, time.time())
    placement = _placement(request, req.placement, ("rerank",))
    interactions = [(x.item_id, x.timestamp, x.rating) for x in req.interactions] \
        if req.interactions is not None else [
            (x.item_id, x.timestamp, x.rating)
            for x in await request.app[STORE].ingestion.live_session(req.session_id or "")]
    answer = await rerank(request.app[RECOMMENDER], interactions, req.items, req.hashes,
                          _k(req.k, req.given, placement), _asker(request, req.session_id),
                          overlay(placement, req.rules, req.given), placement)
    return json_response(answer.body())


def _asker(request: web.Request, session_id: str | None) -> Asker:
    """The request's session and client address; no address (no share to take) for a request
    with a secret key: the shop's own servers asking on behalf of many visitors."""
    if session_id is None or is_secret(request, request.app[API_KEYS]):
        return Asker(session_id)
    return Asker(session_id, client_address(request, request.app[SETTINGS].trusted_networks))


def _queried_placement(request: web.Request, strategy: str
                       ) -> tuple[Placement | None, int, Rules]:
    """A GET list endpoint's placement (``placement=``, of this endpoint's strategy), its
    ``k`` and its rules, the query's own fields over the placement's."""
    raw = request.query.get("placement")
    placement = _placement(request, None if raw is None else placement_name(
        raw, "placement", request.app[SETTINGS]), (strategy,))
    given = {name for name in ("k", *RULE_FIELDS) if name in request.query}
    rules = query_rules(request.query, request.app[SETTINGS])
    return placement, _k(k_of(request), given, placement), overlay(placement, rules,
                                                                 frozenset(given))


async def session_recommendations(request: web.Request) -> web.Response:
    session_id = path_id(request, "session_id")
    placement, k, rules = _queried_placement(request, "session")
    seen = query_bool(request.query.get("recommend_seen"), "recommend_seen",
                                 default=False)
    live = await request.app[STORE].ingestion.live_session(session_id)
    answer = await request.app[RECOMMENDER].recommend(
        [(x.item_id, x.timestamp, x.rating) for x in live], k, seen,
        _asker(request, session_id), rules, placement)
    return json_response(answer.body())


async def similar(request: web.Request) -> web.Response:
    item_id = path_id(request, "item_id")
    placement, k, rules = _queried_placement(request, "similar")
    answer = await request.app[RECOMMENDER].similar(item_id, k, rules, _queried(request),
                                                    placement)
    return json_response(answer.body())


async def bought_together(request: web.Request) -> web.Response:
    """The items carted with one item (a cart of one: ``answers/together.py``)."""
    item_id = path_id(request, "item_id")
    placement, k, rules = _queried_placement(request, "bought_together")
    answer = await together.bought_together(request.app[RECOMMENDER], [item_id], k, rules,
                                            _queried(request), placement)
    return json_response(answer.body())


async def popular(request: web.Request) -> web.Response:
    placement, k, rules = _queried_placement(request, "popular")
    return json_response((await request.app[RECOMMENDER].popular(
        k, rules, _queried(request), placement)).body())


def _queried(request: web.Request) -> Asker:
    """The visitor's session named in the query (``session_id``): the answer's feedback then
    counts from that session's events."""
    raw = request.query.get("session_id")
    return _asker(request, None if raw is None else identifier(
        raw, "session_id", request.app[SETTINGS]))
