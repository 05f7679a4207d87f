"""The handlers of the recommendation routes: each reads its request, asks the process'
``Recommender`` (``service/answers``) and writes its answer."""

from __future__ import annotations

import time

from aiohttp import web

from service.answers import together
from service.answers.recommender import Asker, Recommender
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
from service.core.rules import Rules
from service.requests.recommend import recommend_request
from service.requests.rules import query_rules
from service.requests.values import identifier, query_bool

RECOMMENDER = web.AppKey("recommender", Recommender)


async def iid_recommend(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    req = recommend_request(await read_json(request), settings, time.time())
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
    return query_rules(request.query, request.app[SETTINGS])


async def session_recommendations(request: web.Request) -> web.Response:
    session_id = path_id(request, "session_id")
    k = k_of(request)
    seen = query_bool(request.query.get("recommend_seen"), "recommend_seen",
                                 default=False)
    rules = _rules(request)
    live = await request.app[STORE].ingestion.live_session(session_id)
    answer = await request.app[RECOMMENDER].recommend(
        [(x.item_id, x.timestamp, x.rating) for x in live], k, seen,
        _asker(request, session_id), rules)
    return json_response(answer.body())


async def similar(request: web.Request) -> web.Response:
    item_id = path_id(request, "item_id")
    answer = await request.app[RECOMMENDER].similar(item_id, k_of(request), _rules(request),
                                                    _queried(request))
    return json_response(answer.body())


async def bought_together(request: web.Request) -> web.Response:
    """The items carted with one item (a cart of one: ``answers/together.py``)."""
    answer = await together.bought_together(request.app[RECOMMENDER],
                                            [path_id(request, "item_id")], k_of(request),
                                            _rules(request), _queried(request))
    return json_response(answer.body())


async def popular(request: web.Request) -> web.Response:
    return json_response((await request.app[RECOMMENDER].popular(
        k_of(request), _rules(request), _queried(request))).body())


def _queried(request: web.Request) -> Asker:
    """The visitor's session named in the query (``session_id``): the answer's feedback then
    counts from that session's events."""
    raw = request.query.get("session_id")
    return _asker(request, None if raw is None else identifier(
        raw, "session_id", request.app[SETTINGS]))
