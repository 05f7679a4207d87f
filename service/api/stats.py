"""What an operator and a page read besides recommendations: statistics, health, Prometheus
metrics, the API's own documents, the SDK and the demo's files."""

from __future__ import annotations

from importlib import resources

from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from service.api.context import (
    METRICS,
    OPEN_WARNING,
    ROUTE_TABLE,
    SETTINGS,
    STORE,
    Handler,
    json_response,
)
from service.api.errors import ApiError
from service.api.openapi import api_page, openapi_document
from service.api.pages import page_headers
from service.api.recommend import RECOMMENDER
from service.core.feedback import variant_report
from service.failures import UNAVAILABLE


async def stats(request: web.Request) -> web.Response:
    return json_response(await request.app[STORE].stats())


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
        for figure, value in (await request.app[STORE].stats()).items():
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
    except UNAVAILABLE:
        pass  # the request series are still worth scraping while Redis is away
    return web.Response(body=generate_latest(m.registry),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    return json_response(openapi_document(request.app[SETTINGS], request.app[ROUTE_TABLE]))


async def docs(request: web.Request) -> web.Response:
    page = api_page(request.app[SETTINGS], request.app[ROUTE_TABLE])
    return web.Response(text=page, content_type="text/html",
                        headers=page_headers(page.encode("utf-8")))


async def index(request: web.Request) -> web.Response:
    raise web.HTTPFound("/docs")


async def favicon(request: web.Request) -> web.Response:
    return web.Response(status=204, headers={"Cache-Control": "public, max-age=86400"})


def static(path: str, content_type: str) -> Handler:
    """A file of the package, read once (a resource path: the demo's files are served without
    importing the demo's code); an HTML page with its policy (``pages.py``)."""
    body = resources.files("service").joinpath(path).read_bytes()
    headers = {"Cache-Control": "public, max-age=300"}
    if content_type == "text/html":
        headers.update(page_headers(body))

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type, headers=headers)
    return handler
