"""What every handler shares: the app's state (typed ``web.AppKey``s, set up in ``app.py``),
the route record, and small request and response helpers."""

from __future__ import annotations

import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

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
    """The body's bytes, within ``max_body_bytes`` as sent and as decoded."""
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
    encodings = request.headers.getall("Content-Encoding", [])
    return decoded(body, encodings, limit) if encodings else body


DECODED = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
"""The content codings a body may come in (zlib's window bits for each), besides identity.
aiohttp's own decoding is off (``app.py``): it answered a coding it could not decode (br,
zstd without their packages) with a plain-text 400 before any handler and a traceback logged
at ERROR, and passed codings it did not know as if none."""
MAX_CODINGS = 2


def decoded(body: bytes, encodings: Sequence[str], limit: int) -> bytes:
    """``body`` with its content codings undone, last applied first, each within ``limit``
    bytes (a small body cannot inflate into a large one: decompression stops at the limit)."""
    codings = [c.strip().lower() for value in encodings for c in value.split(",")]
    codings = [c for c in codings if c and c != "identity"]
    unknown = [c for c in codings if c not in DECODED]
    if unknown or len(codings) > MAX_CODINGS:
        raise ApiError(415, "unsupported_encoding",
                       f"The body's Content-Encoding ({', '.join(encodings)}) is not one this "
                       f"API decodes: send gzip or deflate (at most {MAX_CODINGS}), or none.",
                       "body")
    for coding in reversed(codings):
        body = _inflated(body, DECODED[coding], limit)
    return body


def _inflated(body: bytes, window: int, limit: int) -> bytes:
    try:
        inflater = zlib.decompressobj(window)
        out = inflater.decompress(body, limit + 1)
    except zlib.error:  # "deflate" is sometimes sent raw, without zlib's header
        if window != zlib.MAX_WBITS:
            raise _undecodable() from None
        try:
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            out = inflater.decompress(body, limit + 1)
        except zlib.error:
            raise _undecodable() from None
    if len(out) > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(out))
    if not inflater.eof or inflater.unused_data:  # cut short, or bytes after its end
        raise _undecodable()
    return out


def _undecodable() -> ApiError:
    return ApiError(400, "invalid_body", "The body does not decode as its Content-Encoding "
                    "says.", "body")


def k_of(request: web.Request) -> int:
    return query_integer(request.query.get("k"), "k", default=10, low=1,
                                    high=request.app[SETTINGS].max_k)


def path_id(request: web.Request, name: str) -> str:
    return identifier(request.match_info[name], name, request.app[SETTINGS])
