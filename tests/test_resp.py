"""The hand-packed RESP command is what Redis expects (checked against a real server)."""

from __future__ import annotations

from service import resp
from service.settings import Settings
from service.store import Store


def test_pack_is_resp() -> None:
    assert resp.pack(b"MGET", [b"a", b"bc"]) == b"*3\r\n$4\r\nMGET\r\n$1\r\na\r\n$2\r\nbc\r\n"
    assert resp.pack(b"PING", []) == b"*1\r\n$4\r\nPING\r\n"


async def test_packed_mget_against_redis(settings: Settings) -> None:
    store = Store(settings)
    keys = [f"{settings.namespace}:{{p0}}:k{n}\r\n{{}}" for n in range(300)]
    await store.redis.mset({k: f"v{n}".encode() * n for n, k in enumerate(keys) if n % 3})
    got = await store.mget(keys)
    assert got == [None if n % 3 == 0 else f"v{n}".encode() * n for n in range(300)]
    await store.close()


async def test_commit_survives_a_script_cache_flush(settings: Settings) -> None:
    """After SCRIPT FLUSH (a restart without persistence of scripts) the packed EVALSHA gets
    NOSCRIPT and the commit falls back to loading the script."""
    from service.model import Event
    from tests.helpers import drain, ingest

    s = settings.replace(partitions=1)
    await ingest(s, [Event("s", "a", 1.0), Event("s", "b", 2.0)])
    store = Store(s)
    await store.redis.script_flush()
    stats = await drain(s)
    assert stats["events_processed"] == 2 and stats["pending"] == 0
    await store.close()


async def test_after_redis_drops_every_connection_one_request_fails_at_most(
        standalone_url: str) -> None:
    """The hot path keeps idle connections of its own; when Redis drops them all (a restart),
    the first failure discards every one, so the next request reconnects and succeeds."""
    import asyncio

    import redis.asyncio as aioredis
    from redis.exceptions import ConnectionError as RedisConnectionError

    store = Store(Settings(redis_url=standalone_url, namespace="lane"))
    keys = [f"lane:{{p0}}:k{n}" for n in range(50)]
    await store.redis.set(keys[0], b"v")
    await asyncio.gather(*(store.mget(keys) for _ in range(8)))
    assert len(store.lane._idle) >= 2  # several idle connections kept
    killer = aioredis.Redis.from_url(standalone_url)
    assert await killer.client_kill_filter(_type="normal", skipme=True) >= 2
    await killer.aclose()
    failures = 0
    for _ in range(5):
        try:
            assert (await store.mget(keys))[0] == b"v"
        except RedisConnectionError:
            failures += 1
    assert failures <= 1
    await store.close()
