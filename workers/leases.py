"""Partition leases and balancing: which partitions this worker reads.

A partition is read by the holder of its lease only (a key with the holder's id and an
expiry, renewed well within it). Workers register in a sorted set by the time they were last
seen; each takes free partitions up to its fair share of the live workers, and gives back its
highest ones beyond it, so partitions spread over the workers without anyone assigning them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Literal

import redis.asyncio as aioredis

from service.failures import UNAVAILABLE
from service.settings import Settings
from service.store.keyspace import Keys
from service.store.scripts import Scripts
from workers.partition import Partition

log = logging.getLogger("sessionrec.worker")

Loop = Callable[[Partition], Coroutine[Any, Any, None]]


class Leases:
    """The leases of one worker, and the loops of the partitions it holds (``owned``)."""

    def __init__(self, settings: Settings, client: aioredis.Redis, keys: Keys, scripts: Scripts,
                 worker_id: str, partitions: Sequence[Partition], loop: Loop) -> None:
        self.settings = settings
        self.redis = client
        self.keys = keys
        self.scripts = scripts
        self.id = worker_id
        self.partitions = partitions
        self.loop = loop
        self.owned: dict[int, Partition] = {}

    async def balance(self) -> None:
        """Renew leases, take free partitions up to a fair share, give back any excess."""
        share = await self._fair_share()
        for p, part in list(self.owned.items()):
            held = await self._lease(p, "renew")
            task = part.task
            if not held or task is None or task.done():
                # a loop that died was logged with its traceback when it did (``_ended``)
                log.info("worker %s, partition %d: %s", self.id, p,
                         "lease lost" if not held else "loop ended")
                self._drop(p)
        for p in range(self.settings.partitions):
            if len(self.owned) >= share:
                break
            if p in self.owned:
                continue
            if await self._lease(p, "take"):
                log.info("worker %s, partition %d: lease taken", self.id, p)
                self._start(self.partitions[p])
        while len(self.owned) > share:
            p = max(self.owned)
            task = self._drop(p)
            # bounded: a cancellation swallowed inside the Redis client must not stall the
            # lease renewals (the loop also ends by itself once p is no longer its own)
            if task is not None:
                await asyncio.wait([task], timeout=1.0)
            await self._lease(p, "release")
            log.info("worker %s, partition %d: lease given back (fair share %d)", self.id, p,
                     share)

    async def _fair_share(self) -> int:
        """This worker's share of the partitions among the workers seen within a lease."""
        now_ms = int(time.time() * 1000)
        registry = self.keys.workers()
        await self.redis.zadd(registry, {self.id: now_ms})
        await self.redis.zremrangebyscore(registry, "-inf", now_ms - self.settings.lease_ms)
        alive = max(int(await self.redis.zcard(registry)), 1)
        return math.ceil(self.settings.partitions / alive)

    async def _lease(self, p: int, action: Literal["take", "renew", "release"]) -> bool:
        return await self.scripts.lease(self.keys.lease(p), self.id, self.settings.lease_ms,
                                        action)

    def _start(self, part: Partition) -> None:
        self.owned[part.p] = part
        task = part.task = asyncio.create_task(self.loop(part))
        task.add_done_callback(lambda ended: self._ended(part, ended))

    def _drop(self, p: int) -> asyncio.Task[None] | None:
        """Stop reading ``p`` (its lease is kept: the caller releases it or lets it lapse)."""
        part = self.owned.pop(p)
        task, part.task = part.task, None  # before the cancel: see ``PartitionLoop.run``
        if task is not None:
            task.cancel()
        return task

    def _ended(self, part: Partition, task: asyncio.Task[None]) -> None:
        """A loop that raised is logged now, with its traceback: the next balance only
        starts it again."""
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("worker %s, partition %d: the partition's loop died", self.id, part.p,
                      exc_info=exc)

    async def release_all(self) -> None:
        """At shutdown: let the loops finish their batch, then free every lease for the other
        workers to take at once (not after it expires)."""
        tasks = [part.task for part in self.owned.values() if part.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(*UNAVAILABLE):
            for p in list(self.owned):
                await self._lease(p, "release")
        self.owned.clear()
