"""What a failure of the store answers: Redis unreachable, 503 within a second with the error
shape, liveness staying up; appends that keep failing, a 503 that says so; a Redis error no
retry fixes (a script's bug), a 500 logged as a bug, never "503, retry"."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
from redis.exceptions import ResponseError

import service.store.ingestion
from service.api.app import create_app
from service.api.context import STORE
from service.core.model import Event
from service.failures import Backlogged
from service.offline.redisproc import free_port
from service.settings import Settings
from service.store.state import Store
from tests.conftest import Client


async def test_unreachable_redis_answers_503_fast(aiohttp_client: Any,
                                                  settings: Settings) -> None:
    down = settings.replace(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    client: Client = await aiohttp_client(create_app(down))
    for method, path, body in [
            ("POST", "/iid_recommend", {"user_interactions": {"a": {}}}),
            ("POST", "/events", {"session_id": "s", "item_id": "a"}),
            ("GET", "/popular", None), ("GET", "/stats", None), ("GET", "/readyz", None),
            ("GET", "/items/a/similar", None), ("GET", "/sessions/s/recommendations", None)]:
        started = time.monotonic()
        resp = await client.request(method, path, json=body)
        assert resp.status == 503, path
        assert time.monotonic() - started < 1.0
        error = (await resp.json())["error"]
        assert error["code"] == "unavailable" and error["message"]
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/metrics")).status == 200


async def test_silent_redis_answers_503_within_a_second(aiohttp_client: Any,
                                                        settings: Settings) -> None:
    """A Redis that accepts connections and never answers (overloaded, half-open link)."""
    import asyncio

    held: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # never reply

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client: Client = await aiohttp_client(create_app(
            settings.replace(redis_url=f"redis://127.0.0.1:{port}/0")))
        for method, path, body in [
                ("POST", "/iid_recommend", {"user_interactions": {}}),
                ("POST", "/events", {"session_id": "s", "item_id": "a"}),
                ("GET", "/readyz", None)]:
            started = time.monotonic()
            resp = await client.request(method, path, json=body)
            assert resp.status == 503, path
            assert time.monotonic() - started < 1.0
            assert (await resp.json())["error"]["code"] == "unavailable"
    finally:
        for writer in held:
            writer.close()
        server.close()


async def test_a_full_journal_answers_503_backlogged_rather_than_grow(
        aiohttp_client: Any, cluster_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch spanning partitions whose journals are full is refused, worded as what it is
    (it was raised as a connection error: "the data store is unreachable")."""
    monkeypatch.setattr(service.store.ingestion, "JOURNAL_CAP", 2)
    s = Settings(redis_url=cluster_url, namespace=f"full-{time.time_ns()}", partitions=4)
    store = Store(s)
    await store.prepare()
    spanning = [Event(f"s{n}", "a", 1.0) for n in range(8)]
    for p in range(4):
        await store.redis.hset(store.keys.journal(p), mapping={"x": b"1|", "y": b"1|"})
    with pytest.raises(Backlogged):
        await store.ingestion.ingest(spanning)
    assert (await store.stats.read())["events_accepted"] == 0
    client: Client = await aiohttp_client(create_app(s))
    resp = await client.post("/events", json={"events": [
        {"session_id": e.session_id, "item_id": e.item_id} for e in spanning]})
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "backlogged"
    await store.close()


async def test_a_redis_error_no_retry_fixes_is_a_500_logged_as_a_bug(
        aiohttp_client: Any, settings: Settings, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A script's bug (Redis answers an error to a call that can never succeed) was answered
    "503, retry shortly": a client retried what no retry fixes, and the log said Redis was
    unavailable."""
    client: Client = await aiohttp_client(create_app(settings))
    store = client.app[STORE]

    async def broken(command: bytes, args: list[bytes | str | int]) -> Any:
        raise ResponseError("ERR user_script:1: Script attempted to access nonexistent global")
    monkeypatch.setattr(store.reads, "read", broken)
    resp = await client.get("/popular")
    assert resp.status == 500
    assert (await resp.json())["error"]["code"] == "internal"
    assert any(r.levelname == "ERROR" and "bug" in r.getMessage() for r in caplog.records)
    assert not any("unavailable" in r.getMessage() for r in caplog.records)


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
