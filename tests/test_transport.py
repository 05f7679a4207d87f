"""The hand-packed RESP command is what Redis expects (checked against a real server)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from service.offline.redisproc import RedisProcess
from service.settings import Settings
from service.store import transport
from service.store.backends import Standalone
from service.store.state import Store

pytestmark = pytest.mark.kernel  # ./dev test runs these on both kernels


def test_pack_is_resp() -> None:
    assert transport.pack(b"MGET", [b"a", b"bc"]) == b"*3\r\n$4\r\nMGET\r\n$1\r\na\r\n$2\r\nbc\r\n"
    assert transport.pack(b"PING", []) == b"*1\r\n$4\r\nPING\r\n"


def reference_pack(command: bytes, args: list[Any]) -> bytes:
    """What redis-py sends for the same arguments."""
    def encode(a: Any) -> bytes:
        if isinstance(a, bytes):
            return a
        if isinstance(a, str):
            return a.encode("utf-8", "surrogatepass")
        return repr(a).encode() if isinstance(a, float) else str(a).encode()
    parts = [command, *map(encode, args)]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def test_pack_encodes_every_argument_as_redis_py_does() -> None:
    args: list[Any] = [b"", b"\r\n\x00", "", "caf\u00e9 \U0001f600", "lone \ud800 surrogate",
                       0, -7, 2**70, True, 0.1, -1e300, 1.5e-7, float("inf"), 10**9 + 1]
    args += [str(n) * n for n in range(12)]  # lengths crossing a digit
    assert transport.pack(b"EVALSHA", args) == reference_pack(b"EVALSHA", args)
    assert transport.pack(b"X", tuple(args)) == reference_pack(b"X", args)
    with pytest.raises(TypeError, match="cannot send a NoneType"):
        transport.pack(b"SET", [b"k", None])  # type: ignore[list-item]


async def test_packed_mget_against_redis(settings: Settings) -> None:
    store = Store(settings)
    keys = [f"{settings.namespace}:{{p0}}:k{n}\r\n{{}}" for n in range(300)]
    await store.redis.mset({k: f"v{n}".encode() * n for n, k in enumerate(keys) if n % 3})
    got = await store.reads.mget(keys)
    assert got == [None if n % 3 == 0 else f"v{n}".encode() * n for n in range(300)]
    await store.close()


async def test_commit_survives_a_script_cache_flush(settings: Settings) -> None:
    """After SCRIPT FLUSH (a restart without persistence of scripts) the packed EVALSHA gets
    NOSCRIPT and the commit falls back to loading the script."""
    from service.core.model import Event
    from tests.helpers import drain, ingest

    s = settings.replace(partitions=1)
    await ingest(s, [Event("s", "a", 1.0), Event("s", "b", 2.0)])
    store = Store(s)
    await store.redis.script_flush()
    stats = await drain(s)
    assert stats["events_processed"] == 2 and stats["pending"] == 0
    await store.close()


async def test_ingest_survives_a_script_cache_flush(settings: Settings) -> None:
    """Ingestion packs its EVALSHA too: after SCRIPT FLUSH the batch is still accepted, once."""
    from service.core.model import Event

    store = Store(settings)
    await store.prepare()
    await store.ingestion.ingest([Event("s", "a", 1.0)])
    await store.redis.script_flush()
    assert len(await store.ingestion.ingest([Event("s", "b", 2.0), Event("t", "a", 3.0)])) == 2
    assert (await store.stats.read())["events_accepted"] == 3
    assert [x.item_id for x in await store.ingestion.live_session("s")] == ["a", "b"]
    await store.close()


async def test_after_redis_drops_the_link_one_request_fails_at_most(standalone_url: str) -> None:
    """When Redis drops the hot path's connection (a restart), at most the request in flight
    fails; the next one reconnects."""
    import redis.asyncio as aioredis
    from redis.exceptions import ConnectionError as RedisConnectionError

    store = Store(Settings(redis_url=standalone_url, namespace="lane"))
    backend = store.backend
    assert isinstance(backend, Standalone) and isinstance(backend.lane, transport.SharedConnection)
    keys = [f"lane:{{p0}}:k{n}" for n in range(50)]
    await store.redis.set(keys[0], b"v")
    await asyncio.gather(*(store.reads.mget(keys) for _ in range(8)))
    first = backend.lane.connection
    assert first is not None
    killer = aioredis.Redis.from_url(standalone_url)
    assert await killer.client_kill_filter(_type="normal", skipme=True) >= 1
    await killer.aclose()
    failures = 0
    for _ in range(5):
        try:
            assert (await store.reads.mget(keys))[0] == b"v"
        except RedisConnectionError:
            failures += 1
    assert failures <= 1
    assert backend.lane.connection is not None and backend.lane.connection is not first
    await store.close()


async def test_concurrent_callers_share_one_connection_and_get_their_own_replies(
        standalone_url: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(standalone_url)
    await client.mset({f"link:k{n}": f"v{n}".encode() * (n % 7 + 1) for n in range(300)})
    link = transport.open_transport(client, 1.0)
    assert isinstance(link, transport.SharedConnection)

    async def read(n: int) -> None:
        keys = [f"link:k{m}" for m in range(n, n + 1 + n % 40)]
        got = await link.execute(transport.pack(b"MGET", keys))
        assert got == [f"v{m}".encode() * (m % 7 + 1) for m in range(n, n + 1 + n % 40)]
        two = await link.execute(
            transport.pack(b"GET", [keys[0]]) + transport.pack(b"STRLEN", [keys[0]]), 2)
        assert two == [got[0], len(got[0])]

    before = await client.client_list()
    await asyncio.gather(*(read(n) for n in range(200)))
    after = await client.client_list()
    assert len(after) == len(before) + 1  # all 400 calls went over one connection
    await link.close()
    await client.aclose()


async def test_error_replies_are_redis_py_exceptions_and_keep_the_order(
        standalone_url: str) -> None:
    import redis.asyncio as aioredis
    from redis.exceptions import NoScriptError, ResponseError

    client = aioredis.Redis.from_url(standalone_url)
    link = transport.open_transport(client, 1.0)
    with pytest.raises(NoScriptError):
        await link.execute(transport.pack(b"EVALSHA", [b"0" * 40, 0]))
    with pytest.raises(ResponseError, match="wrong number of arguments"):
        await link.execute(transport.pack(b"PING", []) + transport.pack(b"GET", []), 2)
    assert await link.execute(transport.pack(b"ECHO", [b"after"])) == b"after"
    await link.close()
    await client.aclose()


async def test_a_cancelled_caller_does_not_shift_the_replies(standalone_url: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(standalone_url)
    link = transport.open_transport(client, 2.0)
    blocked = asyncio.ensure_future(link.execute(transport.pack(b"BLPOP", [b"link:none", b"0.3"])))
    await asyncio.sleep(0.05)
    blocked.cancel()
    assert await link.execute(transport.pack(b"ECHO", [b"mine"])) == b"mine"
    await link.close()
    await client.aclose()


async def test_a_silent_server_times_out_and_the_link_recovers(standalone_url: str) -> None:
    """Replies overdue by the timeout fail every waiter (one timer checks, no task per call);
    the next call opens a new connection."""
    import redis.asyncio as aioredis
    from redis.exceptions import TimeoutError as RedisTimeoutError

    client = aioredis.Redis.from_url(standalone_url)
    link = transport.open_transport(client, 0.4)
    started = time.monotonic()
    with pytest.raises(RedisTimeoutError):  # BLPOP holds the connection past the timeout
        await asyncio.gather(link.execute(transport.pack(b"BLPOP", [b"link:none", b"2"])),
                             link.execute(transport.pack(b"PING", [])))
    assert 0.4 <= time.monotonic() - started < 0.9  # 1.25 x the timeout, plus scheduling
    assert await link.execute(transport.pack(b"PING", [])) == b"PONG"
    await link.close()
    await client.aclose()


async def test_a_failed_connect_fails_the_next_callers_at_once_for_one_timeout() -> None:
    """A caller arriving just after a failed connect used to start a new one and answer after
    two timeouts; within a timeout of the failure it now fails at once, without connecting,
    and after it the link tries again."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    accepted: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # accepts, never answers the handshake

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    link = transport.SharedConnection(0.3, port=port, host="127.0.0.1", password="secret")
    try:
        with pytest.raises(RedisConnectionError):
            await link.execute(transport.pack(b"PING", []))
        assert len(accepted) == 1
        started = time.monotonic()
        with pytest.raises(RedisConnectionError, match="not retried"):
            await link.execute(transport.pack(b"PING", []))
        assert time.monotonic() - started < 0.05 and len(accepted) == 1
        await asyncio.sleep(0.35)
        with pytest.raises(RedisConnectionError):
            await link.execute(transport.pack(b"PING", []))
        assert len(accepted) == 2
    finally:
        await link.close()
        for writer in accepted:
            writer.close()
        server.close()


async def test_the_link_authenticates_and_selects_the_database() -> None:
    import redis.asyncio as aioredis
    from redis.exceptions import AuthenticationError

    with RedisProcess() as url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        await aioredis.Redis(port=port).config_set("requirepass", "s3cret")
        good = aioredis.Redis.from_url(f"redis://:s3cret@127.0.0.1:{port}/3")
        link = transport.open_transport(good, 1.0)
        await link.execute(transport.pack(b"SET", [b"where", b"db3"]))
        assert await good.get("where") == b"db3"
        assert await aioredis.Redis.from_url(
            f"redis://:s3cret@127.0.0.1:{port}/0").get("where") is None
        bad = aioredis.Redis.from_url(f"redis://:wrong@127.0.0.1:{port}/0")
        with pytest.raises(AuthenticationError):
            await transport.open_transport(bad, 1.0).execute(transport.pack(b"PING", []))
        await link.close()
