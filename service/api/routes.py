"""Every route, declared once: the router (``app.py``), the access check (``middleware.py``)
and the OpenAPI document (``openapi.py``) are derived from this table."""

from __future__ import annotations

import re

from service.api import (
    admin,
    catalog,
    dashboard,
    experiments,
    ingest,
    pages,
    parameters,
    placements,
    recommend,
    stats,
)
from service.api.access import ADMIN, OPERATOR, PUBLIC
from service.api.context import Route

NOT_SIMILAR = "(?s:.+)(?<!/similar)(?<!/bought-together)"

ROUTES: tuple[Route, ...] = (
    Route("POST", "/iid_recommend", recommend.iid_recommend, PUBLIC),
    Route("POST", "/events", ingest.post_events, PUBLIC),
    Route("GET", "/sessions/{session_id}/recommendations", recommend.session_recommendations,
          PUBLIC),
    Route("GET", "/items/{item_id}/similar", recommend.similar, PUBLIC),
    Route("GET", "/items/{item_id}/bought-together", recommend.bought_together, PUBLIC),
    Route("GET", "/popular", recommend.popular, PUBLIC),
    Route("POST", "/rerank", recommend.post_rerank, PUBLIC),
    Route("POST", "/admin/items/{item_id}/hide", admin.hide_item, ADMIN),
    Route("DELETE", "/admin/items/{item_id}/hide", admin.hide_item, ADMIN),
    Route("DELETE", "/admin/items/{item_id}", admin.forget_item, ADMIN),
    Route("DELETE", "/admin/sessions/{session_id}", admin.reset_session, ADMIN),
    # a path ending in /similar or /bought-together is that route's, whatever the method: a
    # record of an id ending so goes in through POST /items
    Route("PUT", "/items/{item_id}", catalog.put_item, ADMIN, id_pattern=NOT_SIMILAR),
    Route("GET", "/items/{item_id}", catalog.get_item, ADMIN, id_pattern=NOT_SIMILAR),
    Route("DELETE", "/items/{item_id}", catalog.delete_item, ADMIN, id_pattern=NOT_SIMILAR),
    Route("POST", "/items", catalog.post_items, ADMIN),
    Route("GET", "/model", parameters.get_model, PUBLIC),
    Route("PUT", "/admin/model", parameters.put_model, ADMIN),
    Route("POST", "/admin/tune", parameters.start_tuning, ADMIN),
    Route("PUT", "/admin/experiments/{name}", experiments.put_experiment, ADMIN),
    Route("GET", "/admin/experiments/{name}", experiments.get_experiment, ADMIN),
    Route("DELETE", "/admin/experiments/{name}", experiments.delete_experiment, ADMIN),
    Route("GET", "/admin/placements", placements.list_placements, ADMIN),
    Route("PUT", "/admin/placements/{name}", placements.put_placement, ADMIN),
    Route("GET", "/admin/placements/{name}", placements.get_placement, ADMIN),
    Route("DELETE", "/admin/placements/{name}", placements.delete_placement, ADMIN),
    Route("GET", "/admin/dashboard/data", dashboard.dashboard_data, ADMIN),
    Route("GET", "/dashboard", pages.static("api/static/dashboard.html", "text/html")),
    Route("GET", "/static/uplot.iife.min.js",
          pages.static("api/static/uplot.iife.min.js", "application/javascript"),
          documented=False),
    Route("GET", "/static/uplot.min.css", pages.static("api/static/uplot.min.css", "text/css"),
          documented=False),
    Route("GET", "/stats", stats.stats, PUBLIC),
    Route("GET", "/healthz", stats.healthz),
    Route("GET", "/readyz", stats.readyz),
    Route("GET", "/metrics", stats.metrics, OPERATOR),
    Route("GET", "/sdk.js", pages.static("api/static/sdk.js", "application/javascript")),
    Route("GET", "/demo", pages.static("demo/page.html", "text/html")),
    Route("GET", "/demo/catalogue.json", pages.static("demo/catalogue.json", "application/json"),
          documented=False),
    Route("GET", "/openapi.json", pages.openapi, documented=False),
    Route("GET", "/docs", pages.docs, documented=False),
    Route("GET", "/", pages.index, documented=False),
    Route("GET", "/favicon.ico", pages.favicon, documented=False),
)


def router_path(route: Route) -> str:
    """The aiohttp pattern of a route's documented path: a parameter matches any id, "/" and
    newlines included, unless the route says otherwise (aiohttp's canonical form of the
    resource is the documented path again)."""
    return re.sub(r"\{(\w+)\}", lambda m: "{" + m.group(1) + ":" + route.id_pattern + "}",
                  route.path)


ACCESS = {route.path: route.access for route in ROUTES}
"""The key each path needs (one level per path: every method of a path shares it)."""
assert all(ACCESS[r.path] == r.access for r in ROUTES), "one access level per path"
