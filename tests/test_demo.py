"""The embedded demo (fakeredis, no Redis to install) learns the sample shop end to end."""

from __future__ import annotations

import asyncio

from service.answers.recommender import Recommender
from service.core.model import Event
from service.core.rules import Filter, Rules
from service.demo import load_sample, sample_catalogue
from service.settings import Settings
from service.store.state import Store
from workers.consumer import Worker


async def test_embedded_store_runs_the_real_scripts_and_learns() -> None:
    # automatic tuning on, and due at once: a run is a process of its own, which the
    # embedded store cannot share, so the worker must never start one here
    settings = Settings(redis_url="memory://", namespace="demo-test", block_ms=20,
                        auto_tune=True, tune_min_sessions=1, lease_ms=300)
    store = Store(settings)
    await store.prepare()
    worker = Worker(settings, client=store.redis, worker_id="demo-test")
    worker.auto_tune_every = 0.01
    task = asyncio.create_task(worker.run())
    try:
        applied = await asyncio.wait_for(load_sample(store), 60)
        assert applied == 8338
        placed = await store.placements.all()
        assert set(placed[1]) == {"home", "more", "category", "cart", "new"}
        # an espresso machine
        answer = await Recommender(store, settings).recommend([("1001", 1.0, 1.0)], 5, False)
        assert answer.rows()[0]["id"] == "1002"  # Burr grinder, planted with it
        # trending, and a category page's rules, on the embedded server too (its sorted set
        # replies come paired, as the cluster client's do)
        recommender = Recommender(store, settings)
        popular = await recommender.popular(5)
        assert len(popular.rows()) == 5
        tea = await recommender.recommend(
            [("1001", 1.0, 1.0)], 4, False,
            rules=Rules(filter=Filter(categories=("Tea",)), explain=True))
        categories = {r.item_id: r.categories[0] for r in sample_catalogue()}
        assert [categories[r["id"]] for r in tea.rows()] == ["Tea"] * 4
        assert all((r["source"] == "trending" and r["because"] == [])
                   or r["because"] == ["1001"] for r in tea.rows())
        await store.ingestion.ingest([Event("visitor", "1017", 1.0, "click")])
        live = await store.ingestion.live_session("visitor")
        assert [x.item_id for x in live] == ["1017"]
        await asyncio.sleep(0.5)  # the worker's loop has come round several times
        assert await store.redis.get(store.keys.tune_lease()) is None
    finally:
        worker.stop()
        await task

