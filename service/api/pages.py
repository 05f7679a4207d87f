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
import html
import re
from collections.abc import Sequence
from importlib import resources

from aiohttp import web

from service.api import access
from service.api.context import ROUTE_TABLE, SETTINGS, Handler, Route, json_response
from service.api.openapi import openapi_document
from service.settings import Settings


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


ACCESS_TEXT = {
    access.PUBLIC: "A publishable or a secret key, once a publishable key is configured "
                   "(open until then)",
    access.OPERATOR: "A secret key, once any key is configured (open until then)",
    access.ADMIN: "A secret key (disabled while none is configured)",
    access.OPEN: "Open",
}
"""Which routes need which key, as the README's Access table says (service/api/access.py)."""


def api_page(s: Settings, routes: Sequence[Route]) -> str:
    doc = openapi_document(s, routes)
    rows = []
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            rows.append(f"<tr><td><code>{method.upper()}</code></td>"
                        f"<td><code>{html.escape(path)}</code></td>"
                        f"<td>{html.escape(op['summary'])}"
                        f"{'<br><small>' + html.escape(op['description']) + '</small>' if 'description' in op else ''}"  # noqa: E501
                        "</td></tr>")
    keys = "".join(
        f"<tr><td>{html.escape(who)}</td><td>"
        + ", ".join(sorted({f"<code>{html.escape(r.path)}</code>" for r in routes
                            if r.access == level and r.documented}))
        + "</td></tr>" for level, who in ACCESS_TEXT.items())
    assert set(ACCESS_TEXT) >= {r.access for r in routes}, "every access level explained"
    example = ('curl -s localhost:8000/iid_recommend -H "Content-Type: application/json" -d '
               "'{\"user_interactions\": {\"89898\": {\"timestamp\": 1704060026, "
               "\"rating\": 4.5}}, \"k\": 10, \"recommend_seen\": true}'")
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>sessionrec API</title><meta name="viewport" content="width=device-width,initial-scale=1">
<style>body{{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}}
table{{border-collapse:collapse;width:100%}}td{{border-top:1px solid #ddd;padding:.4rem;
vertical-align:top}}pre{{background:#f4f4f4;padding:1rem;overflow:auto}}</style></head><body>
<h1>sessionrec API</h1><p>{html.escape(doc['info']['description'])}</p>
<p>Machine-readable: <a href="/openapi.json">/openapi.json</a>. Try the
<a href="/demo">demo shop</a>.</p>
<table>{''.join(rows)}</table>
<h2>Keys</h2><p>Send a key as <code>X-API-Key</code> or <code>Authorization: Bearer KEY</code>
(a publishable key may also travel as <code>?key=</code>, for sendBeacon).</p>
<table>{keys}</table>
<h2>Example</h2><pre>{html.escape(example)}</pre>
<h2>Errors</h2><p>Every error is JSON:
<code>{{"error": {{"code": "...", "message": "...", "field": "..."}}}}</code>; 400 invalid input,
413 body too large, 404 unknown route, 405 wrong method, 503 Redis unreachable.</p>
</body></html>"""
