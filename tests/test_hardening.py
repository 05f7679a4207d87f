"""The public holes of issue 15, each as an attacker or an unlucky operator would find it: far
future timestamps, header bytes that are not UTF-8, X-Forwarded-For rotation, id floods,
concurrent requests against a silent Redis, a Redis that comes back empty, open admin routes,
DNS rebinding, corrupt journal entries and ids a producer wrote as invalid UTF-8."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from service import kernel
from service.api.app import create_app
from service.api.context import STORE
from service.api.jsonutil import dumps
from service.core.layout import item_hash, session_hash, time_key
from service.core.model import Event
from service.offline.redisproc import RedisProcess, free_port
from service.settings import Settings
from service.store.backends import UnsafeRedis
from service.store.caches import NameCache
from service.store.keyspace import GROUP
from service.store.state import Store
from tests.conftest import Client
from tests.helpers import drain, wait_drained
from workers.consumer import Worker


async def raw_request(client: Client, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """An HTTP/1.1 request written byte for byte (clients refuse to send non-UTF-8 headers)."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    status = int(answer.split(b" ", 2)[1])
    return status, answer.split(b"\r\n\r\n", 1)[1]


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
    await store.append(real + forged)
    await drain(settings)
    top = (await (await client.get("/popular?k=3")).json())["recommendations"]
    assert top[0]["id"] == "other" and top[1]["id"] == "real", top
    index: bytes = await store.redis.get(store.keys.index(item_hash("other")))  # type: ignore[assignment]
    ceiling = time_key(time.time() + settings.max_clock_skew)
    newest = int.from_bytes(index[-16:-8], "big")
    assert newest <= ceiling


# --- header bytes that are not UTF-8 ----------------------------------------------------------
async def test_non_utf8_headers_are_a_4xx_json_error_never_a_500(aiohttp_client: Any,
                                                                 settings: Settings) -> None:
    open_client: Client = await aiohttp_client(create_app(settings))
    body = b'{"user_interactions": {"89898": {}}}'
    status, answer = await raw_request(open_client, b"POST /iid_recommend HTTP/1.1\r\n"
                                       b"Host: 127.0.0.1\r\nOrigin: http://a\xff\r\n", body)
    assert status == 400, answer
    error = (await asyncio.to_thread(__import__("orjson").loads, answer))["error"]
    assert error["field"] == "Origin" and "\ufffd" not in error["message"]
    keyed: Client = await aiohttp_client(create_app(settings.replace(
        publishable_keys="pk", secret_keys="sk")))
    for head in (b"X-API-Key: \xff\xfe\r\n", b"X-API-Key: pk\xff\r\n"):
        status, answer = await raw_request(keyed, b"POST /iid_recommend HTTP/1.1\r\n"
                                           b"Host: 127.0.0.1\r\n" + head, body)
        assert status == 401, answer
        assert b'"field":"X-API-Key"' in answer
    status, answer = await raw_request(keyed, b"DELETE /admin/items/a HTTP/1.1\r\n"
                                       b"Host: 127.0.0.1\r\nX-API-Key: sk\xff\r\n")
    assert status == 401, answer


def test_an_answer_with_a_lone_surrogate_is_still_json() -> None:
    assert dumps({"id": "a\ud800b"}) == '{"id":"a\ufffdb"}'.encode()


async def test_item_ids_a_producer_wrote_as_invalid_utf8_never_break_answers(
        client: Client, settings: Settings) -> None:
    store = client.app[STORE]
    stream = store.keys.stream(0)
    session = next(f"s{n}" for n in range(100) if store._partition(Event(f"s{n}", "", 0)) == 0)
    for item in (b"good", b"bad\xed\xa0\x80"):  # an encoded lone surrogate
        await store.redis.xadd(stream, {b"session": session.encode(), b"item": item,
                                        b"ts": b"1700000000", b"type": b"view"})
    stats = await drain(settings)
    assert stats["events_dead"] == 1
    bodies: list[dict[str, Any]] = [{"user_interactions": {"good": {}}, "recommend_seen": True},
                                    {"user_interactions": {}}]
    for body in bodies:
        assert (await client.post("/iid_recommend", json=body)).status == 200
    assert (await client.get(f"/sessions/{session}/recommendations")).status == 200


# --- X-Forwarded-For and shared buckets ------------------------------------------------------
async def test_rotating_x_forwarded_for_does_not_escape_the_limit(aiohttp_client: Any,
                                                                  settings: Settings) -> None:
    limited = settings.replace(rate_limit=5, rate_burst=5)
    client: Client = await aiohttp_client(create_app(limited))
    statuses = [(await client.get("/popular", headers={
        "X-Forwarded-For": f"10.0.{n // 250}.{n % 250}"})).status for n in range(60)]
    assert statuses.count(429) >= 50


async def test_forwarded_addresses_count_only_from_trusted_proxies(
        aiohttp_client: Any, settings: Settings) -> None:
    """Behind a trusted proxy each visitor has a bucket of their own: one abuser cannot get
    everyone 429s; and an entry a client wrote itself (left of the proxy's) is ignored."""
    limited = settings.replace(rate_limit=0.1, rate_burst=2, trusted_proxies="127.0.0.1")
    client: Client = await aiohttp_client(create_app(limited))

    async def status(forwarded: str) -> int:
        return (await client.get("/popular", headers={"X-Forwarded-For": forwarded})).status

    assert [await status("203.0.113.7") for _ in range(3)] == [200, 200, 429]
    assert await status("198.51.100.1") == 200  # another visitor
    # the abuser prepends invented addresses; the proxy appends the real one
    assert await status("1.2.3.4, 203.0.113.7") == 429
    assert await status("garbage, 203.0.113.7") == 429


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


async def test_invented_ids_never_enter_the_name_cache(client: Client) -> None:
    store = client.app[STORE]
    ids: dict[str, dict[str, Any]] = {f"invented-{n}": {} for n in range(200)}
    for seen in (False, True):
        body = {"user_interactions": ids, "recommend_seen": seen, "k": 5}
        assert (await client.post("/iid_recommend", json=body)).status == 200
    assert all(store.names.get(int.from_bytes(item_hash(i), "little")) is None for i in ids)


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


# --- a silent Redis, 200 callers at once -------------------------------------------------------
@pytest.mark.parametrize("read_cache_mb", [256, 0])
async def test_concurrent_requests_against_a_silent_redis_all_503_within_a_second(
        aiohttp_client: Any, settings: Settings, read_cache_mb: int) -> None:
    """Every link must (re)connect and handshake with a Redis that accepts and never answers:
    one shared attempt, and every caller queued behind it fails with it."""
    held: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    silent = settings.replace(redis_url=f"redis://:secret@127.0.0.1:{port}/0",
                              read_cache_mb=read_cache_mb)
    try:
        # no client-side connection limit: all 200 reach the server at once
        client: Client = await aiohttp_client(create_app(silent),
                                              connector=aiohttp.TCPConnector(limit=0))
        body = {"user_interactions": {"89898": {}, "22898": {}}, "k": 10}

        async def timed() -> tuple[int, float]:
            started = time.monotonic()
            resp = await client.post("/iid_recommend", json=body)
            return resp.status, time.monotonic() - started

        # 200 connections opened first: a burst of new ones overflows the listen backlog,
        # and the kernel retries a dropped SYN after a second, whatever the server does
        await asyncio.gather(*(client.get("/healthz") for _ in range(200)))
        answers = await asyncio.gather(*(timed() for _ in range(200)))
        assert {status for status, _ in answers} == {503}
        assert max(seconds for _, seconds in answers) < 1.0
    finally:
        for writer in held:
            writer.close()
        server.close()


# --- a Redis that comes back empty -------------------------------------------------------------
@pytest.mark.parametrize("how", ["flushall", "restart"])
async def test_the_same_processes_recover_from_a_redis_that_comes_back_empty(
        aiohttp_client: Any, tmp_path: Any, how: str) -> None:
    port = free_port()
    server = RedisProcess(directory=tmp_path / "a", port=port)
    s = Settings(redis_url=server.url, namespace="empty", partitions=2, block_ms=20,
                 lease_ms=2000)
    client: Client = await aiohttp_client(create_app(s))
    worker = Worker(s, worker_id="w")
    task = asyncio.create_task(worker.run())
    store = client.app[STORE]

    async def send(prefix: str) -> None:
        events = [{"session_id": f"{prefix}{n}", "item_id": i} for n in range(4)
                  for i in ("x", "y")]
        assert (await client.post("/events", json={"events": events})).status == 202

    try:
        await send("before")
        await wait_drained(store, timeout=10)
        if how == "flushall":
            await store.redis.flushall()
        else:
            server.stop()
            tmp = tmp_path / "b"
            server = RedisProcess(directory=tmp, port=port)
        deadline = time.monotonic() + 10
        while True:  # the API answers 503 until it has reconnected
            events = [{"session_id": f"after{n}", "item_id": i} for n in range(4)
                      for i in ("x", "y")]
            if (await client.post("/events", json={"events": events})).status == 202:
                break
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        stats = await wait_drained(store, timeout=10)
        assert stats["events_processed"] == 8
        similar = await (await client.get("/items/x/similar")).json()
        assert [r["id"] for r in similar["recommendations"]] == ["y"]
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10)
        await worker.redis.aclose()
        server.stop()


# --- open by default, DNS rebinding ----------------------------------------------------------
async def test_serving_a_network_without_keys_warns_loudly(
        aiohttp_client: Any, settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        client: Client = await aiohttp_client(create_app(settings.replace(host="0.0.0.0")))
    assert any("OPEN API" in r.getMessage() for r in caplog.records)
    ready = await (await client.get("/readyz")).json()
    assert "no publishable key" in ready["warning"]
    local: Client = await aiohttp_client(create_app(settings))
    assert "warning" not in await (await local.get("/readyz")).json()
    # a secret key alone leaves the public routes open: still said out loud
    secret_only: Client = await aiohttp_client(create_app(settings.replace(
        host="0.0.0.0", secret_keys="sk_only")))
    assert "no publishable key" in (await (await secret_only.get("/readyz")).json())["warning"]


async def test_a_rebound_dns_name_is_not_our_own_origin(client: Client) -> None:
    body: dict[str, Any] = {"user_interactions": {}}
    evil = await client.post("/iid_recommend", json=body, headers={
        "Host": "evil.example:8000", "Origin": "http://evil.example:8000"})
    assert evil.status == 403
    assert "evil" not in (await evil.json())["error"]["message"]
    own = f"127.0.0.1:{client.port}"
    ours = await client.post("/iid_recommend", json=body, headers={
        "Host": own, "Origin": f"http://{own}"})
    assert ours.status == 200
    assert ours.headers["Access-Control-Allow-Origin"] == f"http://{own}"


# --- a corrupt journal entry (Redis Cluster) -------------------------------------------------
async def test_a_corrupt_journal_entry_is_dead_lettered_not_crash_looped(
        cluster_url: str) -> None:
    s = Settings(redis_url=cluster_url, namespace=f"journal-{time.time_ns()}", partitions=2,
                 block_ms=20, lease_ms=2000)
    store = Store(s)
    await store.prepare()
    await store.ingest([Event("s", "a", 1.0), Event("s", "b", 2.0)])
    await store.redis.hset(store.keys.journal(0), "bad", b"0|5:broken")
    await store.redis.hset(store.keys.journal(1), "worse", b"not a stamp")
    stats = await drain(s)
    assert stats["events_processed"] == 2
    r: Any = store.redis
    assert not await r.exists(store.keys.journal(0), store.keys.journal(1))
    dead = await r.xrange(store.keys.dead(0)) + await r.xrange(store.keys.dead(1))
    assert sorted(f[b"id"] for _, f in dead) == [b"journal:bad", b"journal:worse"]
    assert (await store.stats())["events_accepted"] == 2
    await store.close()


async def test_group_recreated_from_the_start_of_a_new_stream(standalone_url: str) -> None:
    """What the worker does on NOGROUP: a group from id 0, so nothing accepted meanwhile is
    skipped (a group created at '$' would skip what arrived before it)."""
    s = Settings(redis_url=standalone_url, namespace=f"regroup-{time.time_ns()}",
                 partitions=1)
    r = aioredis.Redis.from_url(standalone_url)
    store = Store(s)
    await store.ingest([Event("s", "a", 1.0)])  # the stream exists, its group does not
    worker = Worker(s)
    await worker.regroup()
    groups = await r.xinfo_groups(store.keys.stream(0))
    assert [(g["name"], g["last-delivered-id"]) for g in groups] == [(GROUP.encode(), b"0-0")]
    await worker.redis.aclose()
    await store.close()
    await r.aclose()


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
    assert (await store.stats())["events_accepted"] == 11
    # the same key with another body is a client's mistake, said so
    reused = await client.post("/events", json=single, headers={"Idempotency-Key": "batch-0"})
    assert reused.status == 409
    assert (await reused.json())["error"]["field"] == "Idempotency-Key"
    bad = await client.post("/events", json=single, headers={"Idempotency-Key": "a b"})
    assert bad.status == 400 and (await bad.json())["error"]["field"] == "Idempotency-Key"
    stats = await drain(settings)
    assert stats["events_processed"] == 11


# --- bounded Redis memory ----------------------------------------------------------------------
async def test_per_item_state_goes_after_history_ttl_without_events(
        client: Client, settings: Settings) -> None:
    """A flood of invented ids leaves nothing behind once history_ttl has passed: indexes
    expire, and the sweep takes their names, frequencies and trending entries. An item that
    comes back is learned again, under its name."""
    s = settings.replace(history_ttl=1)
    store = client.app[STORE]
    events = [Event(f"s{n}", f"flood-{n % 7}", time.time()) for n in range(40)]
    await store.ingest([*events, Event("s0", "kept", time.time())])
    await drain(s)
    r: Any = store.redis
    ttl = await r.pttl(store.keys.index(item_hash("flood-0")))
    assert 0 < ttl <= 1000
    assert (await store.stats())["items"] == 8
    await asyncio.sleep(1.2)
    worker = Worker(s)
    for _ in range(3):  # HSCAN may need a step or two per shard
        await worker.housekeeping.sweep()
    assert (await store.stats())["items"] == 0
    assert await r.zcard(store.keys.trend()) == 0
    assert [await r.hlen(store.keys.doc_freq(n)) for n in range(64)] == [0] * 64
    await store.ingest([Event("back", "flood-0", time.time()), Event("back", "x", time.time())])
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


# --- admin operations against a batch in flight ---------------------------------------------
@pytest.mark.parametrize("operation", ["reset", "forget"])
async def test_admin_rewrites_win_over_a_batch_that_read_the_history_before(
        aiohttp_client: Any, settings: Settings, operation: str) -> None:
    """The worker reads a batch's histories, then an admin resets the session (or forgets an
    item) before the batch commits: the commit must not write the old history back."""
    client: Client = await aiohttp_client(create_app(settings.replace(secret_keys="sk")),
                                          headers={"X-API-Key": "sk"})
    store = client.app[STORE]
    await store.ingest([Event("v", "secret-item", 1.0), Event("v", "old", 2.0),
                        Event("w", "secret-item", 1.0)])
    await drain(settings)
    await store.ingest([Event("v", "new", 3.0)])
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


# --- grindable hash collisions in the kernel's tables ----------------------------------------
def test_hashes_chosen_to_collide_spread_over_the_kernel_tables() -> None:
    """Item and session hashes are public (BLAKE2b of ids a client picks). Hashes that differ
    only in their top bits all landed in one probe run of the unsalted tables; salted, they
    spread like any others."""
    import numpy as np


    keys = np.array([(n + 1) << 44 for n in range(1000)], np.uint64)
    table_keys = np.zeros(1 << 13, np.uint64)
    table_values = np.full(1 << 13, np.nan)
    assert kernel.insert(table_keys, table_values, keys, np.ones(1000)) == 1000
    occupied = ~np.isnan(table_values)
    longest = run = 0
    for used in np.concatenate((occupied, occupied)):  # runs wrap around
        run = run + 1 if used else 0
        longest = max(longest, run)
    assert longest < 40, longest


def test_each_process_salts_its_tables_differently() -> None:
    import subprocess
    import sys

    probe = ("import numpy as np; from service import kernel; k = np.zeros(1 << 16, np.uint64); "
             "v = np.full(1 << 16, np.nan); "
             "kernel.insert(k, v, np.array([7, 8, 9], np.uint64), np.ones(3)); "
             "print(np.flatnonzero(~np.isnan(v)).tolist())")
    runs = {subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                           check=True).stdout for _ in range(3)}
    assert len(runs) == 3


# --- allow-list mode ---------------------------------------------------------------------------
async def test_catalog_only_mode_learns_catalogue_items_only(client: Client,
                                                             settings: Settings) -> None:
    """With --catalog-only, a flood of invented ids is accepted and consumed (pending falls
    to 0, counted as unlisted) without growing the learned state."""
    s = settings.replace(catalog_only=True)
    store = client.app[STORE]
    r: Any = store.redis
    for item in ("a", "b"):  # what the catalogue will write (PUT /items/{id})
        h = item_hash(item)
        await r.hset(store.keys.catalog(int.from_bytes(h, "little") % 64), h.hex(), b"{}")
    events = [{"session_id": f"s{n}", "item_id": i} for n in range(5)
              for i in ("a", "b", f"invented-{n}")]
    assert (await client.post("/events", json={"events": events})).status == 202
    stats = await drain(s)
    assert stats["pending"] == 0 and stats["events_unlisted"] == 5
    assert stats["items"] == 2
    similar = await (await client.get("/items/a/similar")).json()
    assert [row["id"] for row in similar["recommendations"]] == ["b"]
    assert not await r.exists(store.keys.index(item_hash("invented-0")))


async def test_stats_with_a_node_failing_in_the_pipeline_are_a_503_not_a_500(
        aiohttp_client: Any, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """/stats reads with errors returned as replies (a stream not created yet is one): a
    reply that is a failing node's error must fail the request as the store's outage (503),
    not be read as figures (a 500; a loaded cluster produced one in CI)."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    client: Client = await aiohttp_client(create_app(settings))
    store = client.app[STORE]
    real = store.redis.pipeline

    def failing_node(*args: Any, **kwargs: Any) -> Any:
        pipe = real(*args, **kwargs)
        execute = pipe.execute

        async def one_reply_failed(raise_on_error: bool = True) -> list[Any]:
            replies: list[Any] = await execute(raise_on_error=raise_on_error)
            if not raise_on_error:  # the statistics' pipeline
                replies[1] = RedisConnectionError("Timeout reading from 127.0.0.1:1")
            return replies
        pipe.execute = one_reply_failed  # type: ignore[method-assign]
        return pipe
    assert (await client.get("/stats")).status == 200
    monkeypatch.setattr(store.redis, "pipeline", failing_node)
    resp = await client.get("/stats")
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "unavailable"

