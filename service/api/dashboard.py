"""The operator's dashboard (``GET /dashboard``, a page of the package, and the data it polls,
``GET /admin/dashboard/data``, secret key): the last hour's per-minute series from Redis, so
every API process shows the same numbers, with the model, the running experiment's report and
the trending items."""

from __future__ import annotations

import time

from aiohttp import web

from service.api.context import SETTINGS, STORE, json_response
from service.api.experiments import flush, report
from service.api.parameters import model_body
from service.api.placements import placement_reports
from service.api.recommend import RECOMMENDER
from service.core.series import minute_figures, minute_of
from service.store import series, tuning

HOUR = 60
TRENDING = 10


async def dashboard_data(request: web.Request) -> web.Response:
    store = request.app[STORE]
    recommender = request.app[RECOMMENDER]
    await flush(recommender, store)  # this process' answers so far
    minutes = await series.read(store.redis, store.keys, minute_of(time.time()), HOUR)
    record = await store.model.record()
    experiment = (await store.feedback.current())[1]
    head = await store.reads.trending_head(TRENDING)
    top = head[0][1] if head else 0.0
    return json_response({
        "minutes": [minute_figures(minute, counts) for minute, counts in minutes],
        "model": model_body(record, record.params(recommender.base),
                            await tuning.running(store.redis, store.keys),
                            request.app[SETTINGS].auto_tune, await store.sequence.facts()),
        "experiment": await report(store, experiment) if experiment is not None else None,
        # scores are log2 of decayed counts: relative to the first, as /popular shows them
        "trending": [{"id": member.decode("utf-8", "replace"), "score": 2.0 ** (score - top)}
                     for member, score in head],
        "placements": [{"name": name, "strategy": recommender.placements[name].strategy,
                        **figures}
                       for name, figures in (await placement_reports(recommender,
                                                                     store)).items()],
        "stats": await store.stats.read()})
