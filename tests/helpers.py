"""Test helpers: run workers until the stream is drained, snapshot the learned state."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.answers.recommender import Answer
from service.core.layout import partition_of, session_hash
from service.core.model import Event
from service.core.stream import encode
from service.offline.statecheck import differences, learned_state
from service.settings import Settings
from service.store.keyspace import Keys
from service.store.state import Store
from workers.consumer import Worker

REDIS_TIMEOUTS = (RedisTimeoutError, RedisConnectionError, asyncio.TimeoutError)


async def wait_drained(store: Store, timeout: float = 30.0) -> dict[str, int]:
    """Poll /stats' numbers until nothing is pending. The store has the serving side's short
    timeouts (answer 503 fast rather than hang), so on a loaded machine a poll can time out
    (a cluster node's reply too, which redis-py reports as a connection error): that poll is
    repeated, not the test failed."""
    deadline = time.monotonic() + timeout
    stats: dict[str, int] = {}
    while True:
        try:
            stats = await store.stats.read()
        except REDIS_TIMEOUTS:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
            continue
        if stats["pending"] == 0:
            return stats
        if time.monotonic() > deadline:
            raise AssertionError(f"stream not drained in {timeout}s: {stats}")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def running_workers(settings: Settings, count: int = 1,
                          auto_tune_every: float | None = None) -> AsyncIterator[list[Worker]]:
    """``count`` in-process workers running for the block, stopped and closed after it."""
    ws = [Worker(settings, worker_id=f"w{n}") for n in range(count)]
    if auto_tune_every is not None:
        for w in ws:
            w.auto_tune_every = auto_tune_every
    tasks = [asyncio.create_task(w.run()) for w in ws]
    try:
        yield ws
    finally:
        for w in ws:
            w.stop()
        await asyncio.gather(*tasks)
        for w in ws:
            await w.redis.aclose()


async def drain(settings: Settings, workers: int = 1) -> dict[str, int]:
    """Run ``workers`` in-process workers until every accepted event is applied."""
    store = Store(settings)
    try:
        async with running_workers(settings, workers):
            return await wait_drained(store)
    finally:
        await store.close()


async def ingest(settings: Settings, events: list[Event], batch: int = 200) -> None:
    store = Store(settings)
    try:
        await store.prepare()
        for start in range(0, len(events), batch):
            await store.ingestion.ingest(events[start:start + batch])
    finally:
        await store.close()


async def arrive(settings: Settings, events: list[Event]) -> None:
    """``events`` accepted as if each had reached the server at its own timestamp (entry ids
    from their times, as a producer writing to the streams directly may), in time order, then
    applied: traffic that arrived over hours or days, in a test that takes a second. Entry
    ids only grow: a later call must bring later events."""
    store = Store(settings)
    try:
        await store.prepare()
        ordered = sorted(events, key=lambda ev: ev.timestamp)
        for start in range(0, len(ordered), 500):
            async with store.redis.pipeline(transaction=False) as pipe:
                for ev in ordered[start:start + 500]:
                    p = partition_of(session_hash(ev.session_id), settings.partitions)
                    pipe.xadd(store.keys.stream(p), encode(ev),  # type: ignore[arg-type]
                              id=f"{round(ev.timestamp * 1000)}-*")
                await pipe.execute()
    finally:
        await store.close()
    await drain(settings)


async def clean_reference(settings: Settings, events: list[Event]) -> Settings:
    """One clean pass over ``events`` in a namespace of its own: the state to compare with."""
    clean = settings.replace(namespace=settings.namespace + "-clean")
    await ingest(clean, events)
    await drain(clean)
    return clean


async def snapshot(client: Any, namespace: str, index_cap: int = Settings.index_cap,
                   arrival_times: bool = False) -> dict[str, Any]:
    """The namespace's learned state, key by key (compare two with ``assert_same_state``);
    arrival times only with ``arrival_times`` (they are the stream entries' ids)."""
    return await learned_state(client, namespace, index_cap, arrival_times)


async def stream_arrivals(client: Any, settings: Settings) -> dict[bytes, float]:
    """Per session, when its first learned event reached the server: the id of its first
    entry in its partition stream (read before any trim; every session new)."""
    keys = Keys(settings.namespace, settings.partitions)
    out: dict[bytes, float] = {}
    for p in range(settings.partitions):
        for entry_id, fields in await client.xrange(keys.stream(p)):
            if fields.get(b"type", b"view") != b"impression":
                # an entry id is "<ms>-<seq>": Redis' clock when it took the entry
                out.setdefault(session_hash(fields[b"session"].decode()),
                               float(entry_id.decode().partition("-")[0]))
    return out


def arrivals_of(state: dict[str, Any]) -> dict[bytes, float]:
    """The arrival times of a ``snapshot(..., arrival_times=True)``, all partitions'."""
    return {session: t for key, members in state.items() if key.endswith(":arrivals")
            for session, t in members.items()}


def assert_same_state(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Equal learned states; a mismatch names its first keys and, for hashes and sorted sets,
    their first differing members as (got, want): enough to tell a double count from a loss."""
    assert got  # an empty state proves nothing
    found = differences(got, want)
    detail: list[Any] = []
    for line in found[:4]:
        key = line.split(" ", 1)[1]
        a, b = got.get(key), want.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diff = {m: (a.get(m), b.get(m)) for m in set(a) | set(b) if a.get(m) != b.get(m)}
            detail.append((key, list(diff.items())[:4], len(diff)))
        elif isinstance(a, bytes) and isinstance(b, bytes):
            detail.append((key, len(a), len(b)))
    assert found == [], detail


def shown(answer: Answer) -> tuple[list[dict[str, Any]], str, str | None]:
    """What an answer shows, without its recommendation id (unique per answer)."""
    return answer.rows(), answer.message, answer.variant


def interleaved(events: list[Event], rnd: random.Random) -> list[Event]:
    """``events`` with the sessions interleaved at random (as partitions, workers and crashes
    may), each session's own events in their order."""
    queues: dict[str, list[Event]] = {}
    for ev in events:
        queues.setdefault(ev.session_id, []).append(ev)
    shuffled = []
    while queues:
        s = rnd.choice(sorted(queues))
        shuffled.append(queues[s].pop(0))
        if not queues[s]:
            del queues[s]
    return shuffled
