"""The dashboard's per-minute series in Redis (``core/series.py``): each process adds its own
tally, and any API process reads the same minutes back."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis

from service.core.series import KEEP_MINUTES
from service.store.keyspace import Keys

EXPIRE_SECONDS = (KEEP_MINUTES + 60) * 60


async def add(client: aioredis.Redis, keys: Keys, minutes: Mapping[int, Mapping[str, int]]
              ) -> None:
    """A process' counts since its last call (one pipeline: every key in one slot)."""
    if not minutes:
        return
    async with client.pipeline(transaction=False) as pipe:
        for minute, counts in minutes.items():
            key = keys.minute(minute)
            for name, n in counts.items():
                pipe.hincrby(key, name, n)
            pipe.expire(key, EXPIRE_SECONDS)
        await pipe.execute()


async def read(client: aioredis.Redis, keys: Keys, last: int, count: int
               ) -> list[tuple[int, dict[str, int]]]:
    """The ``count`` minutes up to ``last`` (oldest first), each minute's counts."""
    minutes = list(range(last - count + 1, last + 1))
    async with client.pipeline(transaction=False) as pipe:
        for minute in minutes:
            pipe.hgetall(keys.minute(minute))
        replies: list[Any] = await pipe.execute()
    return [(minute, {k.decode(): int(v) for k, v in reply.items()})
            for minute, reply in zip(minutes, replies, strict=True)]
