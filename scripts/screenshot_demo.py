"""Screenshot of the demo shop after a few clicks and a tent in the cart, on its Outdoors
category page: the category's products ordered for the visitor (the category placement),
"because you viewed ..." under each recommendation, what goes with the cart, and the
new-items shelf and the promoted house brand below, for the docs.

    python scripts/screenshot_demo.py docs/demo.png

Runs the demo stack on the embedded store in-process and drives Debian's Chromium.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web
from playwright.async_api import async_playwright

from service.api.app import create_app
from service.demo import load_sample
from service.offline.redisproc import free_port
from service.settings import Settings
from service.store.state import Store
from workers.consumer import Worker

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@asynccontextmanager
async def embedded_shop(settings: Settings) -> AsyncIterator[str]:
    """The demo stack on the embedded store, in this process: the sample shop learned by a
    worker, the API on ``settings.port``; its base URL."""
    store = Store(settings)
    await store.prepare()
    worker = Worker(settings, client=store.redis, worker_id="screenshot")
    task = asyncio.create_task(worker.run())
    await load_sample(store)
    runner = web.AppRunner(create_app(settings, store), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", settings.port).start()
    try:
        yield f"http://127.0.0.1:{settings.port}"
    finally:
        await runner.cleanup()
        worker.stop()
        await task


async def main(out: str) -> None:
    async with embedded_shop(Settings(redis_url="memory://", port=free_port())) as api:
        await screenshot(api, out)


async def screenshot(api: str, out: str) -> None:
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
        page = await browser.new_page(viewport={"width": 1280, "height": 1100})
        await page.goto(f"{api}/demo")
        await page.wait_for_selector("#recs .card")
        for item in ("1017", "1018"):  # Two-person tent, then Sleeping bag
            await page.click(f'#catalogue .card[data-item-id="{item}"] .name')
            await page.wait_for_timeout(400)
        await page.click('#catalogue .card[data-item-id="1017"] button')  # the tent to cart
        await page.wait_for_selector("#cart-recs .card")
        await page.click('#filters button:text-is("Outdoors")')
        await page.wait_for_function(
            "() => document.getElementById('order-note').textContent.startsWith('Ordered')")
        await page.wait_for_timeout(600)
        await page.evaluate("window.scrollTo(0, 0)")
        await page.wait_for_timeout(200)
        await page.screenshot(path=out)
        await browser.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "docs/demo.png"))
