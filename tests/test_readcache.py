"""The serve process' cache of histories and indexes stays exact: every change Redis makes to a
cached key reaches it (a write, an expiry, a flush, a lost connection), and an answer that
crosses an invalidation is not kept."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from service import kernel
from service.answers.recommender import Recommender
from service.core import scoring
from service.core.layout import item_hash, session_hash
from service.core.model import Event
from service.offline.redisproc import RedisProcess
from service.settings import Settings
from service.store import readcache, transport
from service.store.backends import Standalone
from service.store.readcache import ReadCache
from service.store.state import Store
from tests.helpers import drain, ingest, shown

pytestmark = pytest.mark.kernel  # ./dev test runs these on both kernels

_names = itertools.count()


def hashes(*ids: str, of: Callable[[str], bytes] = session_hash) -> scoring.U64:
    return np.frombuffer(b"".join(of(i) for i in ids), "<u8").astype(np.uint64)


@pytest.fixture
async def store(standalone_url: str) -> AsyncIterator[Store]:
    s = Store(Settings(redis_url=standalone_url, namespace=f"rc{os.getpid()}-{next(_names)}",
                       partitions=4))
    yield s
    await s.close()


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 2.0) -> float:
    """Seconds until ``check`` holds (fails the test after ``within``)."""
    start = time.monotonic()
    while not await check():
        assert time.monotonic() - start < within, "the cache never caught up"
        await asyncio.sleep(0.001)
    return time.monotonic() - start


async def mget_calls(store: Store) -> int:
    stats: dict[str, Any] = await store.redis.info("commandstats")
    return int(stats.get("cmdstat_mget", {}).get("calls", 0))


async def test_a_cached_history_follows_every_write(store: Store) -> None:
    assert store.cache is not None
    key = store.keys.history(session_hash("s1"))
    await store.redis.set(key, b"A" * 16)
    s1 = hashes("s1", "absent")
    assert await store.reads.histories(s1) == [b"A" * 16, b""]
    calls = await mget_calls(store)
    for _ in range(3):
        assert await store.reads.histories(s1) == [b"A" * 16, b""]
    assert await mget_calls(store) == calls  # served by the cache: Redis was not asked
    assert store.cache.hits >= 6
    for value in [b"B" * 16, b"C" * 32]:
        await store.redis.set(key, value)
        await eventually(lambda v=value: _histories_are(store, s1, [v, b""]))  # type: ignore[misc]
    # a key that did not exist when read is tracked too: its creation is announced
    await store.redis.set(store.keys.history(session_hash("absent")), b"D" * 16)
    await eventually(lambda: _histories_are(store, s1, [b"C" * 32, b"D" * 16]))
    await store.redis.delete(key)
    await eventually(lambda: _histories_are(store, s1, [b"", b"D" * 16]))


async def _histories_are(store: Store, sessions: scoring.U64, want: list[bytes]) -> bool:
    return await store.reads.histories(sessions) == want


async def test_expiry_and_flush_reach_the_cache(standalone_url: str) -> None:
    with RedisProcess() as url:  # its own server: this test flushes it
        store = Store(Settings(redis_url=url, namespace="flush"))
        assert store.cache is not None
        item = hashes("i", of=item_hash)
        key = store.keys.index(item_hash("i"))
        await store.redis.set(key, b"x" * 16, px=150)
        assert await store.reads.indexes(item) == [b"x" * 16]
        await eventually(lambda: _indexes_are(store, item, [b""]))
        await store.redis.set(key, b"y" * 16)
        await eventually(lambda: _indexes_are(store, item, [b"y" * 16]))
        await store.redis.flushdb()
        await eventually(lambda: _indexes_are(store, item, [b""]))
        assert store.cache.resets >= 1
        await store.close()


async def _indexes_are(store: Store, items: scoring.U64, want: list[bytes]) -> bool:
    return await store.reads.indexes(items) == want


async def test_a_lost_tracking_connection_drops_the_cache(store: Store) -> None:
    """Changes made while no connection tracks them go unannounced: the cache must not outlive
    its connection."""
    assert store.cache is not None and tracked(store) is not None
    key = store.keys.history(session_hash("s"))
    await store.redis.set(key, b"old-value-16byte")
    s = hashes("s")
    assert await store.reads.histories(s) == [b"old-value-16byte"]
    clients: list[dict[str, Any]] = await store.redis.client_list()
    tracking = [c for c in clients if "t" in c["flags"]]
    assert len(tracking) == 1
    await store.redis.client_kill_filter(_id=tracking[0]["id"])
    await eventually(lambda: _no_connection(store))
    await store.redis.set(key, b"new-value-16byte")  # nobody is told of this one
    assert await store.reads.histories(s) == [b"new-value-16byte"]
    assert store.cache.resets == 1


def tracked(store: Store) -> transport.SharedConnection | None:
    assert isinstance(store.backend, Standalone)
    return store.backend.tracked


async def _no_connection(store: Store) -> bool:
    link = tracked(store)
    return link is not None and link.connection is None


def test_the_cache_is_off_where_nothing_tracks_it(standalone_url: str) -> None:
    base = Settings(redis_url=standalone_url)
    assert Store(base.replace(read_cache_mb=0)).cache is None
    assert Store(base.replace(redis_url="memory://")).cache is None


async def test_a_standalone_read_names_no_key_in_python(standalone_url: str,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """The kernel packs a standalone server's MGET and the read cache keys by hash: the key
    strings of a request's couple of hundred neighbours would cost more than its scoring, so
    neither path builds them (the cluster's does: it routes each key by name)."""
    for cache_mb in (0, 64):
        store = Store(Settings(redis_url=standalone_url, namespace=f"rc{next(_names)}",
                               read_cache_mb=cache_mb))
        await store.redis.set(store.keys.history(session_hash("s")), b"n" * 16)
        await store.redis.set(store.keys.index(item_hash("i")), b"i" * 16)
        with monkeypatch.context() as patched:
            for name in ("histories", "indexes"):
                patched.setattr(type(store.keys), name, _no_key_strings)
            found = await store.reads.histories(hashes("s", "t"))
            assert [blob or b"" for blob in found] == [b"n" * 16, b""]
            assert await store.reads.indexes(hashes("i", of=item_hash)) == [b"i" * 16]
        await store.close()


def _no_key_strings(*args: Any) -> list[str]:
    raise AssertionError("a standalone read built its keys' strings")


async def test_the_cluster_reads_without_the_cache(cluster_url: str) -> None:
    store = Store(Settings(redis_url=cluster_url, namespace=f"rc{next(_names)}"))
    assert store.cache is None
    await store.redis.set(store.keys.history(session_hash("s")), b"z" * 16)
    assert await store.reads.histories(hashes("s")) == [b"z" * 16]
    await store.close()


async def test_recommendations_follow_the_worker_through_the_cache(
        standalone_url: str) -> None:
    """End to end: a serve-side store that cached an item's index sees the worker's next
    commit to it (the worker writes, the cache is told)."""
    s = Settings(redis_url=standalone_url, namespace=f"rc{os.getpid()}-{next(_names)}",
                 partitions=2, block_ms=20)
    store = Store(s)
    answers = Recommender(store, s)
    await ingest(s, [Event("u1", "a", 1.0), Event("u1", "b", 2.0)])
    await drain(s)
    first = await answers.similar("a", 5)
    assert [r["id"] for r in first.body()["recommendations"]] == ["b"]
    await ingest(s, [Event("u2", "a", 3.0), Event("u2", "c", 4.0), Event("u3", "a", 5.0),
                     Event("u3", "c", 6.0)])
    await drain(s)

    async def c_first() -> bool:
        answer = await answers.similar("a", 5)
        return [r["id"] for r in answer.body()["recommendations"]][:1] == ["c"]
    await eventually(c_first)
    assert store.cache is not None and store.cache.invalidations > 0
    # everything cached now: the answer comes from one kernel call over the tables, and is
    # the one the reads gave
    reads: list[Any] = []
    indexes = store.reads.indexes

    async def counted(items: scoring.U64) -> list[bytes | None]:
        reads.append(items)
        return await indexes(items)
    store.reads.indexes = counted  # type: ignore[method-assign]
    again = await answers.similar("a", 5)
    assert again.body()["recommendations"][:1] == [{"id": "c", "score": 1.0}] and not reads
    store.cache.heard = 0.0  # unheard from: the request reads (and PINGs) instead
    assert shown(await answers.similar("a", 5)) == shown(again) and len(reads) == 1
    await store.close()


# --- the crossing of an answer and an invalidation, step by step --------------------------
def cache_of(capacity: int = 1 << 20) -> ReadCache:
    cache = ReadCache(["ns:{p0}:h:"], ["ns:{i0}:x:"], capacity)
    cache.heard = time.monotonic() + 3600  # no liveness PINGs in these step-by-step tests
    return cache


def key_of(prefix: str, h: int) -> bytes:
    return prefix.encode() + h.to_bytes(8, "little").hex().encode()


class Redis:
    """Answers the cache's MGETs from a dict, running ``during`` while the answer is on its
    way (what an invalidation crossing it looks like)."""

    def __init__(self, cache: ReadCache) -> None:
        self.cache = cache
        self.data: dict[bytes, bytes] = {}
        self.during: Callable[[], None] = lambda: None
        self.mgets = 0

    async def send(self, packed: bytes) -> Any:
        if packed == readcache.PING:
            return b"PONG"
        self.mgets += 1
        keys = packed.split(b"\r\n")[4::2]
        answer = [self.data.get(k) for k in keys]
        self.during()
        await asyncio.sleep(0)
        return answer


def one_history(value: bytes) -> tuple[ReadCache, Redis, bytes]:
    """A cache, a fake Redis holding ``value`` as session "s"'s history, and its key."""
    cache = cache_of()
    redis = Redis(cache)
    key = key_of("ns:{p0}:h:", int(hashes("s")[0]))
    redis.data[key] = value
    return cache, redis, key


async def test_an_invalidation_crossing_the_answer_keeps_it_out() -> None:
    cache, redis, key = one_history(b"old")

    def written() -> None:  # the key changes after Redis answered, before the caller stored
        redis.data[key] = b"new"
        cache.invalidate([key])
    redis.during = written
    assert await cache.read(cache.histories, hashes("s"), redis.send) == [b"old"]
    redis.during = lambda: None
    assert await cache.read(cache.histories, hashes("s"), redis.send) == [b"new"]
    assert await cache.read(cache.histories, hashes("s"), redis.send) == [b"new"]
    assert redis.mgets == 2  # the crossed answer was not kept, the next one was


async def test_a_reset_crossing_the_answer_keeps_it_out() -> None:
    cache = cache_of()
    redis = Redis(cache)
    redis.data[key_of("ns:{i0}:x:", int(hashes("i")[0]))] = b"v"
    redis.during = cache.reset
    assert await cache.read(cache.indexes, hashes("i"), redis.send) == [b"v"]
    assert cache.indexes.count == 0 and cache.indexes.pending == {}
    redis.during = lambda: None
    await cache.read(cache.indexes, hashes("i"), redis.send)
    assert cache.indexes.count == 1


async def test_concurrent_readers_keep_nothing_an_invalidation_crossed() -> None:
    cache, redis, key = one_history(b"v1")
    gate = asyncio.Event()

    async def slow(packed: bytes) -> Any:
        answer = await redis.send(packed)
        await gate.wait()
        return answer
    first = asyncio.ensure_future(cache.read(cache.histories, hashes("s"), slow))
    await asyncio.sleep(0)
    assert cache.histories.pending  # the first read is out
    cache.invalidate([key])  # lands while the first read is pending
    second = asyncio.ensure_future(cache.read(cache.histories, hashes("s"), slow))
    await asyncio.sleep(0)
    gate.set()
    assert await first == [b"v1"] and await second == [b"v1"]
    assert cache.histories.count == 0 and cache.histories.pending == {}
    assert cache.histories.dirty == set()


async def test_the_capacity_bounds_the_bytes_held() -> None:
    cache = cache_of(capacity=40 * (100 + readcache.ENTRY_OVERHEAD))
    redis = Redis(cache)
    ids = [f"s{n}" for n in range(200)]
    for n, sid in enumerate(ids):
        redis.data[key_of("ns:{p0}:h:", int(hashes(sid)[0]))] = bytes([n % 256]) * 100
    for chunk in range(0, 200, 20):
        got = await cache.read(cache.histories, hashes(*ids[chunk:chunk + 20]), redis.send)
        assert got == [bytes([n % 256]) * 100 for n in range(chunk, chunk + 20)]
        assert cache.size <= cache.capacity
        held = [v for v in cache.histories.slots if v is not None]
        assert len(held) == cache.histories.count
        assert cache.size == sum(len(v) + readcache.ENTRY_OVERHEAD for v in held)
        if chunk >= 40:  # past the capacity: eviction stops at 90% of it, never empties it
            assert 36 <= cache.histories.count <= 40


async def test_a_silent_connection_is_pinged_before_the_cache_is_trusted() -> None:
    cache = ReadCache(["ns:{p0}:h:"], ["ns:{i0}:x:"], 1 << 20)
    sent: list[bytes] = []

    async def send(packed: bytes) -> Any:
        sent.append(packed)
        return b"PONG" if packed == readcache.PING else [b"v"]
    await cache.read(cache.histories, hashes("s"), send)
    await cache.read(cache.histories, hashes("s"), send)
    assert sent[0] == readcache.PING and sent.count(readcache.PING) == 1
    cache.heard -= readcache.LIVENESS + 0.1  # a while without news
    await cache.read(cache.histories, hashes("s"), send)
    assert sent.count(readcache.PING) == 2

    async def unreachable(packed: bytes) -> Any:
        raise RedisConnectionError("gone")
    cache.heard -= readcache.LIVENESS + 0.1
    with pytest.raises(RedisConnectionError):
        await cache.read(cache.histories, hashes("s"), unreachable)


async def test_the_cache_reports_itself_in_metrics(aiohttp_client: Any,
                                                   standalone_url: str) -> None:
    from service.api.app import create_app
    s = Settings(redis_url=standalone_url, namespace=f"rc{os.getpid()}-{next(_names)}")
    client = await aiohttp_client(create_app(s))
    for _ in range(2):
        r = await client.post("/iid_recommend", json={"user_interactions": {
            "a": {"timestamp": 1.0}}, "k": 3})
        assert r.status == 200
    text = await (await client.get("/metrics")).text()
    figures = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
               if line.startswith("sessionrec_read_cache_")}
    assert figures["sessionrec_read_cache_misses_total"] == 1  # the index of "a", once
    assert figures["sessionrec_read_cache_hits_total"] == 1
    assert figures["sessionrec_read_cache_entries"] == 1


def test_the_object_table_behaves_like_a_dict() -> None:
    """The kernel's open-addressing table against a dict, through growth, replacement,
    deletion inside probe runs (tiny tables: runs are long) and misses."""
    rnd = random.Random(5)
    table = readcache.Table(["p:"], capacity=8)
    model: dict[int, bytes] = {}
    homes = [rnd.getrandbits(64) | 1 for _ in range(40)]  # few keys: many collisions
    for step in range(6000):
        h = rnd.choice(homes)
        if rnd.random() < 0.55:
            value = step.to_bytes(4, "little")
            assert table.put(h, value) == model.get(h)
            model[h] = value
        else:
            assert table.pop(h) == model.pop(h, None)
        assert table.count == len(model)
        probe = np.array(rnd.sample(homes, 10), np.uint64)
        assert table.get(probe) == [model.get(int(x)) for x in probe]
    assert len(table.keys) <= 128  # 40 keys at most half full
    assert table.put(0, b"never") is None and table.get(np.zeros(1, np.uint64)) == [None]


def test_one_kernel_call_over_the_cache_equals_the_steps_it_replaces() -> None:
    """``ReadCache.candidates`` (neighbours and score straight from the tables) against the
    two kernel steps over the same blobs, on random cases; and no answer when one index or
    one history is not cached (the request then reads it)."""
    from tests.test_scoring import random_case

    def u64(h: bytes) -> int:
        return int.from_bytes(h, "little")

    rng = np.random.default_rng(11)
    answered = fell_back = 0
    for case in range(300):
        items, times, ratings, index_blobs, histories, params = random_case(rng)
        query = scoring.build_query(items, times, ratings, params)
        cache = ReadCache(["h:"], ["x:"], 1 << 20)
        cache.heard = time.monotonic()
        indexes = [index_blobs[n % len(index_blobs)] or b"" for n in range(len(query.items))]
        for h, blob in zip(query.items.tolist(), indexes, strict=True):
            cache.indexes.put(h, blob)
        sessions = {u64(session_hash(f"s{n}")): histories[n % len(histories)] or b""
                    for n in range(60)}
        for h, blob in sessions.items():
            cache.histories.put(h, blob)
        exclude = u64(session_hash("s3")) if case % 2 else None
        found, similarity = scoring.neighbours(query, indexes, params, exclude)
        want = scoring.score(query, [sessions[h] for h in found.tolist()], similarity, params)
        got = cache.candidates(query, params, exclude)
        assert got is not None
        assert got[0].tolist() == want[0].tolist() and got[1].tolist() == want[1].tolist()
        assert got[2].tolist() == want[2].tolist()
        assert cache.hits == len(query.items) + len(found)
        answered += len(want[0]) > 0
        # one blob missing: no answer, nothing counted
        if len(found):
            cache.histories.pop(int(found[-1]))
        elif len(query.items):
            cache.indexes.pop(int(query.items[0]))
        else:
            continue
        assert cache.candidates(query, params, exclude) is None and cache.hits == \
            len(query.items) + len(found)
        fell_back += 1
    assert answered > 100 and fell_back > 100
    # a connection unheard from is PINGed first: no answer from the tables until then
    cache.heard = time.monotonic() - 2 * readcache.LIVENESS
    assert cache.candidates(scoring.build_query([], [], [], scoring.Params()), scoring.Params(),
                            None) is None
    assert kernel.candidates(b"", b"", np.zeros(8, np.uint64), [None] * 8,
                              np.zeros(8, np.uint64), [None] * 8, 1, 1, 0, False, 1, 0.0, 0.0,
                              0.0) == (b"", b"", b"", 0)


async def test_a_redis_that_refuses_tracking_is_read_uncached() -> None:
    """An ACL without CLIENT (or a managed Redis that disables it) refuses CLIENT TRACKING:
    the cache switches itself off and requests are still answered."""
    with RedisProcess() as url:
        admin = Store(Settings(redis_url=url, namespace="acl"))
        await admin.redis.execute_command(  # type: ignore[no-untyped-call]
            "ACL", "SETUSER", "app", "on", ">pw", "~*", "&*", "+@all", "-client")
        store = Store(Settings(redis_url=url.replace("redis://", "redis://app:pw@"),
                               namespace="acl"))
        assert store.cache is not None
        await store.redis.set(store.keys.history(session_hash("s")), b"v" * 16)
        assert await store.reads.histories(hashes("s")) == [b"v" * 16]
        assert store.cache is None
        assert await store.reads.histories(hashes("s")) == [b"v" * 16]
        await store.close()
        await admin.close()
