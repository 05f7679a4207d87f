"""The serve process' caches under floods of ids: bounded in bytes, evicted in constant time,
holding only what Redis said."""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np

from service import kernel
from service.api.context import STORE
from service.core.layout import item_hash
from service.settings import Settings
from service.store.caches import NameCache
from tests.conftest import Client
from tests.helpers import drain


# --- id floods ---------------------------------------------------------------------------------
def test_name_cache_eviction_is_constant_time() -> None:
    """A full cache used to pop a tenth of its entries one by one from the front of a dict
    (each pop rescanning the deleted slots): seconds per eviction at a million entries."""
    cache = NameCache(capacity_bytes=100_000 * 160)
    started = time.perf_counter()
    for n in range(1_000_000):
        cache.put(n, "x")
    assert time.perf_counter() - started < 5.0
    assert len(cache) <= 100_000 and cache.get(999_999) == "x"


def test_name_cache_is_bounded_in_bytes_whatever_the_ids_length() -> None:
    """Red team: 300k learned ids of 256 emoji each grew serve by 600 MiB under a bound of a
    million entries. The bound is in bytes: long ids make fewer entries fit."""
    cache = NameCache(capacity_bytes=8 << 20)
    long_id = "\U0001F600" * 256  # about 1 KiB as a Python string
    for n in range(100_000):
        cache.put(n, long_id + str(n))
    held = sum(sys.getsizeof(name) for name in (*cache._young.values(),
                                                 *cache._old.values()))
    assert held <= 8 << 20
    assert cache.get(99_999) == long_id + "99999"
    # an answer the kernel writes keeps each name's UTF-8 beside it (getsizeof counts it
    # then): within the bound too
    young = list(cache._young.values())
    assert kernel.rows_json(young, np.arange(len(young), dtype=np.int64),
                            np.ones(len(young)), len(young)) is not None
    assert sum(sys.getsizeof(name) for name in young) <= cache._young_bytes


def test_name_cache_reads_many_as_it_reads_one() -> None:
    """``get_many`` (an answer's names at once) answers each key as ``get`` does: a young hit,
    an old hit (promoted, so it outlives the next turn of generations), or None."""
    cache = NameCache(capacity_bytes=4 * (sys.getsizeof("old") + NameCache.PER_NAME_OVERHEAD))
    cache.put(1, "old")
    cache.put(2, "old")  # the young generation is full: the next put turns it old
    cache.put(3, "new")
    assert 1 in cache._old and 3 in cache._young
    assert cache.get_many([3, 1, 9, 3]) == ["new", "old", None, "new"]
    assert 1 in cache._young and 2 not in cache._young
    assert cache.get_many([]) == []


async def test_invented_ids_never_enter_the_name_cache(client: Client) -> None:
    store = client.app[STORE]
    ids: dict[str, dict[str, Any]] = {f"invented-{n}": {} for n in range(200)}
    for seen in (False, True):
        body = {"user_interactions": ids, "recommend_seen": seen, "k": 5}
        assert (await client.post("/iid_recommend", json=body)).status == 200
    assert all(store.reads.names.get(int.from_bytes(item_hash(i), "little")) is None for i in ids)


async def test_seen_items_keep_their_names_without_the_cache(client: Client,
                                                            settings: Settings) -> None:
    events = [{"session_id": f"s{n}", "item_id": i} for n in range(3) for i in ("a", "b")]
    assert (await client.post("/events", json={"events": events})).status == 202
    await drain(settings)
    body = {"user_interactions": {"a": {}, "never-learned": {"rating": 5}},
            "recommend_seen": True, "k": 10}
    got = {r["id"] for r in (await (await client.post("/iid_recommend", json=body)).json())[
        "recommendations"]}
    assert {"a", "b", "never-learned"} <= got
