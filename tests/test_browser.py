"""The browser side in a real headless Chromium: the demo shop, the SDK, CORS.

The API runs on a real Redis with the demo's sample log learned by a real worker; Playwright
drives Debian's Chromium (``/usr/bin/chromium``; .ci/run installs it when missing).

Every ``wait_for_function`` takes a function (``() => ...``): Playwright polls a bare expression
with ``eval`` in the page, which the package's own pages forbid (their policy has no
'unsafe-eval'), so such a wait fails whenever its first check is false.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import Browser, Page, async_playwright

from service.api.app import create_app
from service.demo import put_placements, sample_catalogue, sample_events
from service.settings import Settings
from service.store.state import Store
from tests.helpers import wait_drained
from workers.consumer import Worker

CHROMIUM = os.environ.get("SESSIONREC_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

THIRD_PARTY_PAGE = """<!doctype html><html><head><meta charset="utf-8">
<link rel="icon" href="data:,"><script src="{api}/sdk.js"></script></head><body>
<div data-item-id="1001" id="espresso">Espresso machine</div>
<div id="recs"></div>
<script>sessionrec.init({{endpoint: "{api}", k: 5, container: "#recs"}});</script>
</body></html>"""


@dataclass
class Stack:
    api: str
    allowed: str  # an origin the API lets in
    other: str  # one it does not
    store: Store


def _bound() -> tuple[socket.socket, str]:
    """A socket bound to a free loopback port, and its URL: held from the start, so no other
    process can take the port between choosing it and serving on it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock, f"http://127.0.0.1:{sock.getsockname()[1]}"


async def _serve(app: web.Application, sock: socket.socket) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    return runner


VIEW_PAGE = """<!doctype html><html><head><meta charset="utf-8">
<link rel="icon" href="data:,"><script src="{api}/sdk.js"></script></head><body>
<div data-item-id="1033" data-track-view style="height: 200px">Dutch oven, in view</div>
<div data-item-id="1040" style="height: 200px">Turntable, a thumbnail: views not tracked</div>
<div style="height: 3000px"></div>
<div data-item-id="1044" data-track-view>Bluetooth speaker, far below the fold</div>
<script>sessionrec.init({{endpoint: "{api}"}});</script>
</body></html>"""


LISTS_PAGE = """<!doctype html><html><head><meta charset="utf-8">
<link rel="icon" href="data:,"><script src="{api}/sdk.js"></script></head><body>
<div id="top"></div>
<div style="height: 3000px"></div>
<div id="bottom"></div>
<script>
var sdk = sessionrec.init({{endpoint: "{api}", k: 4, flushInterval: 100}});
window.answers = {{}};
sdk.render("#top").then(function (a) {{ window.answers.top = a; }});
sdk.render("#bottom", null, {{k: 3}}).then(function (a) {{ window.answers.bottom = a; }});
</script>
</body></html>"""


STRING_TEMPLATE_PAGE = """<!doctype html><html><head><meta charset="utf-8">
<link rel="icon" href="data:,"><script src="{api}/sdk.js"></script></head><body>
<div id="recs"></div>
<script>
sessionrec.init({{endpoint: "{api}", k: 8, container: "#recs", flushInterval: 100,
  template: function (r) {{
    return '<div class="rec" data-item-id="' + r.id + '" title=' + r.id + '>' + r.id + '</div>';
  }},
  onRender: function (answer) {{ window.answer = answer; }}}});
</script>
</body></html>"""

FRAMING_PAGE = """<!doctype html><html><head><meta charset="utf-8"><link rel="icon" href="data:,">
</head><body><iframe id="dashboard" src="{api}/dashboard"></iframe>
<iframe id="demo" src="{api}/demo"></iframe></body></html>"""


def _page_app(api: str) -> web.Application:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text=THIRD_PARTY_PAGE.format(api=api), content_type="text/html")

    async def view_page(request: web.Request) -> web.Response:
        return web.Response(text=VIEW_PAGE.format(api=api), content_type="text/html")
    async def lists_page(request: web.Request) -> web.Response:
        return web.Response(text=LISTS_PAGE.format(api=api), content_type="text/html")

    async def strings_page(request: web.Request) -> web.Response:
        return web.Response(text=STRING_TEMPLATE_PAGE.format(api=api), content_type="text/html")

    async def framing_page(request: web.Request) -> web.Response:
        return web.Response(text=FRAMING_PAGE.format(api=api), content_type="text/html")
    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/views", view_page)
    app.router.add_get("/lists", lists_page)
    app.router.add_get("/strings", strings_page)
    app.router.add_get("/framing", framing_page)
    return app


@pytest.fixture
async def stack(settings: Settings) -> AsyncIterator[Stack]:
    if not shutil.which(CHROMIUM):
        pytest.fail(f"Chromium not found at {CHROMIUM}: apt-get install chromium")
    store = Store(settings)
    await store.prepare()
    await store.ingestion.append(sample_events(time.time()))
    await store.items.put(sample_catalogue())
    await put_placements(store, settings)
    worker = Worker(settings, worker_id="browser-tests")
    worker_task = asyncio.create_task(worker.run())
    (api_sock, api), (allowed_sock, allowed), (other_sock, other) = (_bound() for _ in range(3))
    runners: list[web.AppRunner] = []
    try:  # whatever fails from here, the worker stops: left running, it logs into later tests
        await wait_drained(store)
        runners.append(await _serve(create_app(settings.replace(cors_origins=allowed), store),
                                    api_sock))
        runners.append(await _serve(_page_app(api), allowed_sock))
        runners.append(await _serve(_page_app(api), other_sock))
        yield Stack(api, allowed, other, store)
    finally:
        for runner in runners:
            await runner.cleanup()
        worker.stop()
        await worker_task
        await worker.redis.aclose()
        await store.close()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield b
        await b.close()


def events_sent(page: Page) -> list[dict[str, Any]]:
    """Every event the page posts to /events from now on, as it posts them."""
    sent: list[dict[str, Any]] = []

    def record(request: Any) -> None:
        if request.method == "POST" and request.url.endswith("/events"):
            sent.extend(json.loads(request.post_data or "{}")["events"])
    page.on("request", record)
    return sent


def console_errors(page: Page) -> list[str]:
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return errors


async def record_policy_violations(page: Page) -> None:
    """From the next navigation on, the page's Content-Security-Policy violations collect in
    window.violations (Chromium reports them as console errors too)."""
    await page.add_init_script(
        "window.violations = []; document.addEventListener('securitypolicyviolation', "
        "e => window.violations.push(e.violatedDirective + ' ' + e.blockedURI));")


async def make_trending(api: str, item_ids: list[str], sessions: int = 100) -> None:
    """What anyone holding the publishable key can send: a purchase of each id from each of
    ``sessions`` sessions, through POST /events (ids are not markup-checked: they are data)."""
    events = [{"session_id": f"crowd-{n}", "item_id": item, "type": "purchase"}
              for n in range(sessions) for item in item_ids]
    async with aiohttp.ClientSession() as http:
        for start in range(0, len(events), 1000):
            async with http.post(api + "/events",
                                 json={"events": events[start:start + 1000]}) as r:
                assert r.status == 202, await r.text()


async def rec_ids(page: Page) -> list[str]:
    ids: list[str] = await page.eval_on_selector_all(
        "#recs [data-item-id]", "els => els.map(e => e.getAttribute('data-item-id'))")
    return ids


async def stats(api: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(api + "/stats") as resp:
        body: dict[str, Any] = await resp.json()
        return body


async def test_demo_shop_learns_from_clicks(stack: Stack, browser: Browser) -> None:
    page = await browser.new_page()
    errors = console_errors(page)
    await record_policy_violations(page)
    before = (await stats(stack.api))["events_accepted"]
    await page.goto(stack.api + "/demo")
    await page.wait_for_selector("#recs .card")
    assert await page.text_content("#message")
    initial = await rec_ids(page)

    assert (await page.text_content("#message") or "").startswith("Trending")
    await page.click('#catalogue .card[data-item-id="1001"] .name')  # Espresso machine
    await page.wait_for_function(
        "() => document.getElementById('message').textContent"
        ".includes('based on session interactions')",
        timeout=10_000)
    # the planted co-visited item (Burr grinder) leads, and the list changed
    after = await rec_ids(page)
    assert after[0] == "1002" and after != initial and "1001" not in after

    await page.click('#catalogue .card[data-item-id="1033"] button')  # add to cart
    stored = await page.evaluate("JSON.parse(sessionStorage.getItem('sessionrec:interactions'))")
    assert set(stored) == {"1001", "1033"}
    for value in stored.values():
        assert set(value) == {"timestamp", "rating"}
        assert isinstance(value["timestamp"], int) and abs(value["timestamp"] - time.time()) < 60
    assert stored["1001"]["rating"] == 3 and stored["1033"]["rating"] == 4
    assert "Espresso machine" in (await page.text_content("#session") or "")

    # the events reach /events (batched) and are counted
    await page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")
    await page.evaluate("sessionrec.flush()")
    # (the impressions of the rendered lists too: counted apart, never learned)
    for _ in range(100):
        counted = await wait_drained(stack.store)
        if counted["events_accepted"] - counted["impressions"] >= before + 2:
            break
        await asyncio.sleep(0.1)
    assert counted["events_accepted"] - counted["impressions"] == before + 2
    assert counted["impressions"] > 0
    assert await page.evaluate("window.violations") == []  # under its policy
    assert errors == []


async def test_the_demo_shops_placements_cart_category_new_items_and_promotion(
        stack: Stack, browser: Browser) -> None:
    """Each place of the demo shop is a placement: a new product that fits what the visitor
    looks at reaches the "New in" shelf, the house brand is promoted in "More you may like",
    the cart gets what goes with it (learned from other carts), and a category page lists its
    products ordered for the visitor."""
    catalogue = {r.item_id: r for r in sample_catalogue()}
    page = await browser.new_page()
    errors = console_errors(page)
    await record_policy_violations(page)
    await page.goto(stack.api + "/demo")
    await page.wait_for_selector("#recs .card")
    assert await page.is_hidden("#cart-box") and await page.is_hidden("#new")
    await page.click('#catalogue .card[data-item-id="1001"] .name')  # Espresso machine
    # new in: the coffee product that arrived today (no event yet), marked new
    await page.wait_for_selector('#new .card[data-item-id="1049"] .badge.new', timeout=10_000)
    shelf = await page.eval_on_selector_all("#new [data-item-id]",
                                            "es => es.map(e => e.dataset.itemId)")
    assert "1049" in shelf and "1001" not in shelf
    # more you may like: its first place promoted, a house-brand product
    await page.wait_for_selector("#more .card .badge:text-is('promoted')", timeout=10_000)
    first = await page.get_attribute("#more .card", "data-item-id")
    assert first is not None and "house-brand" in catalogue[first].tags
    # the cart: what goes with it comes from other carts (the espresso bundle)
    await page.click('#catalogue .card[data-item-id="1001"] button')  # add to cart
    await page.wait_for_selector("#cart-recs .card", timeout=10_000)
    assert "Espresso machine" in (await page.text_content("#cart") or "")
    goes = await page.eval_on_selector_all("#cart-recs [data-item-id]",
                                           "es => es.map(e => e.dataset.itemId)")
    assert {"1007", "1006"} & set(goes[:2]) and "1001" not in goes
    assert "carts" in (await page.text_content("#cart-message") or "").lower()
    # a category page: its products, all of them, ordered for this visitor
    await page.click('#filters button:text-is("Coffee")')
    await page.wait_for_function(
        "() => document.getElementById('order-note').textContent.startsWith('Ordered for you:')",
        timeout=10_000)
    listed = await page.eval_on_selector_all("#catalogue > .card",
                                             "es => es.map(e => e.dataset.itemId)")
    coffee = [i for i, r in catalogue.items() if r.categories[0] == "Coffee"]
    assert sorted(listed) == sorted(coffee) and listed != coffee  # reordered, none lost
    assert listed[0] in ("1001", "1002")  # what the visitor looked at, or went with it
    assert await page.evaluate("window.violations") == []
    assert errors == []


async def test_category_pages_filter_and_each_recommendation_says_why(
        stack: Stack, browser: Browser) -> None:
    """The shop page asks for at most two of a category and explanations; a category page
    filters by its category. Every card says why: the viewed items behind it, or trending."""
    categories = {r.item_id: r.categories[0] for r in sample_catalogue()}
    names = {r.item_id: r.name for r in sample_catalogue()}
    page = await browser.new_page()
    errors = console_errors(page)
    await page.goto(stack.api + "/demo")
    await page.wait_for_selector("#recs .card")
    await page.click('#catalogue .card[data-item-id="1001"] .name')  # Espresso machine
    await page.wait_for_function(
        "() => document.getElementById('message').textContent"
        ".includes('based on session interactions')", timeout=10_000)
    shop = await rec_ids(page)
    assert shop[0] == "1002"
    assert max(sum(categories[i] == c for i in shop) for c in set(categories.values())) <= 2
    reasons = await page.eval_on_selector_all("#recs .card", "cs => cs.map(c => "
                                              "(c.querySelector('.because') || {}).textContent)")
    assert reasons[0] == f"because you viewed {names['1001']}"
    assert all(r in ("trending now", f"because you viewed {names['1001']}") for r in reasons)

    await page.click('#filters button:text-is("Tea")')  # the Tea category page
    await page.wait_for_function(
        "() => document.getElementById('recs-title').textContent === 'Recommended in Tea'")
    await page.wait_for_function(
        "ids => { const now = [...document.querySelectorAll('#recs [data-item-id]')]"
        ".map(e => e.getAttribute('data-item-id')); return now.length > 0 && "
        "now.every(id => ids.includes(id)); }",
        arg=[i for i, c in categories.items() if c == "Tea"], timeout=10_000)
    tea = await rec_ids(page)
    assert len(tea) == 6 and all(categories[i] == "Tea" for i in tea)
    # "More you may like" follows the filter too: the Tea items not shown, or hidden when
    # none are left (never an empty list under its title)
    await page.wait_for_function(
        "ids => document.getElementById('more').hidden || [...document.querySelectorAll("
        "'#more [data-item-id]')].map(e => e.dataset.itemId).every(id => ids.includes(id))",
        arg=[i for i, c in categories.items() if c == "Tea"], timeout=10_000)
    more = await page.eval_on_selector_all("#more [data-item-id]",
                                           "es => es.map(e => e.dataset.itemId)")
    if more:
        assert all(categories[i] == "Tea" and i not in tea for i in more)
    else:
        assert await page.is_hidden("#more-title")
    assert errors == []


async def test_third_party_page_with_only_the_script_tag(stack: Stack, browser: Browser) -> None:
    page = await browser.new_page()
    errors = console_errors(page)
    await page.goto(stack.allowed + "/")
    await page.wait_for_selector("#recs [data-item-id]")  # trending before any click
    await page.click("#espresso")
    await page.wait_for_function(
        "() => document.querySelector('#recs [data-item-id]')"
        ".getAttribute('data-item-id') === '1002'", timeout=10_000)
    assert "1001" not in await rec_ids(page)
    assert errors == []


async def test_origin_not_allowed_is_refused(stack: Stack, browser: Browser) -> None:
    page = await browser.new_page()
    await page.goto(stack.other + "/")
    outcome = await page.evaluate(
        "sessionrec.recommend().then(() => 'answered', e => 'refused: ' + e.message)")
    assert outcome.startswith("refused")
    assert await rec_ids(page) == []


async def test_views_are_tracked_when_an_element_stays_visible(stack: Stack,
                                                               browser: Browser) -> None:
    page = await browser.new_page(viewport={"width": 800, "height": 600})
    errors = console_errors(page)
    await page.goto(stack.allowed + "/views")
    await page.wait_for_timeout(300)
    assert await page.evaluate("sessionStorage.getItem('sessionrec:interactions')") is None
    await page.wait_for_function(
        "() => sessionStorage.getItem('sessionrec:interactions') !== null", timeout=5000)
    stored = await page.evaluate("JSON.parse(sessionStorage.getItem('sessionrec:interactions'))")
    assert list(stored) == ["1033"] and stored["1033"]["rating"] == 1  # a view
    assert errors == []


async def test_impressions_only_for_lists_in_view_and_clicks_carry_their_answer(
        stack: Stack, browser: Browser) -> None:
    """Two rendered lists, one below the fold: only the one in view sends impressions, once
    per answer; the other sends its own when scrolled to; a click on a rendered item carries
    its list's recommendation_id; the server counts exactly what the page sent."""
    page = await browser.new_page(viewport={"width": 800, "height": 600})
    errors = console_errors(page)
    sent = events_sent(page)

    async def impressions(wanted: int) -> list[dict[str, Any]]:
        deadline = time.monotonic() + 10
        while sum(e["type"] == "impression" for e in sent) < wanted:
            assert time.monotonic() < deadline, sent
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # nothing more comes
        return [e for e in sent if e["type"] == "impression"]

    await page.goto(stack.allowed + "/lists")
    await page.wait_for_function("() => window.answers.top && window.answers.bottom")
    answers = await page.evaluate("window.answers")
    top, bottom = (answers[n]["recommendation_id"] for n in ("top", "bottom"))
    top_items = [r["id"] for r in answers["top"]["recommendations"]]
    bottom_items = [r["id"] for r in answers["bottom"]["recommendations"]]
    assert top != bottom and len(top_items) == 4 and len(bottom_items) == 3
    shown = await impressions(4)
    assert {e["recommendation_id"] for e in shown} == {top}
    assert sorted(e["item_id"] for e in shown) == sorted(top_items)
    await page.locator("#bottom").scroll_into_view_if_needed()
    shown = await impressions(7)
    assert sorted(e["item_id"] for e in shown if e["recommendation_id"] == bottom) == \
        sorted(bottom_items)
    await page.evaluate("window.scrollTo(0, 0)")  # seen again: the same answer, no new ones
    assert len(await impressions(7)) == 7
    await page.click(f'#top [data-item-id="{top_items[1]}"]')
    deadline = time.monotonic() + 10
    while not any(e["type"] == "click" for e in sent):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    click = next(e for e in sent if e["type"] == "click")
    assert click["item_id"] == top_items[1] and click["recommendation_id"] == top
    assert all(e["session_id"] == shown[0]["session_id"] for e in sent)
    stats = await wait_drained(stack.store)
    assert stats["impressions"] == 7 and stats["attributed_clicks"] == 1
    assert errors == []


async def test_the_dashboard_renders_every_chart_with_data(stack: Stack,
                                                           browser: Browser) -> None:
    """A minute's traffic (recommendations with session ids under an experiment, their
    impressions and clicks, events), then the dashboard: it asks for the secret key, and
    every chart has data; no console error. It is served with its policy (no framing; its
    own script and style, uPlot and data from its origin only), and nothing breaks it."""
    secret = "sk_test_dashboard"
    sock, admin = _bound()
    runner = await _serve(create_app(stack.store.settings.replace(secret_keys=secret),
                                     stack.store), sock)
    try:
        async with aiohttp.ClientSession(headers={"X-API-Key": secret}) as http:
            async with http.put(admin + "/admin/experiments/look", json={"variants": {
                    "A": {"params": {}}, "B": {"params": {"position_decay": 1.0}}}}) as r:
                assert r.status == 200
            events = []
            for n in range(40):
                async with http.post(admin + "/iid_recommend", json={
                        "user_interactions": {"1001": {}}, "k": 4,
                        "session_id": f"dash{n}"}) as r:
                    answer = await r.json()
                rid = answer["recommendation_id"]
                events += [{"session_id": f"dash{n}", "item_id": x["id"], "type": "impression",
                            "recommendation_id": rid} for x in answer["recommendations"]]
                events.append({"session_id": f"dash{n}", "type": "click", "recommendation_id":
                               rid, "item_id": answer["recommendations"][n % 4]["id"]})
            async with http.post(admin + "/events", json={"events": events}) as r:
                assert r.status == 202
        await wait_drained(stack.store)
        await asyncio.sleep(2.5)  # the worker's and the serve process' tallies reach Redis
        page = await browser.new_page(viewport={"width": 1200, "height": 1000})
        errors = console_errors(page)
        await record_policy_violations(page)
        response = await page.goto(admin + "/dashboard")
        assert response is not None and response.headers["x-frame-options"] == "DENY"
        policy = response.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy and "'unsafe-inline'" not in policy
        await page.fill("#key", secret)
        await page.click("#key-form button")
        await page.wait_for_function("() => window.sessionrecDashboard.data !== null",
                                     timeout=10_000)
        filled = await page.evaluate("""() => {
            const out = {};
            for (const [id, chart] of Object.entries(window.sessionrecDashboard.charts))
              out[id] = chart.data.slice(1).map(s => s.filter(v => v != null && v > 0).length);
            return out;
        }""")
        assert set(filled) == {"events", "freshness", "requests", "latency", "ctr"}
        for chart, series in filled.items():
            assert all(n > 0 for n in series), (chart, filled)
        assert await page.evaluate("sessionStorage.getItem('sessionrec:dashboard-key')") == secret
        assert "1002" in (await page.text_content("#trending") or "")
        # drawn: uPlot's canvases and legends, its style sheet and the page's own style
        drawn = await page.eval_on_selector_all(
            ".chart canvas", "cs => cs.filter(c => c.width > 0 && c.height > 0).length")
        assert drawn == 5
        assert await page.eval_on_selector(
            ".uplot", "e => getComputedStyle(e).fontFamily") != await page.eval_on_selector(
            "body", "e => getComputedStyle(e).fontFamily")  # uplot.min.css applies
        assert await page.eval_on_selector(
            "header", "e => getComputedStyle(e).backgroundColor") == "rgb(29, 35, 48)"
        assert await page.evaluate("window.violations") == []
        assert errors == []
    finally:
        await runner.cleanup()


async def test_the_demo_shop_sends_impressions_of_the_lists_in_view_only(
        stack: Stack, browser: Browser) -> None:
    """The demo shop: "Recommended for you" is in view, "More you may like" is below the
    catalogue. Only the first sends impressions until the page is scrolled to the second; a
    click on a recommendation carries its list's recommendation_id."""
    page = await browser.new_page(viewport={"width": 1280, "height": 700})
    errors = console_errors(page)
    sent = events_sent(page)

    async def until(condition: Any) -> None:
        deadline = time.monotonic() + 10
        while not condition():
            assert time.monotonic() < deadline, sent
            await asyncio.sleep(0.05)

    await page.goto(stack.api + "/demo")
    await page.wait_for_selector("#recs .card")
    await page.wait_for_selector("#more .card")
    top = await page.get_attribute("#recs", "data-recommendation-id")
    more = await page.get_attribute("#more", "data-recommendation-id")
    assert top and more and top != more
    top_items = await page.eval_on_selector_all("#recs .card",
                                                "cs => cs.map(c => c.dataset.itemId)")
    more_items = await page.eval_on_selector_all("#more .card",
                                                 "cs => cs.map(c => c.dataset.itemId)")

    def shown(rid: str) -> list[str]:
        return sorted(e["item_id"] for e in sent
                      if e["type"] == "impression" and e["recommendation_id"] == rid)
    # (the list may have been rendered once before, in view too: that answer's impressions
    # are as right as these)
    await until(lambda: len(shown(top)) >= len(top_items))
    await asyncio.sleep(0.6)
    assert shown(top) == sorted(top_items) and shown(more) == []
    await page.locator("#more").scroll_into_view_if_needed()
    await until(lambda: len(shown(more)) >= len(more_items))
    await asyncio.sleep(0.3)
    assert shown(more) == sorted(more_items) and shown(top) == sorted(top_items)
    await page.evaluate("window.scrollTo(0, 0)")
    await page.click(f'#recs .card[data-item-id="{top_items[0]}"] .name')
    await until(lambda: any(e["type"] == "click" for e in sent))
    click = next(e for e in sent if e["type"] == "click")
    assert click["item_id"] == top_items[0] and click["recommendation_id"] == top
    assert errors == []


HOSTILE = ["<img src=x onerror=window.__pwned=1>", '"><img src=x onerror=window.__pwned=2>']


async def test_a_string_template_shows_hostile_trending_ids_as_text(
        stack: Stack, browser: Browser) -> None:
    """Ids that are markup, made trending with public purchase events, rendered by a string
    template (quoted and unquoted attributes, text): each shows as text, no script runs, and
    the attribute and the click the SDK tracks carry the id itself."""
    await make_trending(stack.api, HOSTILE)
    await wait_drained(stack.store)
    page = await browser.new_page()
    errors = console_errors(page)
    sent = events_sent(page)
    await page.goto(stack.allowed + "/strings")
    await page.wait_for_function("() => window.answer !== undefined", timeout=10_000)
    answer = await page.evaluate("window.answer")
    ids = [r["id"] for r in answer["recommendations"]]
    assert sorted(ids[:2]) == sorted(HOSTILE)  # they lead trending
    rendered = await page.eval_on_selector_all(
        "#recs > *", "es => es.map(e => [e.dataset.itemId, e.title, e.textContent])")
    assert rendered == [[i, i, i] for i in ids]
    assert await page.eval_on_selector_all("img", "es => es.length") == 0
    await page.wait_for_timeout(500)
    assert await page.evaluate("window.__pwned") is None
    await page.click(f"#recs > *:nth-child({ids.index(HOSTILE[1]) + 1})")
    deadline = time.monotonic() + 10
    while not any(e["type"] == "click" for e in sent):
        assert time.monotonic() < deadline, sent
        await asyncio.sleep(0.05)
    click = next(e for e in sent if e["type"] == "click")
    assert click["item_id"] == HOSTILE[1]
    assert click["recommendation_id"] == answer["recommendation_id"]
    assert errors == []


BUILT_IN = ["constructor", "__proto__", "toString"]


async def test_the_demo_shop_shows_ids_named_like_object_properties(
        stack: Stack, browser: Browser) -> None:
    """Trending ids that name Object's own properties (and one that is markup): the demo shop
    lists them like any other, and a click on one is kept in the session."""
    odd = [*BUILT_IN, HOSTILE[0]]
    await make_trending(stack.api, odd)
    await wait_drained(stack.store)
    page = await browser.new_page()
    errors = console_errors(page)
    await page.goto(stack.api + "/demo")
    await page.wait_for_function(
        "ids => { const shown = [...document.querySelectorAll('#recs [data-item-id]')]"
        ".map(e => e.dataset.itemId); return ids.every(id => shown.includes(id)); }",
        arg=odd, timeout=10_000)
    assert (await page.text_content("#message") or "").startswith("Trending")
    names = await page.eval_on_selector_all("#recs .card .name", "es => es.map(e => e.textContent)")
    assert set(odd) <= set(names)
    await page.click('#recs .card[data-item-id="__proto__"] .name')
    await page.wait_for_function(
        "() => document.getElementById('session').textContent.includes('__proto__ · rating 3')",
        timeout=10_000)
    stored = await page.evaluate("Object.keys(JSON.parse("
                                 "sessionStorage.getItem('sessionrec:interactions')))")
    assert stored == ["__proto__"]
    assert await page.evaluate("window.__pwned") is None
    assert errors == []


async def test_the_demo_shop_says_when_the_api_refuses(stack: Stack, browser: Browser) -> None:
    """A server that wants a key the page does not send (401), and a proxy's error page (502,
    no JSON): the demo says so where the list would be, never "Loading…" for good; and
    recovers at the next answer."""
    sock, keyed = _bound()
    runner = await _serve(create_app(stack.store.settings.replace(publishable_keys="pk_demo"),
                                     stack.store), sock)
    try:
        page = await browser.new_page()
        await page.goto(keyed + "/demo")
        await page.wait_for_function(
            "() => document.getElementById('message').className === 'error'", timeout=10_000)
        message = await page.text_content("#message") or ""
        assert "API key" in message and "401" in message, message
        assert await page.is_hidden("#more-title")
    finally:
        await runner.cleanup()

    page = await browser.new_page()
    await page.route("**/iid_recommend", lambda route: route.fulfill(
        status=502, content_type="text/html", body="<html><h1>502 Bad Gateway</h1></html>"))
    await page.goto(stack.api + "/demo")
    await page.wait_for_function(
        "() => document.getElementById('message').className === 'error'", timeout=10_000)
    assert "502" in (await page.text_content("#message") or "")
    await page.unroute("**/iid_recommend")
    await page.click('#catalogue .card[data-item-id="1001"] .name')
    await page.wait_for_function(
        "() => document.getElementById('message').textContent"
        ".includes('based on session interactions')", timeout=10_000)
    assert await page.get_attribute("#message", "class") == ""


async def test_no_page_of_the_package_can_be_framed(stack: Stack, browser: Browser) -> None:
    """The dashboard (its key form) and the demo shop (its same-origin events) refuse to be
    framed by another site: both headers, and Chromium shows neither in a frame."""
    async with aiohttp.ClientSession() as http:
        for path in ("/dashboard", "/demo", "/docs"):
            async with http.get(stack.api + path) as r:
                assert r.headers["X-Frame-Options"] == "DENY"
                policy = r.headers["Content-Security-Policy"]
                assert "frame-ancestors 'none'" in policy and "default-src 'none'" in policy
    page = await browser.new_page()
    await page.goto(stack.allowed + "/framing")
    await page.wait_for_timeout(1000)
    framed = {f.name or f.url: f.url for f in page.frames[1:]}
    assert len(page.frames) == 3
    for frame in page.frames[1:]:
        assert not frame.url.startswith(stack.api), framed
        assert await frame.query_selector("#key-form, #recs") is None
    # opened directly, /docs is drawn under its policy (its inline style applies)
    page = await browser.new_page()
    errors = console_errors(page)
    await record_policy_violations(page)
    await page.goto(stack.api + "/docs")
    assert await page.eval_on_selector("pre", "e => getComputedStyle(e).backgroundColor") == \
        "rgb(244, 244, 244)"
    assert await page.evaluate("window.violations") == [] and errors == []
