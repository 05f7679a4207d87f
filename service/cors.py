"""CORS: which browser origins may call the API, and the preflight answer.

Default: only the API's own origin (the demo, or a site that proxies the API). Other origins
are named in ``cors_origins``. A request from an origin not allowed is refused with 403 even
when the browser would send it without a preflight (``navigator.sendBeacon`` posts are "simple"
requests: CORS alone would let them through and only hide the answer).
"""

from __future__ import annotations

from aiohttp import web

from service.errors import ApiError

ALLOW_HEADERS = "Content-Type, X-API-Key"
MAX_AGE = "600"


def origin_allowed(request: web.Request, allowed: frozenset[str]) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not a browser cross-origin call (curl, a back end, same-origin GET)
    origin = origin.rstrip("/")
    if "*" in allowed or origin in allowed:
        return True
    own = f"{request.scheme}://{request.host}"
    return origin == own


def add_headers(request: web.Request, response: web.StreamResponse,
                allowed: frozenset[str]) -> None:
    """Let an allowed origin read the answer (errors included, so a page can show them)."""
    origin = request.headers.get("Origin")
    if origin is not None and origin_allowed(request, allowed):
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"


def preflight(request: web.Request, allowed: frozenset[str]) -> web.StreamResponse:
    if not origin_allowed(request, allowed):
        raise ApiError(403, "origin_not_allowed",
                       f"Origin {request.headers.get('Origin')} may not call this API; add it "
                       "to SESSIONREC_CORS_ORIGINS.", "Origin")
    route = request.match_info
    if route.http_exception is not None and route.http_exception.status == 404:
        raise route.http_exception
    methods = sorted(route.http_exception.headers.get("Allow", "").split(",")
                     if route.http_exception is not None else [request.method])
    response = web.Response(status=204, headers={
        "Access-Control-Allow-Methods": ", ".join(m.strip() for m in methods if m.strip()),
        "Access-Control-Allow-Headers": ALLOW_HEADERS,
        "Access-Control-Max-Age": MAX_AGE,
    })
    add_headers(request, response, allowed)
    return response


def check(request: web.Request, allowed: frozenset[str]) -> web.StreamResponse | None:
    """The preflight's answer for a preflight; None for a request that may proceed; 403 for
    an origin not allowed."""
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        return preflight(request, allowed)
    if not origin_allowed(request, allowed):
        raise ApiError(403, "origin_not_allowed",
                       f"Origin {request.headers.get('Origin')} may not call this API; add it "
                       "to SESSIONREC_CORS_ORIGINS.", "Origin")
    return None
