"""The pages and files the package serves (the dashboard, the demo shop, /docs, the OpenAPI
document, the SDK), and the headers of its HTML pages.

A Content-Security-Policy lets a page run only its own inline script and style (allowed by
hash, so each page stays one file) and what it loads from this origin, and talk only to this
origin: markup that got into a page some other way (an item id, say) runs nothing and sends
nothing elsewhere. No page may be framed (``frame-ancestors 'none'``, and ``X-Frame-Options``
for browsers that predate it): the dashboard's key form would invite clickjacking, and the
demo shop framed by another site would make its visitors' browsers send same-origin events
(views, clicks, impressions) past the CORS allow-list and from their addresses, past the
per-address rate limit. Each page is meant to be opened directly."""

from __future__ import annotations

import base64
import hashlib
import re
from importlib import resources

from aiohttp import web

from service.api.context import ROUTE_TABLE, SETTINGS, Handler, json_response
from service.api.openapi import api_page, openapi_document


def inline_sources(page: bytes, tag: bytes) -> list[str]:
    """A CSP source per inline ``<tag>`` element of the page (one without attributes: a
    ``<script src>`` is loaded, not inline), its text's SHA-256."""
    return [f"'sha256-{base64.b64encode(hashlib.sha256(text).digest()).decode()}'"
            for text in re.findall(rb"<%s>(.*?)</%s>" % (tag, tag), page, re.DOTALL)]


def page_headers(page: bytes) -> dict[str, str]:
    """The headers a page is served with (its policy follows its text: see the module)."""
    policy = {
        "default-src": ["'none'"],
        "script-src": ["'self'", *inline_sources(page, b"script")],
        "style-src": ["'self'", *inline_sources(page, b"style")],
        "connect-src": ["'self'"],
        "img-src": ["'self'", "data:"],  # data: the pages' favicons
        "base-uri": ["'none'"],
        "form-action": ["'none'"],  # the dashboard's key form is handled by its script
        "frame-ancestors": ["'none'"],
    }
    return {"Content-Security-Policy": "; ".join(
                " ".join([directive, *sources]) for directive, sources in policy.items()),
            "X-Frame-Options": "DENY"}


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
    importing the demo's code); an HTML page with its policy (``page_headers``)."""
    body = resources.files("service").joinpath(path).read_bytes()
    headers = {"Cache-Control": "public, max-age=300"}
    if content_type == "text/html":
        headers.update(page_headers(body))

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type, headers=headers)
    return handler
