"""The sequence model in Redis (``core/sequence.py``): written whole by the run that trained
it, its version polled by every serve process, which reads it again only when that moves."""

from __future__ import annotations

import json
import time
from typing import Any, cast

import numpy as np
import redis.asyncio as aioredis

from service.core.sequence import F32, SequenceModel, run_due
from service.settings import Settings
from service.store import tuning
from service.store.keyspace import Keys
from service.store.part import Part
from service.store.scripts import Scripts


async def start_if_due(client: aioredis.Redis, scripts: Scripts, keys: Keys,
                       settings: Settings) -> str | None:
    """Start a sequence model run (``sessionrec sequence --apply``) when one is due
    (``core.sequence.run_due``) and none is running: whichever worker checks first takes its
    lease. The new run's id, if this call started one."""
    if settings.sequence_refresh <= 0:
        return None
    started, until = await client.hmget(keys.sequence(), ["started", "arrived_until"])
    newest = await tuning.newest_arrival(client, keys)
    now = time.time()
    if not run_due(float(started) if started else None, float(until) if until else None,
                   newest, now, settings.sequence_refresh):
        return None
    run_id, began = await tuning.start_process(client, scripts, keys.sequence_lease(),
                                               settings, ("sequence", "--apply"))
    if not began:
        return None
    # a run that stores nothing (no new sessions, a crash) still waits out the period
    await client.hset(keys.sequence(), "started", now)
    return run_id


class SequenceModels(Part):
    async def version(self) -> int:
        """The stored model's version (0: none was ever stored)."""
        return int(await self.redis.hget(self.keys.sequence(), "version") or 0)

    async def facts(self) -> dict[str, Any] | None:
        """What the stored model's run says of it (``GET /model``), without the model."""
        raw = await self.redis.hget(self.keys.sequence(), "facts")
        return cast(dict[str, Any], json.loads(raw)) if raw else None

    async def model(self) -> tuple[int, bytes | None]:
        """The stored model's version and its stored form (None: no model)."""
        version, blob = await self.redis.hmget(self.keys.sequence(), ["version", "model"])
        return int(version or 0), cast(bytes | None, blob) or None

    async def training_state(self) -> tuple[SequenceModel | None, F32 | None]:
        """The stored model and its trainer's sums: what the next run resumes from. A model
        that cannot be read (another release's) is none: the run starts afresh."""
        blob, sums = cast(list[bytes | None], await self.redis.hmget(self.keys.sequence(),
                                                                     ["model", "sums"]))
        try:
            model = SequenceModel.from_bytes(blob) if blob else None
        except ValueError:
            return None, None
        if model is None or not sums or len(sums) != 16 * (model.size + 1):
            return model, None
        return model, np.frombuffer(sums, "<f4").reshape(4, -1).astype(np.float32)

    async def save(self, model: SequenceModel, sums: F32, arrived_until: float) -> int:
        """Store ``model``, its trainer's sums and the newest arrival it read (ms: kept for
        the workers' check, out of the public facts) as one step; the new version."""
        key = self.keys.sequence()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"model": model.to_bytes(),
                                    "sums": np.ascontiguousarray(sums, "<f4").tobytes(),
                                    "facts": json.dumps(model.facts),
                                    "arrived_until": arrived_until})
            pipe.hincrby(key, "version", 1)
            replies = await pipe.execute()
        return int(replies[-1])
