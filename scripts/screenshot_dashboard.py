"""Screenshot of the operator's dashboard after a few minutes of simulated shop traffic under
an experiment, for the docs.

    python scripts/screenshot_dashboard.py docs/dashboard.png [--seconds 150]

Runs the demo stack on the embedded store in-process: visitors click around the demo's
catalogue, ask for recommendations with their session id, send the impressions of each
answer and click a recommended item now and then (more often under variant A), while the
page is driven by Debian's Chromium.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

import aiohttp
from playwright.async_api import async_playwright

sys.path.insert(0, str(Path(__file__).resolve().parent))

from screenshot_demo import FLAGS, embedded_shop

from service.demo import sample_catalogue
from service.offline.redisproc import free_port
from service.settings import Settings

SECRET = "sk_screenshot"


async def traffic(api: str, seconds: float) -> None:
    items = [r.item_id for r in sample_catalogue()]
    rnd = random.Random(3)
    ends = time.monotonic() + seconds
    async with aiohttp.ClientSession(headers={"X-API-Key": SECRET}) as http:
        async with http.put(api + "/admin/experiments/position-decay", json={"variants": {
                "A": {"weight": 1, "params": {}},
                "B": {"weight": 1, "params": {"position_decay": 0.5}}}}) as r:
            assert r.status == 200, await r.text()
        n = 0
        while time.monotonic() < ends:
            n += 1
            session = f"visitor-{n}"
            viewed = rnd.sample(items, rnd.randint(1, 4))
            events: list[dict[str, object]] = [
                {"session_id": session, "item_id": item} for item in viewed]
            async with http.post(api + "/iid_recommend", json={
                    "user_interactions": {item: {} for item in viewed}, "k": 6,
                    "session_id": session}) as r:
                answer = await r.json()
            rid = answer["recommendation_id"]
            shown = [x["id"] for x in answer["recommendations"]]
            events += [{"session_id": session, "item_id": item, "type": "impression",
                        "recommendation_id": rid} for item in shown]
            if shown and rnd.random() < (0.35 if answer.get("variant") == "A" else 0.25):
                events.append({"session_id": session, "item_id": rnd.choice(shown),
                               "type": "click", "recommendation_id": rid})
            async with http.post(api + "/events", json={"events": events}) as r:
                assert r.status == 202, await r.text()
            # a shop's traffic comes and goes: busier in the middle of the run
            share = (time.monotonic() - ends + seconds) / seconds
            await asyncio.sleep(0.02 + 0.2 * abs(share - 0.5))


async def main(out: str, seconds: float) -> None:
    settings = Settings(redis_url="memory://", port=free_port(), secret_keys=SECRET)
    async with embedded_shop(settings) as api:
        await traffic(api, seconds)
        await asyncio.sleep(2.5)  # the tallies reach the store
        await screenshot(api, out)


async def screenshot(api: str, out: str) -> None:
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
        page = await browser.new_page(viewport={"width": 1440, "height": 1000})
        await page.goto(api + "/dashboard")
        await page.fill("#key", SECRET)
        await page.click("#key-form button")
        await page.wait_for_function("window.sessionrecDashboard.data !== null")
        await page.wait_for_timeout(500)
        await page.screenshot(path=out, full_page=True)
        await browser.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", default="docs/dashboard.png")
    parser.add_argument("--seconds", type=float, default=150.0)
    args = parser.parse_args()
    asyncio.run(main(args.out, args.seconds))
