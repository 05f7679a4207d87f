"""The HTTP API's assembly (aiohttp): app state, the store's lifecycle and the router, built
from the route table (``routes.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from service.answers.recommender import Recommender
from service.api import access
from service.api.context import (
    API_KEYS,
    LIMITER,
    METRICS,
    OPEN_WARNING,
    ROUTE_TABLE,
    SETTINGS,
    STORE,
)
from service.api.experiments import follow_feedback
from service.api.metrics import CacheSeries, Metrics
from service.api.middleware import SERVER_LOG, boundary
from service.api.parameters import follow_model
from service.api.placements import follow_placements, parsed
from service.api.recommend import RECOMMENDER
from service.api.routes import ROUTES, router_path
from service.failures import UNAVAILABLE
from service.settings import Settings
from service.store.state import Store

log = logging.getLogger("sessionrec.api")


async def _warm(store: Store) -> None:
    try:
        await store.warm()
    except UNAVAILABLE as exc:  # the first request with rules reads it then
        log.warning("catalogue not read at start (%s)", exc)


def create_app(settings: Settings, store: Store | None = None) -> web.Application:
    # long request lines and headers reach the app, which answers them with the JSON error
    # shape, instead of the HTTP parser's plain-text 400: a request line as long as a body
    # may be (the GET list endpoints' ``exclude`` repeats in the query); bodies reach it as
    # sent, their content codings undone by ``context.read_body``, which answers any it does
    # not decode in that shape too
    app = web.Application(client_max_size=settings.max_body_bytes,
                          middlewares=[boundary],
                          handler_args={"max_line_size": max(settings.max_body_bytes, 1 << 16),
                                        "max_field_size": 1 << 16, "auto_decompress": False,
                                        "logger": SERVER_LOG})
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app[API_KEYS] = access.ApiKeys.from_settings(settings)
    app[LIMITER] = None
    app[OPEN_WARNING] = access.warn_if_open(app[API_KEYS], settings.host)
    app[ROUTE_TABLE] = ROUTES

    async def redis_lifecycle(app: web.Application) -> AsyncIterator[None]:
        own = store is None
        app[STORE] = Store(settings) if store is None else store
        app[RECOMMENDER] = Recommender(app[STORE], settings)
        if (cache := app[STORE].cache) is not None:
            app[METRICS].registry.register(CacheSeries(cache.figures))
        if settings.rate_limit > 0:
            app[LIMITER] = access.RateLimiter(
                app[STORE].scripts, app[STORE].keys.rate_bucket,
                settings.rate_limit, settings.rate_burst)
        placements_seen = -1  # the version read at start: the follower reads again on a change
        try:
            await app[STORE].prepare()
            app[RECOMMENDER].use(await app[STORE].model.record())
            app[RECOMMENDER].use_experiment(*await app[STORE].feedback.current())
            placements_seen, raw = await app[STORE].placements.all()
            app[RECOMMENDER].use_placements(parsed(raw, settings))
        except UNAVAILABLE as exc:
            log.warning("redis not reachable at start (%s); answering 503 until it is", exc)
        background = [asyncio.create_task(follow_model(app[RECOMMENDER], app[STORE])),
                      asyncio.create_task(follow_feedback(app[RECOMMENDER], app[STORE],
                                                          app[METRICS].minutes)),
                      asyncio.create_task(follow_placements(app[RECOMMENDER], app[STORE],
                                                            settings, seen=placements_seen)),
                      asyncio.create_task(_warm(app[STORE]))]
        yield
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if own:
            await app[STORE].close()

    app.cleanup_ctx.append(redis_lifecycle)
    for route in ROUTES:
        if route.method == "GET":  # and HEAD, as aiohttp's add_get does
            app.router.add_get(router_path(route), route.handler)
        else:
            app.router.add_route(route.method, router_path(route), route.handler)
    return app
