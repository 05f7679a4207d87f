"""``sessionrec load`` leaves exactly the state that streaming the same events leaves."""

from __future__ import annotations

from typing import Any

import pytest

from service.core.layout import index_limit
from service.offline.loader import NotEmpty, build_indexes, load
from service.settings import Settings
from service.store.state import Store
from tests.helpers import assert_same_state, drain, ingest, snapshot
from tests.test_worker import click_log


async def test_load_equals_stream(settings: Settings) -> None:
    # small caps so trimming of indexes and histories is exercised
    settings = settings.replace(index_cap=5, history_cap=4)
    events = click_log(2500, seed=5)
    await ingest(settings, events)
    await drain(settings, workers=2)

    loaded = settings.replace(namespace=settings.namespace + "-load")
    store = Store(loaded)
    await store.prepare()  # as `sessionrec load` does
    report = await load(store, events)
    assert report.events == 2500 and report.items > 50
    r: Any = store.redis
    assert_same_state(await snapshot(r, loaded.namespace, 5),
                      await snapshot(r, settings.namespace, 5))
    # the worker appends in place and trims a slack at a time: its indexes run past the cap,
    # never past the limit (the loader writes exactly the cap)
    lengths = [await r.strlen(k) // 16 async for k in r.scan_iter(
        match=f"{settings.namespace}:*:x:*", count=1000)]
    assert max(lengths) <= index_limit(5) and max(lengths) > 5
    with pytest.raises(NotEmpty):
        await load(store, events)
    await store.close()


async def test_a_batch_wider_than_a_chunk_equals_the_load(settings: Settings) -> None:
    """The commit reads and writes frequencies and trending scores in chunks of 500 fields:
    one batch of 1,400 events over 1,200 items, on one partition, crosses the chunk edge in
    both (trending holds every item of the batch in one op)."""
    from service.core.model import Event

    settings = settings.replace(partitions=1, batch_size=2000)
    events = [Event(f"s{n // 7}", f"i{n % 1200}", 1_000.0 + n) for n in range(1400)]
    await ingest(settings, events, batch=700)
    await drain(settings)
    loaded = settings.replace(namespace=settings.namespace + "-load")
    store = Store(loaded)
    await store.prepare()
    await load(store, events)
    r: Any = store.redis
    streamed = await snapshot(r, settings.namespace)
    assert len(next(v for k, v in streamed.items() if k.endswith(":trend"))) == 1200
    assert_same_state(await snapshot(r, loaded.namespace), streamed)
    await store.close()


def test_build_indexes_keeps_newest_entries_sorted() -> None:
    e = [bytes([t]) * 8 + b"s" * 8 for t in range(10)]
    out = build_indexes([(b"i", b"", e[3]), (b"i", b"", e[1]), (b"i", e[1], e[7]),
                         (b"i", b"", e[2]), (b"j", b"", e[0])], cap=2)
    assert out == {b"i": e[3] + e[7], b"j": e[0]}
