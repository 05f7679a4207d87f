"""The embedded demo (fakeredis, no Redis to install) learns the sample shop end to end."""

from __future__ import annotations

import asyncio

from service.api.recommend import Recommender
from service.core.model import Event
from service.demo import load_sample
from service.settings import Settings
from service.store.state import Store
from workers.consumer import Worker


async def test_embedded_store_runs_the_real_scripts_and_learns() -> None:
    settings = Settings(redis_url="memory://", namespace="demo-test", block_ms=20)
    store = Store(settings)
    await store.prepare()
    worker = Worker(settings, client=store.redis, worker_id="demo-test")
    task = asyncio.create_task(worker.run())
    try:
        applied = await asyncio.wait_for(load_sample(store), 60)
        assert applied == 6892
        # an espresso machine
        answer = await Recommender(store, settings).recommend([("1001", 1.0, 1.0)], 5, False)
        assert answer.recommendations[0]["id"] == "1002"  # Burr grinder, planted with it
        await store.ingest([Event("visitor", "1017", 1.0, "click")])
        live = await store.live_session("visitor")
        assert [x.item_id for x in live] == ["1017"]
    finally:
        worker.stop()
        await task

