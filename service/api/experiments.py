"""Experiments over HTTP (``PUT/GET/DELETE /admin/experiments/{name}``) and each serve process
following the running one: its variants score their sessions' next requests within
``FEEDBACK_POLL`` seconds, and the process' answers and sessions per variant reach Redis as
often."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import web

from service.answers.recommender import Recommender
from service.api.context import (
    SETTINGS,
    STORE,
    json_response,
    path_id,
    read_json,
)
from service.api.errors import ApiError
from service.api.placements import flush_placements
from service.api.recommend import RECOMMENDER
from service.core.feedback import Experiment
from service.core.placements import SCORED
from service.core.reports import comparisons, variant_report
from service.core.series import MinuteTally
from service.failures import UNAVAILABLE, stop_if_cancelled
from service.requests.admin import experiment_placement, experiment_variants
from service.requests.jsonutil import loads
from service.requests.values import Invalid
from service.store import series
from service.store.feedback import ExperimentConflict
from service.store.state import Store

log = logging.getLogger("sessionrec.api")

FEEDBACK_POLL = 1.0


async def report(store: Store, experiment: Experiment) -> dict[str, Any]:
    """The experiment and, per variant, its counts, CTR with a 95 % interval, and each
    variant against the first."""
    counts = await store.feedback.counts(experiment)
    variants = {v.name: {"weight": v.weight, "params": dict(v.params),
                         **variant_report(c, c["sessions"])}
                for v, c in zip(experiment.variants, counts, strict=True)}
    names = list(variants)
    return {"name": experiment.name,
            "state": "running" if experiment.ended_at is None else "ended",
            "started_at": experiment.started_at, "ended_at": experiment.ended_at,
            "placement": experiment.placement,
            "variants": variants,
            "comparisons": comparisons(names, [variants[n] for n in names])}


async def put_experiment(request: web.Request) -> web.Response:
    name = path_id(request, "name")
    settings = request.app[SETTINGS]
    body = await read_json(request)
    variants = experiment_variants(body, settings)
    placement = experiment_placement(body, settings)
    store = request.app[STORE]
    if placement is not None:
        found = await store.placements.get(placement)
        if found is None:
            raise Invalid("placement", f"No placement is named {placement!r}: put it first "
                                       "(PUT /admin/placements/{name}).")
        strategy = loads(found[0]).get("strategy")
        if strategy not in SCORED:
            raise Invalid("placement", f"Placement {placement!r} answers with strategy "
                                       f"{strategy!r}, which scoring parameters do not change; "
                                       f"an experiment runs within one of {', '.join(SCORED)}.")
    try:
        started = await store.feedback.start(Experiment(name, 0, variants, time.time(),
                                                        placement=placement))
    except ExperimentConflict as exc:
        raise ApiError(409, "conflict",
                       f"Experiment {exc.running.name!r} is running, with other variants; one "
                       "runs at a time: end it with DELETE /admin/experiments/"
                       f"{exc.running.name} first.", field="name") from None
    recommender = request.app[RECOMMENDER]
    recommender.use_experiment(recommender.signing_key, started)  # the others within a second
    return json_response(await report(store, started))


async def get_experiment(request: web.Request) -> web.Response:
    name = path_id(request, "name")
    store = request.app[STORE]
    experiment = await store.feedback.get(name)
    if experiment is None:
        raise ApiError(404, "not_found", f"No experiment named {name!r} was ever started.")
    await flush(request.app[RECOMMENDER], store)  # this process' answers, up to now
    return json_response(await report(store, experiment))


async def delete_experiment(request: web.Request) -> web.Response:
    name = path_id(request, "name")
    store = request.app[STORE]
    ended = await store.feedback.end(name, time.time())
    if ended is None:
        raise ApiError(404, "not_found", f"No experiment named {name!r} is running.")
    recommender = request.app[RECOMMENDER]
    recommender.use_experiment(recommender.signing_key, None)
    await flush(recommender, store)
    return json_response(await report(store, ended))


async def flush(recommender: Recommender, store: Store) -> None:
    answers, sessions = recommender.tally.take()
    try:
        await store.feedback.add(answers, sessions)
    except UNAVAILABLE:
        recommender.tally.give_back(answers, sessions)
        raise


async def follow_feedback(recommender: Recommender, store: Store, minutes: MinuteTally,
                          every: float = FEEDBACK_POLL) -> None:
    """Each period: the signing key and the running experiment (one MGET), and this process'
    tallies (answers and sessions per variant, requests per minute) into Redis."""
    while True:
        try:
            key, experiment = await store.feedback.current()
            if key != recommender.signing_key or experiment != recommender.experiment:
                recommender.use_experiment(key, experiment)
            await flush(recommender, store)
            await flush_placements(recommender, store)
            taken = minutes.take()
            try:
                await series.add(store.redis, store.keys, taken)
            except UNAVAILABLE:
                minutes.give_back(taken)
                raise
        except UNAVAILABLE as exc:
            log.debug("feedback state not followed (%s); next try in %s s", exc, every)
        stop_if_cancelled()  # whatever a Redis call under way did with the cancellation
        await asyncio.sleep(every)
