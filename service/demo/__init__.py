"""``sessionrec demo``: API, worker and a sample shop's click log in one process.

With no Redis URL given it runs on the embedded store (fakeredis, in memory), so a fresh
machine needs nothing but Python. The bundled log (``demo/clicks.csv``, made by
``scripts/make_demo_data.py``) is replayed through the stream exactly as a producer would
write it, shifted so that it ends now, and applied by the worker before the URL is printed.
"""

from __future__ import annotations

import asyncio
import csv
import json
import signal
import time
from importlib import resources
from typing import Any

from aiohttp import web

from service.api.app import create_app
from service.core.catalog import Record
from service.core.model import Event
from service.requests.placements import placement
from service.runtime import install_uvloop
from service.settings import Settings
from service.store.backends import MEMORY_URL
from service.store.state import Store
from workers.consumer import Worker


def sample_events(now: float) -> list[Event]:
    text = resources.files("service").joinpath("demo/clicks.csv").read_text("utf-8")
    rows = list(csv.DictReader(text.splitlines()))
    return [Event(r["session_id"], r["item_id"], round(now - float(r["seconds_ago"]), 3),
                  r["type"]) for r in rows]


def sample_catalogue() -> list[Record]:
    """The sample shop's products as catalogue records (the page reads the same file)."""
    rows = json.loads(resources.files("service").joinpath("demo/catalogue.json")
                      .read_text("utf-8"))
    return [Record(str(r["id"]), r["name"], (r["category"],), price=r["price"],
                   tags=tuple(r.get("tags", ()))) for r in rows]


PLACEMENTS: dict[str, dict[str, Any]] = {
    "home": {"strategy": "session", "k": 6,
             "rules": {"max_per_category": 2, "explain": True}},
    "more": {"strategy": "session", "k": 5, "rules": {"explain": True},
             "promote": {"filter": {"tags": ["house-brand"]}, "slots": 1}},
    "category": {"strategy": "rerank", "rules": {"explain": True}},
    "cart": {"strategy": "bought_together", "k": 4, "rules": {"explain": True}},
    "new": {"strategy": "session", "k": 4, "rules": {"explain": True},
            "explore": {"share": 1.0, "max_age_days": 7}},
}
"""The sample shop's places (README, "Placements"): the visitor's picks, more of them with the
house brand promoted, a category page ordered for the visitor, what goes with the cart, and a
shelf of new products that fit what the visitor looks at."""


async def put_placements(store: Store, settings: Settings) -> None:
    for name, body in PLACEMENTS.items():
        placement(name, body, settings)  # the demo's own are valid as any operator's
        await store.placements.put(name, json.dumps(body))


async def load_sample(store: Store) -> int:
    """Store the sample catalogue and placements, replay the sample log through the stream
    and wait until the worker applied it all."""
    await store.items.put(sample_catalogue())
    await put_placements(store, store.settings)
    stats = await store.stats.read()
    if stats["events_accepted"] == 0:
        await store.ingestion.append(sample_events(time.time()))
    while (await store.stats.read())["pending"] > 0:
        await asyncio.sleep(0.1)
    return (await store.stats.read())["events_processed"]


async def serve_demo(settings: Settings) -> None:
    store_name = "the embedded store (in this process, in memory)" \
        if settings.redis_url == MEMORY_URL else f"Redis {settings.redis_url_for_logs()}"
    print(f"sessionrec demo: {store_name}, namespace {settings.namespace}", flush=True)
    stop = asyncio.Event()  # Ctrl+C from here on stops the demo cleanly
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    store = Store(settings)
    await store.prepare()
    worker = Worker(settings, client=store.redis, worker_id="demo")
    worker_task = asyncio.create_task(worker.run())
    print("sessionrec demo: loading the sample shop's click log ...", flush=True)
    applied = await load_sample(store)
    runner = web.AppRunner(create_app(settings, store), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    base = f"http://{settings.host}:{settings.port}"
    print(f"sessionrec demo: {applied} sample events learned.", flush=True)
    print(f"Demo shop:  {base}/demo\nAPI docs:   {base}/docs\nPress Ctrl+C to stop.", flush=True)
    await stop.wait()
    worker.stop()
    await worker_task
    await runner.cleanup()
    await store.close()


def run_demo(settings: Settings) -> int:
    install_uvloop()
    asyncio.run(serve_demo(settings))
    return 0
