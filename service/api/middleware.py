"""The boundary every request passes, in named steps: admission (CORS, the API key its route
needs, the client's rate limit), the JSON error shape for every failure (a client can never
cause a 500), and the request metrics."""

from __future__ import annotations

import logging
import time
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from service.api import access, cors
from service.api.context import API_KEYS, LIMITER, METRICS, SETTINGS, Handler
from service.api.errors import ApiError
from service.api.routes import ACCESS
from service.core.series import LATENCY_MS
from service.failures import UNAVAILABLE, Backlogged
from service.requests.values import Invalid

log = logging.getLogger("sessionrec.api")

HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
UNCOUNTED = frozenset(("/dashboard", "/admin/dashboard/data", "/metrics", "/healthz",
                       "/readyz", "/static/uplot.iife.min.js", "/static/uplot.min.css"))
"""Routes the dashboard's request series leave out: its own polling, probes and scrapes."""


@web.middleware
async def boundary(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every request's way in and out: ``admit`` it (or answer its preflight), run its handler,
    turn any failure into the JSON error shape (``error_response``), add the CORS headers and
    ``count`` it. One middleware with named steps rather than one per step: each middleware
    layer costs every request a call chain."""
    app = request.app
    resource = request.match_info.route.resource
    route = resource.canonical if resource else "unmatched"
    started = time.perf_counter()
    allowed = app[SETTINGS].allowed_origins
    try:
        preflight = await admit(request, route, allowed)
        response = preflight if preflight is not None else await handler(request)
    except Exception as exc:
        response = error_response(request, exc)
    cors.add_headers(request, response, allowed)
    count(app, route, response.status, time.perf_counter() - started)
    return response


async def admit(request: web.Request, route: str,
                allowed: frozenset[str]) -> web.StreamResponse | None:
    """CORS (the preflight's answer, or None to go on), the API key the route needs, then the
    client's rate limit (by address: the publishable key is in every page, so it identifies no
    one). A route open to anyone (a page, a static file, the SDK) costs nothing to embed; the
    others are refused to another site's embedding."""
    app = request.app
    need = ACCESS.get(route, access.OPEN)
    preflight = cors.check(request, allowed, embeddable=need == access.OPEN)
    if preflight is not None:
        return preflight
    access.check(request, app[API_KEYS], need)
    limiter = app[LIMITER]
    if limiter is not None and need == access.PUBLIC:
        await limiter.admit(access.client_address(request, app[SETTINGS].trusted_networks))
    return None


def error_response(request: web.Request, exc: Exception) -> web.StreamResponse:
    """What a failure answers, by its kind (``service/failures.py``): what the client can fix a
    4xx naming the field, what a retry can fix a 503, anything else a 500 logged as a bug."""
    if isinstance(exc, ApiError):
        return exc.response()
    if isinstance(exc, Invalid):
        return ApiError(400, exc.code, exc.message, exc.field).response()
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        return _http_error(request, exc)
    if isinstance(exc, UNAVAILABLE):
        log.warning("redis unavailable: %r", exc)
        return ApiError(503, "unavailable",
                        "The data store is unreachable; retry shortly.").response()
    if isinstance(exc, Backlogged):
        log.warning("events refused: %s", exc)
        return ApiError(503, "backlogged", "Events cannot be stored now (appends keep "
                        "failing on the data store); retry shortly.").response()
    # a Redis error that is not unavailability included: a retry fixes none
    log.error("bug: unexpected error on %s %s", request.method, request.path, exc_info=exc)
    return ApiError(500, "internal", "Unexpected server error.").response()


def count(app: web.Application, route: str, status: int, took: float) -> None:
    """The request in /metrics, and in the dashboard's series unless it is the dashboard's own
    polling, a probe or a scrape (the series count the shop's traffic only)."""
    metrics = app[METRICS]
    metrics.requests.observe(route, status, took)
    if route not in UNCOUNTED:
        now = time.time()
        metrics.minutes.add(now, "requests")
        metrics.minutes.observe(now, "latency", LATENCY_MS, took * 1000)


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


class ServerLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server log with a client's malformed HTTP at INFO, without a traceback.

    Bad framing (a Content-Length beside a chunked Transfer-Encoding, a bad chunk size, a
    control byte in a header) fails aiohttp's parser before any handler runs: it answers a
    plain-text 400 and closes the connection (nothing in it can be trusted to name a field),
    and logs the failure as an exception. Anyone can send it, without a key: logged at ERROR
    with a traceback it floods the log and hides the bugs ERROR is for. Everything else is
    logged as aiohttp logs it."""

    def exception(self, msg: object, *args: object, exc_info: Any = True,
                  **kwargs: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            self.info("%s: %s", str(msg) % args if args else msg,
                      " ".join(str(exc_info).split())[:200])
            return
        super().exception(msg, *args, exc_info=exc_info, **kwargs)


SERVER_LOG = ServerLog(logging.getLogger("aiohttp.server"), {})
