"""Redis Cluster specifics: the same state and answers as standalone Redis, keys on every master,
per-slot effects applied once across crashes, journalled batches, and a worker killed mid-stream.
(The rest of the suite runs on the cluster too, through the parametrised ``redis_url``.)"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
from collections import Counter
from typing import Any

import pytest
import redis.asyncio as aioredis

from service.answers.recommender import Recommender
from service.core.model import Event
from service.settings import Settings
from service.store import ingestion as store_module
from service.store.ingestion import Ingestion
from service.store.keyspace import GROUP
from service.store.state import Store
from tests.helpers import (
    assert_same_state,
    clean_reference,
    drain,
    ingest,
    shown,
    snapshot,
    wait_drained,
)
from tests.test_worker import click_log, spawn_worker
from workers import consumer
from workers.batch import Batches
from workers.consumer import Worker
from workers.partition import Partition


def on(url: str, namespace: str) -> Settings:
    return Settings(redis_url=url, namespace=namespace, partitions=8, block_ms=20,
                    lease_ms=2000)


_count = itertools.count()


def namespace(tag: str) -> str:
    return f"c{os.getpid() % 100000}-{tag}-{next(_count)}"


async def master_key_counts(url: str, ns: str) -> list[int]:
    """Keys of the namespace held by each master."""
    cluster = Store(on(url, ns)).redis
    counts = []
    try:
        await cluster.initialize()
        for node in cluster.get_primaries():  # type: ignore[attr-defined]
            client = aioredis.Redis(host=node.host, port=node.port)
            counts.append(len([k async for k in client.scan_iter(match=f"{ns}:*", count=1000)]))
            await client.aclose()
    finally:
        await cluster.aclose()
    return counts


async def test_cluster_state_and_answers_equal_standalone(standalone_url: str,
                                                          cluster_url: str) -> None:
    events = click_log(3000, seed=5)
    ns = namespace("same")
    single, cluster = on(standalone_url, ns), on(cluster_url, ns)
    for s in (single, cluster):
        await ingest(s, events, batch=300)  # batches span partitions: journalled on the cluster
        await drain(s, workers=2)
    a, b = Store(single), Store(cluster)
    ra, rb = Recommender(a, single), Recommender(b, cluster)
    try:
        assert_same_state(await snapshot(b.redis, ns), await snapshot(a.redis, ns))
        for items in (["i1"], ["i2", "i7"], ["i3", "i5", "i11"], ["nope"]):
            query = [(item, 1_700_000_000.0 + n, 1.0) for n, item in enumerate(items)]
            want = await ra.recommend(query, 10, False)
            assert want.rows()
            assert shown(await rb.recommend(query, 10, False)) == shown(want)
        assert shown(await rb.similar("i4", 5)) == shown(await ra.similar("i4", 5))
        assert shown(await rb.popular(5)) == shown(await ra.popular(5))
        assert (await b.stats.read()) == (await a.stats.read())
    finally:
        await a.close()
        await b.close()
    counts = await master_key_counts(cluster_url, ns)
    assert len(counts) == 3 and min(counts) > sum(counts) / 6, counts  # each a real share


async def test_slot_effects_are_applied_once_when_the_partition_commit_is_lost(
        cluster_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch reached the item slots, then the worker died before the partition commit: the
    retry (and a batch cut at the in-flight mark) must not count anything twice."""
    settings = on(cluster_url, namespace("lost"))
    events = click_log(1200, seed=9)
    clean = await clean_reference(settings, events)
    await ingest(settings, events)

    lost = 0
    original = Batches.send_commit

    async def crash_before_partition_commit(self: Batches, part: Partition, keys: list[str],
                                            args: list[Any], read_ahead: bool) -> Any:
        nonlocal lost
        if lost < 6:
            lost += 1
            raise ConnectionError("worker died before the partition commit")
        return await original(self, part, keys, args, read_ahead)

    monkeypatch.setattr(Batches, "send_commit", crash_before_partition_commit)
    stats = await drain(settings)
    assert lost == 6
    assert stats["events_processed"] == stats["events_accepted"] == 1200
    store = Store(settings)
    try:
        assert_same_state(await snapshot(store.redis, settings.namespace),
                          await snapshot(store.redis, clean.namespace))
        # the in-flight marks are gone once the watermarks passed them
        for p in range(settings.partitions):
            assert await store.redis.get(store.keys.inflight(p)) is None
    finally:
        await store.close()


async def test_a_batch_read_past_the_in_flight_mark_is_cut_there(cluster_url: str) -> None:
    settings = on(cluster_url, namespace("cut")).replace(partitions=1)
    events = click_log(300, seed=4)
    clean = await clean_reference(settings, events)
    await ingest(settings, events)
    store = Store(settings)
    r: Any = store.redis
    # a reader took everything and died after fixing its batch at the 100th entry
    reply = await r.xreadgroup(GROUP, store.keys.consumer(0), {store.keys.stream(0): ">"})
    ids = [mid.decode() for mid, _ in reply[0][1]]
    await r.set(store.keys.inflight(0), ids[99])
    worker = Worker(settings, worker_id="w")
    first = await worker.loop.read(worker.partitions[0], backlog=True)
    assert len(first) == 300
    await worker.process(0, first)
    assert (await r.get(store.keys.watermark(0))).decode() == ids[99]
    assert worker.partitions[0].cut_at_inflight
    await worker.redis.aclose()
    stats = await drain(settings)
    assert stats["events_processed"] == 300
    assert_same_state(await snapshot(r, settings.namespace), await snapshot(r, clean.namespace))
    await store.close()


async def test_a_journalled_batch_is_replayed_once_when_an_append_fails(
        cluster_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = on(cluster_url, namespace("journal"))
    events = [Event(f"s{n}", f"i{n % 7}", 1_700_000_000.0 + n) for n in range(40)]
    clean = await clean_reference(settings, events)
    store = Store(settings)
    await store.prepare()
    original = Ingestion.append_live
    calls = 0

    async def second_append_fails(self: Ingestion, group: list[Event], token: str
                                  ) -> list[str]:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ConnectionError("node lost mid-batch")
        return await original(self, group, token)

    monkeypatch.setattr(Ingestion, "append_live", second_append_fails)
    assert await store.ingestion.ingest(events) == []  # accepted: it is in the journal
    monkeypatch.setattr(Ingestion, "append_live", original)
    journalled = [await store.redis.hlen(store.keys.journal(p))
                  for p in range(settings.partitions)]
    assert sum(journalled) == 1
    in_streams = sum([await store.redis.xlen(store.keys.stream(p))
                      for p in range(settings.partitions)])
    assert 0 < in_streams < 40  # one partition's share is missing until the replay...
    before = await store.stats.read()  # ...but it is accepted, and pending
    assert before["events_accepted"] == 40 and before["pending"] == 40

    monkeypatch.setattr(store_module, "JOURNAL_GRACE", 0.0)
    monkeypatch.setattr(consumer, "TRIM_EVERY", 0.05)
    stats = await drain(settings)
    assert stats["events_accepted"] == stats["events_processed"] == 40
    assert sum([await store.redis.hlen(store.keys.journal(p))
                for p in range(settings.partitions)]) == 0
    assert_same_state(await snapshot(store.redis, settings.namespace),
                      await snapshot(store.redis, clean.namespace))
    await store.close()


async def test_workers_reload_scripts_flushed_from_every_node(cluster_url: str) -> None:
    settings = on(cluster_url, namespace("flush"))
    events = click_log(400, seed=2)
    clean = await clean_reference(settings, events)
    store = Store(settings)
    await store.redis.script_flush()
    await ingest(settings, events)
    await store.redis.script_flush()
    stats = await drain(settings)
    assert stats["events_processed"] == 400
    assert_same_state(await snapshot(store.redis, settings.namespace),
                      await snapshot(store.redis, clean.namespace))
    await store.close()


async def test_three_workers_one_killed_end_in_the_single_node_clean_state(
        standalone_url: str, cluster_url: str) -> None:
    ns = namespace("kill")
    events = click_log(6000, seed=13)
    single = on(standalone_url, ns)
    await ingest(single, events, batch=500)
    await drain(single)

    settings = on(cluster_url, ns)
    await ingest(settings, events, batch=500)
    store = Store(settings)
    procs = [spawn_worker(settings) for _ in range(3)]
    try:
        while (await store.stats.read())["events_processed"] < 1500:
            await asyncio.sleep(0.02)
        procs[0].send_signal(signal.SIGKILL)  # mid-stream, holding a third of the partitions
        procs[0].wait()
        stats = await wait_drained(store, timeout=60)
    finally:
        for p in procs[1:]:
            p.send_signal(signal.SIGTERM)
        codes = [p.wait(15) for p in procs[1:]]
    assert codes == [0, 0]
    assert stats["events_processed"] == stats["events_accepted"] == 6000
    reference = Store(single)
    try:
        assert_same_state(await snapshot(store.redis, ns), await snapshot(reference.redis, ns))
    finally:
        await reference.close()
        await store.close()
    kinds = Counter(k.decode().split(":")[2] for k in await _keys(cluster_url, ns))
    assert kinds["x"] > 100 and kinds["h"] > 100 and kinds["cx"] > 100 and kinds["ch"] > 100


async def _keys(url: str, ns: str) -> list[bytes]:
    client = Store(on(url, ns)).redis
    try:
        return [k async for k in client.scan_iter(match=f"{ns}:*", count=1000)]
    finally:
        await client.aclose()
