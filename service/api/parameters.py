"""The scoring parameters' shared record over HTTP (``GET /model``, ``PUT /admin/model``) and
each serve process following it: a new version scores every process' next requests within
``MODEL_POLL`` seconds, with no restart and no Redis read on the request path."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from typing import Any

from aiohttp import web

from service.answers.recommender import Recommender
from service.api.access import is_secret
from service.api.context import API_KEYS, SETTINGS, STORE, json_response, read_json
from service.api.errors import ApiError
from service.api.recommend import RECOMMENDER
from service.core.modelparams import MODEL_POLL, ModelRecord
from service.core.scoring import Params
from service.core.sequence import SequenceModel
from service.failures import UNAVAILABLE, stop_if_cancelled
from service.requests.admin import model_change
from service.store import tuning
from service.store.modelrecord import ModelContention
from service.store.state import Store

log = logging.getLogger("sessionrec.api")

PUBLIC_RUN = ("id", "trigger", "started_at", "finished_at", "sessions_learned",
              "holdout_sessions", "predictions", "candidates", "promoted", "sequence")
"""What the last tuning run's record shows a request without a secret key (the publishable
key is in every shop page): that a run happened, its size and whether it promoted. Never its
scores, gains, slices, best candidate or cross-fitted worths: after each run they would tell
a client who sends crafted sessions how far it moved the search, and the newest slice's end
where the holdout stops."""


def _decoded(blob: bytes) -> SequenceModel:
    """The stored model with its serving layout built, off the event loop."""
    model = SequenceModel.from_bytes(blob)
    model.serving  # noqa: B018 (built here, not in the first request that reads it)
    return model


async def follow_sequence(recommender: Recommender, store: Store) -> None:
    """Read the stored sequence model and score with it (none stored, or one this release
    cannot read: none, and the learned order's sequence feature is 0)."""
    version, blob = await store.sequence.model()
    model = None
    if blob:
        try:
            model = await asyncio.to_thread(_decoded, blob)
        except ValueError as exc:
            log.warning("sequence model version %d not read (%s): scoring without it",
                        version, exc)
    recommender.sequence, recommender.sequence_version = model, version




def model_body(record: ModelRecord, params: Params, running: str | None, auto: bool,
               sequence: dict[str, Any] | None) -> dict[str, Any]:
    """``sequence``: what the stored sequence model's run says of it (None: none trained)."""
    return {"version": record.version, "params": dataclasses.asdict(params),
            "pinned": list(record.pinned), "tuned_at": record.tuned_at, "sequence": sequence,
            "tuning": {"state": "running" if running else "idle", "run": running,
                       "auto": auto,
                       "last_run": json.loads(record.last_run) if record.last_run else None}}


async def _running(store: Store) -> str | None:
    return await tuning.running(store.redis, store.keys)


async def get_model(request: web.Request) -> web.Response:
    """The record as Redis holds it now, over this process' flags; the last run's record
    whole for a secret key (or a server with no keys), its ``PUBLIC_RUN`` part otherwise."""
    store = request.app[STORE]
    record = await store.model.record()
    body = model_body(record, record.params(request.app[RECOMMENDER].base),
                      await _running(store), request.app[SETTINGS].auto_tune,
                      await store.sequence.facts())
    keys = request.app[API_KEYS]
    last = body["tuning"]["last_run"]
    if last is not None and keys.enabled and not is_secret(request, keys):
        body["tuning"]["last_run"] = {name: last[name] for name in PUBLIC_RUN if name in last}
    return json_response(body)


async def start_tuning(request: web.Request) -> web.Response:
    """Start a tuning run now (``sessionrec tune --apply``, a process of its own at a lowered
    priority); 202 with its id, or the running run's id if one is running."""
    settings = request.app[SETTINGS]
    store = request.app[STORE]
    if not store.backend.other_processes:
        raise ApiError(409, "unsupported", "Tuning runs in a process of its own, which the "
                                           "embedded default (memory://) cannot share; serve "
                                           "with a Redis to tune.")
    try:
        run_id, _ = await tuning.start_run(store.redis, store.scripts, store.keys, settings,
                                           "admin")
    except OSError:
        raise ApiError(503, "unavailable", "The tuning process could not be started; try "
                                           "again.") from None
    return json_response({"run": run_id}, status=202)


async def put_model(request: web.Request) -> web.Response:
    values, pin = model_change(await read_json(request), request.app[SETTINGS])
    try:
        record = await request.app[STORE].model.update(lambda r: r.updated(values, pin))
    except ModelContention:
        raise ApiError(503, "busy", "The model record kept changing under this change; send "
                                    "it again.") from None
    recommender = request.app[RECOMMENDER]
    recommender.use(record)  # this process at once; the others at their next poll
    store = request.app[STORE]
    return json_response(model_body(record, recommender.params, await _running(store),
                                    request.app[SETTINGS].auto_tune,
                                    await store.sequence.facts()))


async def follow_model(recommender: Recommender, store: Store,
                       every: float = MODEL_POLL) -> None:
    """Poll the record's version and score with a new one as soon as it is seen (a version
    that went back, a Redis that came back empty, is followed too); the same for the
    sequence model, read whole only when its version moves and decoded off the event loop."""
    while True:
        try:
            if await store.model.version() != recommender.record.version:
                recommender.use(await store.model.record())
            if await store.sequence.version() != recommender.sequence_version:
                await follow_sequence(recommender, store)
        except UNAVAILABLE as exc:
            log.debug("model record not read (%s); next try in %s s", exc, every)
        stop_if_cancelled()  # whatever a Redis call under way did with the cancellation
        await asyncio.sleep(every)
