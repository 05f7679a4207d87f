"""The HTTP API (aiohttp): routes, the error middleware, app state and its lifecycle."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Any

from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from service import access, cors, validation
from service.errors import ApiError
from service.jsonutil import dumps
from service.keyspace import lua
from service.metrics import CacheSeries, Metrics
from service.openapi import api_page, openapi_document
from service.settings import Settings
from service.store import REDIS_FAILURES, Once, Replayed, Store

log = logging.getLogger("sessionrec.api")

SETTINGS = web.AppKey("settings", Settings)
KEYS = web.AppKey("keys", access.Keys)
LIMITER: web.AppKey[access.RateLimiter | None] = web.AppKey("limiter")
STORE = web.AppKey("store", Store)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
OPEN_WARNING: web.AppKey[str | None] = web.AppKey("open_warning")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=dumps(body), status=status, content_type="application/json")


HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}

ACCESS = {
    "/iid_recommend": access.PUBLIC, "/events": access.PUBLIC,
    "/sessions/{session_id}/recommendations": access.PUBLIC,
    "/items/{item_id}/similar": access.PUBLIC, "/popular": access.PUBLIC,
    "/stats": access.PUBLIC,
    "/admin/items/{item_id}/hide": access.ADMIN, "/admin/items/{item_id}": access.ADMIN,
    "/admin/sessions/{session_id}": access.ADMIN,
}
"""The key each route needs (routes not listed are open: health, metrics, docs, SDK, demo)."""


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes the JSON error shape; a client can never cause a 500."""
    app = request.app
    resource = request.match_info.route.resource
    route = resource.canonical if resource else "unmatched"
    started = time.perf_counter()
    allowed = app[SETTINGS].allowed_origins
    try:
        preflight = cors.check(request, allowed)
        if preflight is not None:
            response = preflight
        else:
            # the API key the route needs, then the client's rate limit (by address: the
            # publishable key is in every page, so it identifies no one)
            need = ACCESS.get(route, access.OPEN)
            access.check(request, app[KEYS], need)
            limiter = app[LIMITER]
            if limiter is not None and need == access.PUBLIC:
                await limiter.admit(access.client_address(
                    request, app[SETTINGS].trusted_networks))
            response = await handler(request)
    except ApiError as exc:
        response = exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _http_error(request, exc)
    except REDIS_FAILURES as exc:
        log.warning("redis unavailable: %r", exc)
        response = ApiError(503, "unavailable",
                            "The data store is unreachable; retry shortly.").response()
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        response = ApiError(500, "internal", "Unexpected server error.").response()
    cors.add_headers(request, response, allowed)
    app[METRICS].requests.observe(route, response.status, time.perf_counter() - started)
    return response


def _http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    code = HTTP_CODES.get(exc.status, "http_error")
    headers = {}
    if exc.status == 404:
        message, field = f"No route {request.path}; see /openapi.json.", "path"
    elif exc.status == 405:
        allowed = exc.headers.get("Allow", "")
        headers["Allow"] = allowed
        message, field = f"{request.method} is not allowed here; use {allowed}.", "method"
    elif exc.status == 413:
        limit = request.app[SETTINGS].max_body_bytes
        message, field = f"The body is larger than {limit} bytes; send less.", "body"
    else:
        message, field = exc.reason, None
    return ApiError(exc.status, code, message, field, headers).response()


async def read_json(request: web.Request) -> Any:
    """The body as JSON, whatever the content type (sendBeacon posts text/plain)."""
    limit = request.app[SETTINGS].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    return validation.parse_json(await request.read())


# --- handlers -----------------------------------------------------------------------------
async def iid_recommend(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    req = validation.recommend_request(await read_json(request), settings, time.time())
    answer = await request.app[STORE].recommend(req.interactions, req.k, req.recommend_seen)
    return json_response(answer.body())


IDEMPOTENCY_HEADER = "Idempotency-Key"


async def post_events(request: web.Request) -> web.Response:
    events = validation.events(await read_json(request), request.app[SETTINGS], time.time())
    once = _once(request, await request.read(), len(events))
    try:
        await request.app[STORE].ingest(events, once)
    except Replayed as replayed:
        accepted, _, body = replayed.record.partition("|")
        if once is None or body != once.record.partition("|")[2]:
            raise ApiError(409, "idempotency_key_reused",
                           f"This {IDEMPOTENCY_HEADER} was used within the last day for a "
                           "request with another body; use a new key for a new batch.",
                           IDEMPOTENCY_HEADER) from None
        return web.Response(body=dumps({"accepted": int(accepted)}), status=202,
                            content_type="application/json",
                            headers={"Idempotent-Replayed": "true"})
    request.app[METRICS].events.inc(len(events))
    return json_response({"accepted": len(events)}, status=202)


def _once(request: web.Request, body: bytes, count: int) -> Once | None:
    """The request's Idempotency-Key, scoped to the API key it came with: a retry of the same
    request (an ambiguous 503, a lost answer) within a day is answered, not appended again."""
    key = access.text_header(request, IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if not 1 <= len(key) <= 255 or not all("!" <= c <= "~" for c in key):
        raise ApiError(400, "invalid", f"{IDEMPOTENCY_HEADER} must be 1 to 255 visible ASCII "
                       "characters (a UUID, say).", IDEMPOTENCY_HEADER)
    client = access.raw(request.headers.get(access.HEADER) or request.query.get("key", ""))
    digest = hashlib.blake2b(client + b"\0" + key.encode(), digest_size=16).hexdigest()
    return Once(digest, f"{count}|{hashlib.blake2b(body, digest_size=16).hexdigest()}")


def _k(request: web.Request) -> int:
    return validation.query_integer(request.query.get("k"), "k", default=10, low=1,
                                    high=request.app[SETTINGS].max_k)


def _path_id(request: web.Request, name: str) -> str:
    return validation.identifier(request.match_info[name], name, request.app[SETTINGS])


async def session_recommendations(request: web.Request) -> web.Response:
    session_id = _path_id(request, "session_id")
    k = _k(request)
    seen = validation.query_bool(request.query.get("recommend_seen"), "recommend_seen",
                                 default=False)
    store = request.app[STORE]
    live = await store.live_session(session_id)
    answer = await store.recommend([(x.item_id, x.timestamp, x.rating) for x in live], k, seen,
                                   session_id=session_id)
    return json_response(answer.body())


async def similar(request: web.Request) -> web.Response:
    item_id = _path_id(request, "item_id")
    answer = await request.app[STORE].similar(item_id, _k(request))
    return json_response(answer.body())


async def popular(request: web.Request) -> web.Response:
    return json_response((await request.app[STORE].popular(_k(request))).body())


async def stats(request: web.Request) -> web.Response:
    return json_response(await request.app[STORE].stats())


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    try:
        await request.app[STORE].ping()
    except REDIS_FAILURES:
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
    except REDIS_FAILURES:
        pass  # the request series are still worth scraping while Redis is away
    return web.Response(body=generate_latest(m.registry),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    return json_response(openapi_document(request.app[SETTINGS]))


async def docs(request: web.Request) -> web.Response:
    return web.Response(text=api_page(request.app[SETTINGS]), content_type="text/html")


async def hide_item(request: web.Request) -> web.Response:
    item_id = _path_id(request, "item_id")
    hidden = request.method == "POST"
    await request.app[STORE].hide(item_id, hidden)
    return json_response({"item_id": item_id, "hidden": hidden})


async def forget_item(request: web.Request) -> web.Response:
    item_id = _path_id(request, "item_id")
    scrubbed = await request.app[STORE].forget_item(item_id)
    return json_response({"item_id": item_id, "forgotten": True,
                          "histories_scrubbed": scrubbed})


async def reset_session(request: web.Request) -> web.Response:
    session_id = _path_id(request, "session_id")
    await request.app[STORE].reset_session(session_id)
    return json_response({"session_id": session_id, "reset": True})


async def index(request: web.Request) -> web.Response:
    raise web.HTTPFound("/docs")


async def favicon(request: web.Request) -> web.Response:
    return web.Response(status=204, headers={"Cache-Control": "public, max-age=86400"})


def _static(path: str, content_type: str) -> Handler:
    body = resources.files("service").joinpath(path).read_bytes()

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type,
                            headers={"Cache-Control": "public, max-age=300"})
    return handler


# --- assembly -------------------------------------------------------------------------------
def create_app(settings: Settings, store: Store | None = None) -> web.Application:
    # long request lines and headers reach the app, which answers them with the JSON error
    # shape, instead of the HTTP parser's plain-text 400
    app = web.Application(client_max_size=settings.max_body_bytes,
                          middlewares=[error_middleware],
                          handler_args={"max_line_size": 1 << 16, "max_field_size": 1 << 16})
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app[KEYS] = access.Keys.from_settings(settings)
    app[LIMITER] = None
    app[OPEN_WARNING] = access.warn_if_open(app[KEYS], settings.host)

    async def redis_lifecycle(app: web.Application) -> AsyncIterator[None]:
        own = store is None
        app[STORE] = Store(settings) if store is None else store
        if (cache := app[STORE].cache) is not None:
            app[METRICS].registry.register(CacheSeries(cache.figures))
        if settings.rate_limit > 0:
            app[LIMITER] = access.RateLimiter(
                app[STORE].redis.register_script(lua("ratelimit")), app[STORE].keys.rate_bucket,
                settings.rate_limit, settings.rate_burst)
        try:
            await app[STORE].prepare()
        except REDIS_FAILURES as exc:
            log.warning("redis not reachable at start (%s); answering 503 until it is", exc)
        yield
        if own:
            await app[STORE].close()

    app.cleanup_ctx.append(redis_lifecycle)
    app.router.add_post("/iid_recommend", iid_recommend)
    app.router.add_post("/events", post_events)
    # ids are opaque: any character, "/" and newlines included (percent-encoded in the path)
    app.router.add_get("/sessions/{session_id:(?s:.+)}/recommendations",
                       session_recommendations)
    app.router.add_get("/items/{item_id:(?s:.+)}/similar", similar)
    app.router.add_get("/popular", popular)
    app.router.add_get("/stats", stats)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/docs", docs)
    app.router.add_post("/admin/items/{item_id:(?s:.+)}/hide", hide_item)
    app.router.add_delete("/admin/items/{item_id:(?s:.+)}/hide", hide_item)
    app.router.add_delete("/admin/items/{item_id:(?s:.+)}", forget_item)
    app.router.add_delete("/admin/sessions/{session_id:(?s:.+)}", reset_session)
    app.router.add_get("/", index)
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_get("/sdk.js", _static("static/sdk.js", "application/javascript"))
    app.router.add_get("/demo", _static("static/demo.html", "text/html"))
    app.router.add_get("/demo/catalogue.json", _static("data/catalogue.json",
                                                       "application/json"))
    return app
