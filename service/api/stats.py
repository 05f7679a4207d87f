"""What an operator reads besides recommendations: statistics, health, Prometheus metrics."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from service.api.context import (
    METRICS,
    OPEN_WARNING,
    STORE,
    json_response,
)
from service.api.errors import ApiError
from service.api.placements import placement_reports
from service.api.recommend import RECOMMENDER
from service.core.reports import variant_report
from service.failures import UNAVAILABLE


async def stats(request: web.Request) -> web.Response:
    return json_response(await request.app[STORE].stats.read())


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    try:
        await request.app[STORE].ping()
    except UNAVAILABLE:
        raise ApiError(503, "unavailable", "Redis is unreachable.") from None
    body = {"status": "ready"}
    if (warning := request.app[OPEN_WARNING]) is not None:
        body["warning"] = warning
    return json_response(body)


async def metrics(request: web.Request) -> web.Response:
    m = request.app[METRICS]
    try:
        for figure, value in (await request.app[STORE].stats.read()).items():
            m.state.labels(figure).set(value)
        recommender = request.app[RECOMMENDER]
        m.unrecorded.set(recommender.unrecorded)
        experiment = recommender.experiment
        for series in (m.impressions, m.clicks, m.ctr):
            series.clear()  # only the running experiment's variants
        if experiment is not None:
            counts = await request.app[STORE].feedback.counts(experiment)
            for variant, c in zip(experiment.variants, counts, strict=True):
                labels = (experiment.name, variant.name)
                report = variant_report(c, c["sessions"])
                m.impressions.labels(*labels).set(report["impressions"])
                m.clicks.labels(*labels).set(report["clicks"])
                m.ctr.labels(*labels).set(report["ctr"] or 0.0)
        for series in (m.placement_answers, m.placement_impressions, m.placement_clicks,
                       m.placement_ctr):
            series.clear()  # only the placements there are
        for name, report in (await placement_reports(recommender, request.app[STORE])).items():
            m.placement_answers.labels(name).set(report["answers"])
            m.placement_impressions.labels(name).set(report["impressions"])
            m.placement_clicks.labels(name).set(report["clicks"])
            m.placement_ctr.labels(name).set(report["ctr"] or 0.0)
    except UNAVAILABLE:
        pass  # the request series are still worth scraping while Redis is away
    return web.Response(body=generate_latest(m.registry),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})
