"""The scoring parameters' shared record over HTTP (``GET /model``, ``PUT /admin/model``) and
each serve process following it: a new version scores every process' next requests within
``MODEL_POLL`` seconds, with no restart and no Redis read on the request path."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

from aiohttp import web

from service.api import validation
from service.api.context import SETTINGS, STORE, json_response, read_json
from service.api.errors import ApiError
from service.api.recommend import RECOMMENDER, Recommender
from service.core.modelparams import ModelRecord
from service.core.scoring import Params
from service.store.backends import REDIS_FAILURES
from service.store.state import ModelContention, Store

log = logging.getLogger("sessionrec.api")

MODEL_POLL = 1.0
"""Seconds between a serve process' reads of the record's version (one HGET)."""


def model_body(record: ModelRecord, params: Params) -> dict[str, Any]:
    return {"version": record.version, "params": dataclasses.asdict(params),
            "pinned": list(record.pinned), "tuned_at": record.tuned_at}


async def get_model(request: web.Request) -> web.Response:
    """The record as Redis holds it now, over this process' flags."""
    record = await request.app[STORE].model_record()
    return json_response(model_body(record, record.params(request.app[RECOMMENDER].base)))


async def put_model(request: web.Request) -> web.Response:
    values, pin = validation.model_change(await read_json(request), request.app[SETTINGS])
    try:
        record = await request.app[STORE].update_model(lambda r: r.updated(values, pin))
    except ModelContention:
        raise ApiError(503, "busy", "The model record kept changing under this change; send "
                                    "it again.") from None
    recommender = request.app[RECOMMENDER]
    recommender.use(record)  # this process at once; the others at their next poll
    return json_response(model_body(record, recommender.params))


async def follow_model(recommender: Recommender, store: Store,
                       every: float = MODEL_POLL) -> None:
    """Poll the record's version and score with a new one as soon as it is seen (a version
    that went back, a Redis that came back empty, is followed too)."""
    while True:
        try:
            if await store.model_version() != recommender.record.version:
                recommender.use(await store.model_record())
        except REDIS_FAILURES as exc:
            log.debug("model record not read (%s); next try in %s s", exc, every)
        await asyncio.sleep(every)
