"""Ingestion's live sessions on a real Redis: the ingest script against a per-event reference.

The script runs per event only what depends on event order and folds the rest (expiries, the
live registry) into one call per session; these tests pin that the outcome is still exactly
that of applying the events one by one."""

from __future__ import annotations

import random
import time

import pytest

from service.api.context import STORE
from service.core.layout import item_hash, session_hash, time_key
from service.core.model import IMPRESSION, TYPE_RATING, Event
from service.settings import Settings
from service.store.state import Store
from tests.conftest import Client
from tests.helpers import drain


def reference(events: list[Event], cap: int) -> dict[str, list[tuple[str, float, float]]]:
    """Per session, its live items as the per-event rule leaves them: the latest time per item
    (``ZADD GT``), the highest rating, the ``cap`` newest items (ties: the smaller id goes).
    Impressions are not interest: they leave live sessions as they are."""
    times: dict[str, dict[str, float]] = {}
    ratings: dict[str, dict[str, float]] = {}
    for ev in events:
        if ev.type == IMPRESSION:
            continue
        t, r = times.setdefault(ev.session_id, {}), ratings.setdefault(ev.session_id, {})
        if ev.item_id not in t or ev.timestamp > t[ev.item_id]:
            t[ev.item_id] = ev.timestamp
        rating = ev.effective_rating
        if ev.item_id not in r or rating > r[ev.item_id]:
            r[ev.item_id] = rating
        while len(t) > cap:
            oldest = min(t, key=lambda item: (t[item], item))
            del t[oldest], r[oldest]
    return {s: sorted(((item, ts, ratings[s][item]) for item, ts in t.items()),
                      key=lambda x: (x[1], x[0]))
            for s, t in times.items()}


def random_events(rnd: random.Random, n: int) -> list[Event]:
    events = []
    for _ in range(n):
        kind = rnd.choice(list(TYPE_RATING))
        rating = rnd.choice([None, None, float(rnd.randint(0, 6))])
        events.append(Event(f"s{rnd.randint(0, 5)}", f"i{rnd.randint(0, 11)}",
                            float(rnd.randint(1, 40)), kind, rating))
    return events


@pytest.mark.parametrize("seed", range(3))
async def test_live_sessions_match_the_per_event_rule(settings: Settings, seed: int) -> None:
    """Batches that revisit items, lower and raise ratings, go back in time and overflow the
    cap (an item pushed out and back in the same batch keeps only its new rating)."""
    rnd = random.Random(seed)
    settings = settings.replace(live_cap=5)
    store = Store(settings)
    await store.prepare()
    try:
        events = random_events(rnd, 300)
        for start in range(0, len(events), 60):
            await store.ingestion.ingest(events[start:start + 60])
        want = reference(events, cap=5)
        for session, items in want.items():
            live = await store.ingestion.live_session(session)
            got = [(x.item_id, x.timestamp, x.rating) for x in live]
            assert got == items, session
            for key in (store.keys.live_items(session_hash(session)),
                        store.keys.live_ratings(session_hash(session))):
                ttl = await store.redis.pttl(key)
                assert 0 < ttl <= settings.live_ttl * 1000
        assert (await store.stats.read())["live_sessions"] == len(want)
    finally:
        await store.close()


async def test_expired_registry_members_are_dropped(settings: Settings) -> None:
    """A session last seen longer ago than ``live_ttl`` leaves the registry with the next batch
    on its partition, once, however many of the batch's events share the registry."""
    store = Store(settings)
    await store.prepare()
    try:
        await store.ingestion.ingest([Event("old", "a", 1.0)])
        old = store.keys.live_registry(store.ingestion.partition(Event("old", "a", 1.0)))
        await store.redis.zadd(old, {session_hash("old").hex(): 1})  # seen in 1970
        fresh = [Event(f"new{n}", "b", 2.0) for n in range(40)]
        assert old in {store.keys.live_registry(store.ingestion.partition(ev)) for ev in fresh}
        await store.ingestion.ingest(fresh)
        assert await store.redis.zscore(old, session_hash("old").hex()) is None
        assert (await store.stats.read())["live_sessions"] == 40
    finally:
        await store.close()


# --- far-future timestamps ------------------------------------------------------------------
async def test_an_event_from_the_future_is_refused_naming_the_field(client: Client) -> None:
    event = {"session_id": "s", "item_id": "spam", "timestamp": 99999999999}
    resp = await client.post("/events", json=event)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["field"] == "timestamp" and "future" in error["message"]
    batch = {"events": [{"session_id": "s", "item_id": "a"},
                        {"session_id": "s", "item_id": "b", "timestamp": time.time() + 3600}]}
    resp = await client.post("/events", json=batch)
    assert resp.status == 400 and (await resp.json())["error"]["field"] == "events[1].timestamp"
    # within the documented skew is fine (a browser clock a little fast)
    ok = {"session_id": "s", "item_id": "a", "timestamp": time.time() + 60}
    assert (await client.post("/events", json=ok)).status == 202


async def test_no_timestamp_in_the_stream_buys_a_lasting_advantage(client: Client,
                                                                   settings: Settings) -> None:
    """A producer writing to the stream directly is not validated: the worker caps each event
    at its arrival plus the skew, so trending and the neighbour index see it as recent, not
    as the leader of the next three thousand years."""
    now = time.time()
    real = [Event(f"r{n}", "real", now - n) for n in range(5)]
    real += [Event(f"r{n}", "other", now - n + 0.5) for n in range(5)]
    forged = [Event(f"f{n}", "spam", 99999999999.0) for n in range(3)]
    forged += [Event(f"f{n}", "other", 99999999999.0) for n in range(3)]
    store = client.app[STORE]
    await store.ingestion.append(real + forged)
    await drain(settings)
    top = (await (await client.get("/popular?k=3")).json())["recommendations"]
    assert top[0]["id"] == "other" and top[1]["id"] == "real", top
    index: bytes = await store.redis.get(store.keys.index(item_hash("other")))  # type: ignore[assignment]
    ceiling = time_key(time.time() + settings.max_clock_skew)
    newest = int.from_bytes(index[-16:-8], "big")
    assert newest <= ceiling


# --- retries: Idempotency-Key ---------------------------------------------------------------
async def test_a_retry_with_the_same_idempotency_key_is_counted_once(
        client: Client, settings: Settings) -> None:
    """A client that retries an ambiguous 503 (the events may be in) must not double-count:
    the retry gets the first answer. A batch spanning partitions takes the journal on a
    cluster; one within a partition the ingest script: both are covered."""
    store = client.app[STORE]
    spanning = {"events": [{"session_id": f"s{n}", "item_id": "a"} for n in range(8)]}
    single = {"events": [{"session_id": "one", "item_id": i} for i in ("a", "b", "c")]}
    for n, body in enumerate((spanning, single)):
        headers = {"Idempotency-Key": f"batch-{n}"}
        first = await client.post("/events", json=body, headers=headers)
        retry = await client.post("/events", json=body, headers=headers)
        assert first.status == retry.status == 202
        assert await first.json() == await retry.json() == {"accepted": len(body["events"])}
        assert retry.headers["Idempotent-Replayed"] == "true"
    assert (await store.stats.read())["events_accepted"] == 11
    # the same key with another body is a client's mistake, said so
    reused = await client.post("/events", json=single, headers={"Idempotency-Key": "batch-0"})
    assert reused.status == 409
    assert (await reused.json())["error"]["field"] == "Idempotency-Key"
    bad = await client.post("/events", json=single, headers={"Idempotency-Key": "a b"})
    assert bad.status == 400 and (await bad.json())["error"]["field"] == "Idempotency-Key"
    stats = await drain(settings)
    assert stats["events_processed"] == 11
