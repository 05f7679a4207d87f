"""Test helpers: run workers until the stream is drained, snapshot the learned state."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from service.model import Event
from service.settings import Settings
from service.store import Store
from workers.consumer import Worker

LEARNED = {"h", "x", "names", "df", "trend"}
"""Key parts of the learned state (what the model reads). Stream bookkeeping, leases,
watermarks and live sessions are not learned state."""


async def wait_drained(store: Store, timeout: float = 30.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        stats = await store.stats()
        if stats["pending"] == 0:
            return stats
        if time.monotonic() > deadline:
            raise AssertionError(f"stream not drained in {timeout}s: {stats}")
        await asyncio.sleep(0.02)


async def drain(settings: Settings, workers: int = 1) -> dict[str, int]:
    """Run ``workers`` in-process workers until every accepted event is applied."""
    store = Store(settings)
    ws = [Worker(settings, worker_id=f"w{n}") for n in range(workers)]
    tasks = [asyncio.create_task(w.run()) for w in ws]
    try:
        return await wait_drained(store)
    finally:
        for w in ws:
            w.stop()
        await asyncio.gather(*tasks)
        for w in ws:
            await w.redis.aclose()
        await store.close()


async def ingest(settings: Settings, events: list[Event], batch: int = 200) -> None:
    store = Store(settings)
    try:
        await store.prepare()
        for start in range(0, len(events), batch):
            await store.ingest(events[start:start + batch])
    finally:
        await store.close()


async def snapshot(client: Any, namespace: str) -> dict[str, Any]:
    """The namespace's learned state, key by key (compare two with ``assert_same_state``)."""
    state: dict[str, Any] = {}
    async for raw in client.scan_iter(match=f"{namespace}:*", count=1000):
        key = raw.decode()
        if key[len(namespace):].split(":")[2] not in LEARNED:  # ":{tag}:<kind>[:<id>]"
            continue
        kind = (await client.type(raw)).decode()
        short = key[len(namespace):]
        if kind == "string":
            state[short] = await client.get(raw)
        elif kind == "hash":
            state[short] = await client.hgetall(raw)
        elif kind == "zset":
            state[short] = dict(await client.zrange(raw, 0, -1, withscores=True))
        else:
            raise AssertionError(f"unexpected {kind} at {key}")
    return state


def assert_same_state(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Equal key by key, byte for byte, except trending scores: sums of floats whose order
    depends on interleaving, so equal within float rounding."""
    assert got.keys() == want.keys()
    assert got  # an empty state proves nothing
    for key, value in want.items():
        if key.endswith(":trend"):
            assert got[key].keys() == value.keys()
            assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-9)
        else:
            assert got[key] == value, key
