"""API keys, admin operations and rate limiting, through HTTP against a real Redis."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from service.api.app import create_app
from service.api.context import STORE
from service.settings import Settings
from tests.conftest import Client
from tests.helpers import drain

PUB, SECRET = "pk_test_browser", "sk_test_admin"


async def keyed(aiohttp_client: Any, settings: Settings, **extra: Any) -> Client:
    client: Client = await aiohttp_client(create_app(settings.replace(
        publishable_keys=PUB, secret_keys=SECRET, **extra)))
    return client


async def test_keys_gate_public_and_admin_routes(aiohttp_client: Any,
                                                 settings: Settings) -> None:
    client = await keyed(aiohttp_client, settings)
    body: dict[str, Any] = {"user_interactions": {}}
    missing = await client.post("/iid_recommend", json=body)
    assert missing.status == 401
    assert (await missing.json())["error"]["field"] == "X-API-Key"
    assert (await client.post("/iid_recommend", json=body,
                              headers={"X-API-Key": "nope"})).status == 401
    for key in (PUB, SECRET):
        assert (await client.post("/iid_recommend", json=body,
                                  headers={"X-API-Key": key})).status == 200
    # a beacon cannot send headers: publishable keys may come in the query, secret ones not
    event = b'{"session_id": "s", "item_id": "a"}'
    assert (await client.post(f"/events?key={PUB}", data=event)).status == 202
    assert (await client.post(f"/events?key={SECRET}", data=event)).status == 401
    # and only a post needs it: a key in a GET's URL would let any page's <img> spend the API
    for path in (f"/popular?key={PUB}", f"/items/a/similar?key={PUB}",
                 f"/sessions/s/recommendations?key={PUB}"):
        assert (await client.get(path)).status == 401, path
    forbidden = await client.post("/admin/items/a/hide", headers={"X-API-Key": PUB})
    assert forbidden.status == 403
    assert (await forbidden.json())["error"]["code"] == "forbidden"
    assert (await client.post("/admin/items/a/hide", headers={"X-API-Key": SECRET})).status \
        == 200
    # open routes stay open
    for path in ("/healthz", "/readyz", "/openapi.json", "/sdk.js", "/demo"):
        assert (await client.get(path)).status == 200, path


async def test_metrics_need_the_secret_key_once_keys_are_configured(
        aiohttp_client: Any, settings: Settings) -> None:
    """/metrics shows a running experiment's live counts per variant: whoever tilts an
    experiment must not watch it. Prometheus sends its credentials as a bearer token."""
    client = await keyed(aiohttp_client, settings)
    assert (await client.get("/metrics")).status == 401
    assert (await client.get(f"/metrics?key={SECRET}")).status == 401  # never in a URL
    for headers in ({"X-API-Key": PUB}, {"Authorization": f"Bearer {PUB}"}):
        assert (await client.get("/metrics", headers=headers)).status == 403
    assert (await client.get("/metrics", headers={"Authorization": "Bearer nope"})).status \
        == 401
    for headers in ({"X-API-Key": SECRET}, {"Authorization": f"Bearer {SECRET}"}):
        resp = await client.get("/metrics", headers=headers)
        assert resp.status == 200 and "sessionrec_events_accepted" in await resp.text()
    # only a publishable key configured: no secret exists, so metrics are off
    only_public: Client = await aiohttp_client(create_app(settings.replace(
        publishable_keys=PUB)))
    disabled = await only_public.get("/metrics", headers={"X-API-Key": PUB})
    assert disabled.status == 403 and (await disabled.json())["error"]["code"] == \
        "admin_disabled"


async def test_a_secret_key_alone_leaves_the_public_routes_open(aiohttp_client: Any,
                                                                settings: Settings) -> None:
    """A shop sets a secret key first, for the admin routes: its pages (no publishable key
    yet) keep working, and the admin routes need the secret key."""
    client: Client = await aiohttp_client(create_app(settings.replace(secret_keys=SECRET)))
    body: dict[str, Any] = {"user_interactions": {}}
    assert (await client.post("/iid_recommend", json=body)).status == 200
    assert (await client.post("/events", json={"session_id": "s", "item_id": "a"})).status \
        == 202
    assert (await client.get("/popular")).status == 200
    assert (await client.post("/admin/items/a/hide")).status == 401
    assert (await client.get("/metrics")).status == 401
    assert (await client.post("/admin/items/a/hide", headers={"X-API-Key": SECRET})).status \
        == 200


async def test_another_sites_page_cannot_embed_the_api(client: Client) -> None:
    """An <img>, <script>, prefetch or frame on another site carries no Origin (the allow-list
    never sees it) and comes from that site's visitors' addresses: refused by its fetch
    metadata. A link followed to the API, the API's own pages' calls, scripts outside a
    browser and the SDK's own script tag go through."""
    embedded = [{"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors",
                 "Sec-Fetch-Dest": "image"},
                {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors",
                 "Sec-Fetch-Dest": "script"},
                {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "no-cors",
                 "Sec-Fetch-Dest": "empty"},
                {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate",
                 "Sec-Fetch-Dest": "iframe"}]
    for headers in embedded:
        for path in ("/popular?session_id=v", "/items/a/similar", "/sessions/s/recommendations"):
            resp = await client.get(path, headers=headers)
            assert resp.status == 403, (path, headers)
            assert (await resp.json())["error"]["field"] == "Sec-Fetch-Site"
    allowed = [{}, {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors",
                    "Sec-Fetch-Dest": "empty"},
               {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate",
                "Sec-Fetch-Dest": "document"},
               {"Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate",
                "Sec-Fetch-Dest": "document"}]
    for headers in allowed:
        assert (await client.get("/popular", headers=headers)).status == 200, headers
    # what is made to be embedded is not refused: a shop's page loads the SDK with a <script>
    # tag (the refusal without this exemption broke every shop page), and the static files
    for headers in embedded[:3]:
        for path in ("/sdk.js", "/static/uplot.min.css", "/healthz"):
            assert (await client.get(path, headers=headers)).status == 200, (path, headers)


async def test_rate_limits_count_an_ipv6_64_as_one_client(aiohttp_client: Any,
                                                          settings: Settings) -> None:
    """One host holds a whole /64: rotating its addresses does not escape the limit."""
    client = await keyed(aiohttp_client, settings, rate_limit=0.5, rate_burst=3,
                         trusted_proxies="127.0.0.1/32")
    statuses = []
    for n in range(4):
        statuses.append((await client.get("/popular", headers={
            "X-API-Key": PUB, "X-Forwarded-For": f"2001:db8:1:2::{n + 1:x}"})).status)
    assert statuses == [200, 200, 200, 429]
    other = await client.get("/popular", headers={"X-API-Key": PUB,
                                                  "X-Forwarded-For": "2001:db8:1:3::1"})
    assert other.status == 200  # another /64 is another client


async def test_metrics_are_open_while_no_key_is_configured(client: Client) -> None:
    assert (await client.get("/metrics")).status == 200


async def test_admin_routes_are_disabled_without_a_secret_key(client: Client) -> None:
    """No key at all: public routes are open (a trusted network, the demo), admin never."""
    for method, path in (("POST", "/admin/items/a/hide"), ("DELETE", "/admin/items/a/hide"),
                         ("DELETE", "/admin/items/a"), ("DELETE", "/admin/sessions/s")):
        resp = await client.request(method, path)
        assert resp.status == 403, path
        error = (await resp.json())["error"]
        assert error["code"] == "admin_disabled" and "SESSIONREC_SECRET_KEYS" in error["message"]
    assert (await client.get("/popular")).status == 200


async def test_hide_forget_and_reset(aiohttp_client: Any, settings: Settings) -> None:
    client: Client = await aiohttp_client(create_app(settings.replace(secret_keys=SECRET)),
                                          headers={"X-API-Key": SECRET})
    events = []
    for s in range(12):
        events += [{"session_id": f"s{s}", "item_id": "espresso", "timestamp": 100 + s},
                   {"session_id": f"s{s}", "item_id": "grinder", "timestamp": 101 + s},
                   {"session_id": f"s{s}", "item_id": f"x{s % 3}", "timestamp": 102 + s}]
    assert (await client.post("/events", json={"events": events})).status == 202
    await drain(settings)

    async def ids(path: str, body: Any = None) -> list[str]:
        resp = await (client.post(path, json=body) if body else client.get(path))
        return [r["id"] for r in (await resp.json())["recommendations"]]

    ask = {"user_interactions": {"espresso": {}}, "k": 10}
    assert (await ids("/iid_recommend", ask))[0] == "grinder"
    assert (await client.post("/admin/items/grinder/hide")).status == 200
    store = client.app[STORE]
    store.reads.forget_hidden()  # another process would see it within 1 s
    assert "grinder" not in await ids("/iid_recommend", ask)
    assert "grinder" not in await ids("/items/espresso/similar")
    assert "grinder" not in await ids("/popular?k=50")
    assert (await client.delete("/admin/items/grinder/hide")).status == 200
    assert (await ids("/iid_recommend", ask))[0] == "grinder"

    forgot = await client.delete("/admin/items/grinder")
    assert (await forgot.json()) == {"item_id": "grinder", "forgotten": True,
                                     "histories_scrubbed": 12}
    assert "grinder" not in await ids("/iid_recommend", ask)
    assert await ids("/items/grinder/similar") == []
    assert "grinder" not in await ids("/popular?k=50")

    assert (await client.post("/events", json={"session_id": "v", "item_id": "x1"})).status \
        == 202
    assert (await (await client.get("/stats")).json())["live_sessions"] == 13
    assert (await client.delete("/admin/sessions/v")).status == 200
    body = await (await client.get("/sessions/v/recommendations")).json()
    assert body["message"].startswith("Trending")
    assert (await (await client.get("/stats")).json())["live_sessions"] == 12


async def test_rate_limit_answers_429_with_retry_after(aiohttp_client: Any,
                                                       settings: Settings) -> None:
    client = await keyed(aiohttp_client, settings, rate_limit=0.5, rate_burst=3)
    headers = {"X-API-Key": PUB}
    statuses = [(await client.get("/popular", headers=headers)).status for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    limited = await client.get("/popular", headers=headers)
    assert limited.status == 429 and int(limited.headers["Retry-After"]) >= 1
    assert (await limited.json())["error"]["code"] == "rate_limited"
    # the limit is the address's, whatever key it sends; open routes are never limited
    assert (await client.get("/popular", headers={"X-API-Key": SECRET})).status == 429
    assert (await client.get("/healthz")).status == 200


# --- X-Forwarded-For and shared buckets ------------------------------------------------------
async def test_rotating_x_forwarded_for_does_not_escape_the_limit(aiohttp_client: Any,
                                                                  settings: Settings) -> None:
    limited = settings.replace(rate_limit=5, rate_burst=5)
    client: Client = await aiohttp_client(create_app(limited))
    statuses = [(await client.get("/popular", headers={
        "X-Forwarded-For": f"10.0.{n // 250}.{n % 250}"})).status for n in range(60)]
    assert statuses.count(429) >= 50


async def test_forwarded_addresses_count_only_from_trusted_proxies(
        aiohttp_client: Any, settings: Settings) -> None:
    """Behind a trusted proxy each visitor has a bucket of their own: one abuser cannot get
    everyone 429s; and an entry a client wrote itself (left of the proxy's) is ignored."""
    limited = settings.replace(rate_limit=0.1, rate_burst=2, trusted_proxies="127.0.0.1")
    client: Client = await aiohttp_client(create_app(limited))

    async def status(forwarded: str) -> int:
        return (await client.get("/popular", headers={"X-Forwarded-For": forwarded})).status

    assert [await status("203.0.113.7") for _ in range(3)] == [200, 200, 429]
    assert await status("198.51.100.1") == 200  # another visitor
    # the abuser prepends invented addresses; the proxy appends the real one
    assert await status("1.2.3.4, 203.0.113.7") == 429
    assert await status("garbage, 203.0.113.7") == 429


# --- open by default, DNS rebinding ----------------------------------------------------------
async def test_serving_a_network_without_keys_warns_loudly(
        aiohttp_client: Any, settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        client: Client = await aiohttp_client(create_app(settings.replace(host="0.0.0.0")))
    assert any("OPEN API" in r.getMessage() for r in caplog.records)
    ready = await (await client.get("/readyz")).json()
    assert "no publishable key" in ready["warning"]
    local: Client = await aiohttp_client(create_app(settings))
    assert "warning" not in await (await local.get("/readyz")).json()
    # a secret key alone leaves the public routes open: still said out loud
    secret_only: Client = await aiohttp_client(create_app(settings.replace(
        host="0.0.0.0", secret_keys="sk_only")))
    assert "no publishable key" in (await (await secret_only.get("/readyz")).json())["warning"]


async def test_a_rebound_dns_name_is_not_our_own_origin(client: Client) -> None:
    body: dict[str, Any] = {"user_interactions": {}}
    evil = await client.post("/iid_recommend", json=body, headers={
        "Host": "evil.example:8000", "Origin": "http://evil.example:8000"})
    assert evil.status == 403
    assert "evil" not in (await evil.json())["error"]["message"]
    own = f"127.0.0.1:{client.port}"
    ours = await client.post("/iid_recommend", json=body, headers={
        "Host": own, "Origin": f"http://{own}"})
    assert ours.status == 200
    assert ours.headers["Access-Control-Allow-Origin"] == f"http://{own}"
