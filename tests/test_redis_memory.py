"""Redis memory stays bounded: per-item state expires after its TTL, dead letters are capped,
and a Redis that may evict any key is refused."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from service.api.context import STORE
from service.core.layout import item_hash
from service.core.model import Event
from service.offline.redisproc import RedisProcess
from service.settings import Settings
from service.store.backends import UnsafeRedis
from service.store.state import Store
from tests.conftest import Client
from tests.helpers import drain
from workers.consumer import Worker


# --- bounded Redis memory ----------------------------------------------------------------------
async def test_per_item_state_goes_after_history_ttl_without_events(
        client: Client, settings: Settings) -> None:
    """A flood of invented ids leaves nothing behind once history_ttl has passed: indexes
    expire, and the sweep takes their names, frequencies and trending entries. An item that
    comes back is learned again, under its name."""
    s = settings.replace(history_ttl=1)
    store = client.app[STORE]
    events = [Event(f"s{n}", f"flood-{n % 7}", time.time()) for n in range(40)]
    await store.ingestion.ingest([*events, Event("s0", "kept", time.time())])
    await drain(s)
    r: Any = store.redis
    ttl = await r.pttl(store.keys.index(item_hash("flood-0")))
    assert 0 < ttl <= 1000
    assert (await store.stats.read())["items"] == 8
    await asyncio.sleep(1.2)
    worker = Worker(s)
    for _ in range(3):  # HSCAN may need a step or two per shard
        await worker.housekeeping.sweep()
    assert (await store.stats.read())["items"] == 0
    assert await r.zcard(store.keys.trend()) == 0
    assert [await r.hlen(store.keys.doc_freq(n)) for n in range(64)] == [0] * 64
    await store.ingestion.ingest([Event("back", "flood-0", time.time()),
                                  Event("back", "x", time.time())])
    await drain(s)
    similar = await (await client.get("/items/x/similar")).json()
    assert [row["id"] for row in similar["recommendations"]] == ["flood-0"]
    await worker.redis.aclose()


async def test_dead_letters_are_capped(settings: Settings) -> None:
    s = settings.replace(partitions=1, dead_letter_cap=10)
    store = Store(s)
    await store.prepare()
    for _ in range(300):
        await store.redis.xadd(store.keys.stream(0), {"session": "s", "item": "a",
                                                      "ts": "not a number"})
    stats = await drain(s)
    assert stats["events_dead"] == 300
    assert await store.redis.xlen(store.keys.dead(0)) <= 10 + 100  # '~': whole nodes go
    await store.close()


async def test_a_redis_that_evicts_any_key_is_refused(tmp_path: Any) -> None:
    for policy, refused in (("allkeys-lru", True), ("volatile-lru", False),
                            ("noeviction", False)):
        with RedisProcess("--maxmemory-policy", policy, directory=tmp_path / policy) as url:
            s = Settings(redis_url=url, namespace="policy")
            store = Store(s)
            if refused:
                with pytest.raises(UnsafeRedis, match="allkeys-lru"):
                    await store.prepare()
                worker = Worker(s)
                with pytest.raises(UnsafeRedis):
                    await worker.run()
                await worker.redis.aclose()
            else:
                await store.prepare()
            await store.close()
