"""Every route, declared once: the router (``app.py``), the access check (``middleware.py``)
and the OpenAPI document (``openapi.py``) are derived from this table."""

from __future__ import annotations

import re

from service.api import admin, ingest, recommend, stats
from service.api.access import ADMIN, PUBLIC
from service.api.context import Route

ROUTES: tuple[Route, ...] = (
    Route("POST", "/iid_recommend", recommend.iid_recommend, PUBLIC),
    Route("POST", "/events", ingest.post_events, PUBLIC),
    Route("GET", "/sessions/{session_id}/recommendations", recommend.session_recommendations,
          PUBLIC),
    Route("GET", "/items/{item_id}/similar", recommend.similar, PUBLIC),
    Route("GET", "/popular", recommend.popular, PUBLIC),
    Route("POST", "/admin/items/{item_id}/hide", admin.hide_item, ADMIN),
    Route("DELETE", "/admin/items/{item_id}/hide", admin.hide_item, ADMIN),
    Route("DELETE", "/admin/items/{item_id}", admin.forget_item, ADMIN),
    Route("DELETE", "/admin/sessions/{session_id}", admin.reset_session, ADMIN),
    Route("GET", "/stats", stats.stats, PUBLIC),
    Route("GET", "/healthz", stats.healthz),
    Route("GET", "/readyz", stats.readyz),
    Route("GET", "/metrics", stats.metrics),
    Route("GET", "/sdk.js", stats.static("api/static/sdk.js", "application/javascript")),
    Route("GET", "/demo", stats.static("demo/page.html", "text/html")),
    Route("GET", "/demo/catalogue.json", stats.static("demo/catalogue.json", "application/json"),
          documented=False),
    Route("GET", "/openapi.json", stats.openapi, documented=False),
    Route("GET", "/docs", stats.docs, documented=False),
    Route("GET", "/", stats.index, documented=False),
    Route("GET", "/favicon.ico", stats.favicon, documented=False),
)


def router_path(path: str) -> str:
    """The aiohttp pattern of a documented path: a parameter matches any id, "/" and newlines
    included (aiohttp's canonical form of the resource is the documented path again)."""
    return re.sub(r"\{(\w+)\}", r"{\1:(?s:.+)}", path)


ACCESS = {route.path: route.access for route in ROUTES}
"""The key each path needs (one level per path: every method of a path shares it)."""
assert all(ACCESS[r.path] == r.access for r in ROUTES), "one access level per path"
