"""CORS: which browser origins may call the API, and the preflight answer.

Default: only the API's own origin (the demo, or a site that proxies the API). The own origin
is recognised from the Host header only when that names an IP address or localhost: a page on
any DNS name can have its name re-pointed at this server (DNS rebinding), and then its Origin and
the Host agree. A site that serves the API under its own domain names it in ``cors_origins``.
Other origins are named there too. A request from an origin not allowed is refused with 403 even
when the browser would send it without a preflight (``navigator.sendBeacon`` posts are "simple"
requests: CORS alone would let them through and only hide the answer).
"""

from __future__ import annotations

from aiohttp import web

from service.api.access import ip_of, text_header
from service.api.errors import ApiError

ALLOW_HEADERS = "Content-Type, X-API-Key, Idempotency-Key"
EXPOSE_HEADERS = "Date, Retry-After"
"""Readable by a page: the SDK sets its clock by Date and waits Retry-After before a retry."""
MAX_AGE = "600"


def _literal_host(host: str) -> bool:
    """Host (``name[:port]``) is an IP literal or localhost: a name DNS rebinding cannot use."""
    if host.startswith("["):
        name = host[1:host.find("]")] if "]" in host else ""
    else:
        name = host.rsplit(":", 1)[0]
    return name == "localhost" or ip_of(name) is not None


def origin_allowed(request: web.Request, allowed: frozenset[str]) -> bool:
    origin = text_header(request, "Origin")
    if origin is None:
        return True  # not a browser cross-origin call (curl, a back end, same-origin GET)
    origin = origin.rstrip("/")
    if "*" in allowed or origin in allowed:
        return True
    host = text_header(request, "Host") or ""
    return _literal_host(host) and origin == f"{request.scheme}://{host}"


def _refused() -> ApiError:
    # the origin is not echoed: it is whatever the client sent
    return ApiError(403, "origin_not_allowed",
                    "This page's origin may not call this API; add it to "
                    "SESSIONREC_CORS_ORIGINS.", "Origin")


def add_headers(request: web.Request, response: web.StreamResponse,
                allowed: frozenset[str]) -> None:
    """Let an allowed origin read the answer (errors included, so a page can show them)."""
    try:
        origin = text_header(request, "Origin")
        if origin is None or not origin_allowed(request, allowed):
            return
    except ApiError:
        return
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
    response.headers["Vary"] = "Origin"


def preflight(request: web.Request, allowed: frozenset[str]) -> web.StreamResponse:
    if not origin_allowed(request, allowed):
        raise _refused()
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


EMBEDDED = frozenset(("cross-site", "same-site"))


def embedded_by_another_site(request: web.Request) -> bool:
    """A browser fetches this for another site's page without CORS: an ``<img>``, a
    ``<script>``, a prefetch or a frame (fetch metadata, ``Sec-Fetch-*``). Such requests carry
    no Origin, so the allow-list never sees them, and they come from that site's visitors'
    addresses: refused, or any page could spend the API's public routes from its visitors'
    browsers. A top-level navigation (someone following a link) is let through."""
    if request.headers.get("Sec-Fetch-Site") not in EMBEDDED or "Origin" in request.headers:
        return False
    return not (request.headers.get("Sec-Fetch-Mode") == "navigate"
                and request.headers.get("Sec-Fetch-Dest") == "document")


def check(request: web.Request, allowed: frozenset[str],
          embeddable: bool) -> web.StreamResponse | None:
    """The preflight's answer for a preflight; None for a request that may proceed; 403 for
    an origin not allowed, or for another site's page embedding a route that is not
    ``embeddable`` (the SDK's script and the static files are made to be embedded: a shop's
    page loads /sdk.js with a ``<script>`` tag)."""
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        return preflight(request, allowed)
    if not origin_allowed(request, allowed):
        raise _refused()
    if not embeddable and embedded_by_another_site(request):
        raise ApiError(403, "embedded_by_another_site",
                       "Another site's page may not embed this API (an image, script or frame "
                       "on another site); call it with fetch from an allowed origin.",
                       "Sec-Fetch-Site")
    return None
