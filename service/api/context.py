"""What every handler shares: the app's state (typed ``web.AppKey``s, set up in ``app.py``),
the route record, and small request and response helpers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from service.api import access
from service.api.errors import ApiError
from service.api.metrics import Metrics
from service.requests.jsonutil import dumps
from service.requests.values import identifier, parse_json, query_integer
from service.settings import Settings
from service.store.state import Store

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Route:
    """One route, declared once (``routes.ROUTES``): the router, the access check and the
    OpenAPI document are all derived from it."""

    method: str
    path: str
    """As documented: ``/items/{item_id}/similar``. Path parameters match any id, "/" and
    newlines included (percent-encoded in the path): ids are opaque."""
    handler: Handler
    access: str = access.OPEN
    documented: bool = True
    """In the OpenAPI document (not: the docs themselves, redirects, the demo's data)."""
    id_pattern: str = "(?s:.+)"
    """What a path parameter matches: any id by default."""


SETTINGS = web.AppKey("settings", Settings)
API_KEYS = web.AppKey("api_keys", access.ApiKeys)
LIMITER: web.AppKey[access.RateLimiter | None] = web.AppKey("limiter")
STORE = web.AppKey("store", Store)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
OPEN_WARNING: web.AppKey[str | None] = web.AppKey("open_warning")
ROUTE_TABLE: web.AppKey[Sequence[Route]] = web.AppKey("routes")


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=dumps(body), status=status, content_type="application/json")


async def read_json(request: web.Request) -> Any:
    """The body as JSON, whatever the content type (sendBeacon posts text/plain)."""
    return parse_json(await read_body(request))


async def read_body(request: web.Request) -> bytes:
    """The body's bytes, within ``max_body_bytes``."""
    limit = request.app[SETTINGS].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    try:
        body = await request.read()
    except ConnectionError:
        # the client went away before its body was whole: its fault, nothing to do with Redis
        # (whose failures are OSErrors too, answered 503 and logged as outages)
        raise ApiError(400, "incomplete_body", "The connection closed before the body was "
                       "complete.", "body") from None
    except RequestPayloadError:
        # a body its Content-Encoding does not decode (corrupt gzip, trailing bytes): the
        # client's, as a truncated one is. What is left of it is not read (aiohttp would try
        # after the answer, and log the same failure as an unhandled exception each time) and
        # the connection closes after the answer, its framing lost.
        request.content.feed_eof()
        raise ApiError(400, "invalid_body", "The body does not decode as its Content-Encoding "
                       "says.", "body", close=True) from None
    return body


def k_of(request: web.Request) -> int:
    return query_integer(request.query.get("k"), "k", default=10, low=1,
                                    high=request.app[SETTINGS].max_k)


def path_id(request: web.Request, name: str) -> str:
    return identifier(request.match_info[name], name, request.app[SETTINGS])
