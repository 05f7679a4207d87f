"""The one middleware every request passes: CORS, the API key its route needs, the client's
rate limit, the JSON error shape for every failure (a client can never cause a 500), and the
request metrics."""

from __future__ import annotations

import logging
import time

from aiohttp import web

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
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    app = request.app
    resource = request.match_info.route.resource
    route = resource.canonical if resource else "unmatched"
    started = time.perf_counter()
    allowed = app[SETTINGS].allowed_origins
    try:
        # the API key the route needs; a route open to anyone (a page, a static file, the SDK)
        # costs nothing to embed, the others are refused to another site's embedding
        need = ACCESS.get(route, access.OPEN)
        preflight = cors.check(request, allowed, embeddable=need == access.OPEN)
        if preflight is not None:
            response = preflight
        else:
            # then the client's rate limit (by address: the publishable key is in every page,
            # so it identifies no one)
            access.check(request, app[API_KEYS], need)
            limiter = app[LIMITER]
            if limiter is not None and need == access.PUBLIC:
                await limiter.admit(access.client_address(
                    request, app[SETTINGS].trusted_networks))
            response = await handler(request)
    except ApiError as exc:
        response = exc.response()
    except Invalid as exc:
        response = ApiError(400, exc.code, exc.message, exc.field).response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _http_error(request, exc)
    except UNAVAILABLE as exc:
        log.warning("redis unavailable: %r", exc)
        response = ApiError(503, "unavailable",
                            "The data store is unreachable; retry shortly.").response()
    except Backlogged as exc:
        log.warning("events refused: %s", exc)
        response = ApiError(503, "backlogged", "Events cannot be stored now (appends keep "
                            "failing on the data store); retry shortly.").response()
    except Exception:  # a Redis error that is not unavailability included: a retry fixes none
        log.exception("bug: unexpected error on %s %s", request.method, request.path)
        response = ApiError(500, "internal", "Unexpected server error.").response()
    cors.add_headers(request, response, allowed)
    took = time.perf_counter() - started
    metrics = app[METRICS]
    metrics.requests.observe(route, response.status, took)
    if route not in UNCOUNTED:  # the dashboard's series count the shop's traffic only
        now = time.time()
        metrics.minutes.add(now, "requests")
        metrics.minutes.observe(now, "latency", LATENCY_MS, took * 1000)
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
