"""Placements over HTTP (``PUT/GET/DELETE /admin/placements/{name}``,
``GET /admin/placements``) and each serve process following them: a change answers every
process' next requests within ``PLACEMENT_POLL`` seconds."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

from aiohttp import web

from service.answers.recommender import Recommender
from service.api.context import SETTINGS, STORE, json_response, read_json
from service.api.errors import ApiError
from service.api.recommend import RECOMMENDER
from service.core.feedback import placement_code
from service.core.placements import MAX_PLACEMENTS, Placement
from service.core.reports import placement_report
from service.failures import UNAVAILABLE, stop_if_cancelled
from service.requests.jsonutil import dumps, loads
from service.requests.placements import placement
from service.requests.values import Invalid, placement_name
from service.settings import Settings
from service.store.placements import TooManyPlacements
from service.store.state import Store

log = logging.getLogger("sessionrec.api")

PLACEMENT_POLL = 0.5
"""Seconds between two reads of the placements' version: a change is followed within it."""


def parsed(raw: dict[str, tuple[bytes, int]], settings: Settings) -> dict[str, Placement]:
    """The placements as Redis holds them, parsed. One that no longer parses (the process'
    limits were lowered since it was put) is left out, and logged: its requests are refused
    as naming no placement, which says what to fix, rather than answered in another way."""
    out: dict[str, Placement] = {}
    for name, (body, serial) in raw.items():
        try:
            out[name] = placement(name, loads(body), settings, serial)
        except (Invalid, ValueError) as exc:
            log.warning("placement %r left out: %s", name, exc)
    return out


async def follow_placements(recommender: Recommender, store: Store, settings: Settings,
                            every: float = PLACEMENT_POLL, seen: int = -1) -> None:
    """Poll the placements' version and read them all when it moved (a version that went
    back, a Redis that came back empty, is followed too); ``seen``: the version read at
    start, if any."""
    while True:
        try:
            if await store.placements.version() != seen:
                seen, raw = await store.placements.all()
                recommender.use_placements(parsed(raw, settings))
        except UNAVAILABLE as exc:
            log.debug("placements not read (%s); next try in %s s", exc, every)
        stop_if_cancelled()
        await asyncio.sleep(every)


def _body(found: Placement) -> dict[str, object]:
    return {"name": found.name, **found.source}


async def placement_reports(recommender: Recommender, store: Store
                            ) -> dict[str, dict[str, Any]]:
    """Each placement this process follows: its answers (every process', as of their last
    flush, and this one's until now) and the feedback counted on them."""
    await flush_placements(recommender, store)
    names = sorted(recommender.placements)
    counts = await store.feedback.placement_counts(
        [recommender.placements[n].code for n in names])
    return {name: placement_report(c) for name, c in zip(names, counts, strict=True)}


async def flush_placements(recommender: Recommender, store: Store) -> None:
    """This process' answers per placement into Redis (``follow_feedback`` every second)."""
    answers, recommender.placement_answers = recommender.placement_answers, Counter()
    try:
        await store.feedback.add_placement_answers(answers)
    except UNAVAILABLE:
        recommender.placement_answers.update(answers)
        raise


async def put_placement(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    name = placement_name(request.match_info["name"], "name", settings)
    found = placement(name, await read_json(request), settings)
    store = request.app[STORE]
    try:
        await store.placements.put(name, dumps(found.source).decode())
    except TooManyPlacements:
        raise ApiError(409, "conflict", f"There are {MAX_PLACEMENTS} placements already, the "
                       "limit; delete one first.", field="name") from None
    await _reread(request)
    return json_response(_body(found))


async def _reread(request: web.Request) -> None:
    """This process follows a change at once (with the serial Redis gave), the others at
    their next poll."""
    _, raw = await request.app[STORE].placements.all()
    request.app[RECOMMENDER].use_placements(parsed(raw, request.app[SETTINGS]))


async def get_placement(request: web.Request) -> web.Response:
    """The placement and its report: answers, impressions, clicks, CTR with its interval,
    add to carts and purchases of its answers."""
    settings = request.app[SETTINGS]
    name = placement_name(request.match_info["name"], "name", settings)
    store = request.app[STORE]
    found = await store.placements.get(name)
    if found is None:
        raise ApiError(404, "not_found", f"No placement is named {name!r}.")
    raw, serial = found
    await flush_placements(request.app[RECOMMENDER], store)
    counts = await store.feedback.placement_counts([placement_code(name, serial)])
    return json_response({"name": name, **loads(raw), "report": placement_report(counts[0])})


async def delete_placement(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    name = placement_name(request.match_info["name"], "name", settings)
    if not await request.app[STORE].placements.delete(name):
        raise ApiError(404, "not_found", f"No placement is named {name!r}.")
    await _reread(request)
    return json_response({"name": name, "deleted": True})


async def list_placements(request: web.Request) -> web.Response:
    store = request.app[STORE]
    _, raw = await store.placements.all()
    names = sorted(raw)
    await flush_placements(request.app[RECOMMENDER], store)
    counts = await store.feedback.placement_counts([placement_code(n, raw[n][1])
                                                    for n in names])
    return json_response({"placements": [
        {"name": name, **loads(raw[name][0]), "report": placement_report(c)}
        for name, c in zip(names, counts, strict=True)]})


