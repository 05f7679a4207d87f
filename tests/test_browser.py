"""The browser side in a real headless Chromium: the demo shop, the SDK, CORS.

The API runs on a real Redis with the demo's sample log learned by a real worker; Playwright
drives Debian's Chromium (``/usr/bin/chromium``; .ci/run installs it when missing).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import Browser, Page, async_playwright

from service.api.app import create_app
from service.demo import sample_catalogue, sample_events
from service.offline.redisproc import free_port
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


async def _serve(app: web.Application, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


VIEW_PAGE = """<!doctype html><html><head><meta charset="utf-8">
<link rel="icon" href="data:,"><script src="{api}/sdk.js"></script></head><body>
<div data-item-id="1033" data-track-view style="height: 200px">Dutch oven, in view</div>
<div data-item-id="1040" style="height: 200px">Turntable, a thumbnail: views not tracked</div>
<div style="height: 3000px"></div>
<div data-item-id="1044" data-track-view>Bluetooth speaker, far below the fold</div>
<script>sessionrec.init({{endpoint: "{api}"}});</script>
</body></html>"""


def _page_app(api: str) -> web.Application:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text=THIRD_PARTY_PAGE.format(api=api), content_type="text/html")

    async def view_page(request: web.Request) -> web.Response:
        return web.Response(text=VIEW_PAGE.format(api=api), content_type="text/html")
    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/views", view_page)
    return app


@pytest.fixture
async def stack(settings: Settings) -> AsyncIterator[Stack]:
    if not shutil.which(CHROMIUM):
        pytest.fail(f"Chromium not found at {CHROMIUM}: apt-get install chromium")
    store = Store(settings)
    await store.prepare()
    await store.append(sample_events(time.time()))
    await store.put_items(sample_catalogue())
    worker = Worker(settings, worker_id="browser-tests")
    worker_task = asyncio.create_task(worker.run())
    await wait_drained(store)
    api, allowed, other = (f"http://127.0.0.1:{free_port()}" for _ in range(3))
    runners = [
        await _serve(create_app(settings.replace(cors_origins=allowed), store),
                     int(api.rsplit(":", 1)[1])),
        await _serve(_page_app(api), int(allowed.rsplit(":", 1)[1])),
        await _serve(_page_app(api), int(other.rsplit(":", 1)[1])),
    ]
    try:
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


def console_errors(page: Page) -> list[str]:
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return errors


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
    for _ in range(100):
        if (await stats(stack.api))["events_accepted"] >= before + 2:
            break
        await asyncio.sleep(0.1)
    assert (await stats(stack.api))["events_accepted"] == before + 2
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
