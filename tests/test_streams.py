"""The event stream, its journal and its consumer group as producers and operators leave them:
ids written as invalid UTF-8, a corrupt journal entry, a group recreated on a new stream, an
admin rewrite racing a batch in flight."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis.asyncio as aioredis

from service.api.app import create_app
from service.api.context import STORE
from service.core.layout import item_hash, session_hash
from service.core.model import Event
from service.settings import Settings
from service.store.keyspace import GROUP
from service.store.state import Store
from tests.conftest import Client
from tests.helpers import drain, wait_drained
from workers.consumer import Worker


# --- a corrupt journal entry (Redis Cluster) -------------------------------------------------
async def test_a_corrupt_journal_entry_is_dead_lettered_not_crash_looped(
        cluster_url: str) -> None:
    s = Settings(redis_url=cluster_url, namespace=f"journal-{time.time_ns()}", partitions=2,
                 block_ms=20, lease_ms=2000)
    store = Store(s)
    await store.prepare()
    await store.ingestion.ingest([Event("s", "a", 1.0), Event("s", "b", 2.0)])
    await store.redis.hset(store.keys.journal(0), "bad", b"0|5:broken")
    await store.redis.hset(store.keys.journal(1), "worse", b"not a stamp")
    stats = await drain(s)
    assert stats["events_processed"] == 2
    r: Any = store.redis
    assert not await r.exists(store.keys.journal(0), store.keys.journal(1))
    dead = await r.xrange(store.keys.dead(0)) + await r.xrange(store.keys.dead(1))
    assert sorted(f[b"id"] for _, f in dead) == [b"journal:bad", b"journal:worse"]
    assert (await store.stats.read())["events_accepted"] == 2
    await store.close()


async def test_group_recreated_from_the_start_of_a_new_stream(standalone_url: str) -> None:
    """What the worker does on NOGROUP: a group from id 0, so nothing accepted meanwhile is
    skipped (a group created at '$' would skip what arrived before it)."""
    s = Settings(redis_url=standalone_url, namespace=f"regroup-{time.time_ns()}",
                 partitions=1)
    r = aioredis.Redis.from_url(standalone_url)
    store = Store(s)
    await store.ingestion.ingest([Event("s", "a", 1.0)])  # the stream exists, its group does not
    worker = Worker(s)
    await worker.regroup()
    groups = await r.xinfo_groups(store.keys.stream(0))
    assert [(g["name"], g["last-delivered-id"]) for g in groups] == [(GROUP.encode(), b"0-0")]
    await worker.redis.aclose()
    await store.close()
    await r.aclose()


# --- admin operations against a batch in flight ---------------------------------------------
@pytest.mark.parametrize("operation", ["reset", "forget"])
async def test_admin_rewrites_win_over_a_batch_that_read_the_history_before(
        aiohttp_client: Any, settings: Settings, operation: str) -> None:
    """The worker reads a batch's histories, then an admin resets the session (or forgets an
    item) before the batch commits: the commit must not write the old history back."""
    client: Client = await aiohttp_client(create_app(settings.replace(secret_keys="sk")),
                                          headers={"X-API-Key": "sk"})
    store = client.app[STORE]
    await store.ingestion.ingest([Event("v", "secret-item", 1.0), Event("v", "old", 2.0),
                        Event("w", "secret-item", 1.0)])
    await drain(settings)
    await store.ingestion.ingest([Event("v", "new", 3.0)])
    worker = Worker(settings, worker_id="racer")
    real_mget = worker.redis.mget
    raced: list[int] = []

    async def mget_then_admin(*args: Any, **kwargs: Any) -> Any:
        reply = await real_mget(*args, **kwargs)
        if not raced:  # the admin operation lands between the batch's read and its commit
            raced.append(1)
            path = "/admin/sessions/v" if operation == "reset" else "/admin/items/secret-item"
            assert (await client.delete(path)).status == 200
        return reply

    worker.redis.mget = mget_then_admin  # type: ignore[method-assign]
    task = asyncio.create_task(worker.run())
    try:
        await wait_drained(store)
    finally:
        worker.stop()
        await task
        await worker.redis.aclose()
    assert raced
    history: bytes = await store.redis.get(  # type: ignore[assignment]
        store.keys.history(session_hash("v"))) or b""
    items = {history[o:o + 8] for o in range(0, len(history), 16)}
    assert item_hash("new") in items  # the batch itself is still learned
    assert item_hash("secret-item") not in items
    if operation == "reset":
        assert item_hash("old") not in items
