"""A worker's housekeeping beside its partitions' batches: trimming the streams, sweeping
expired items, finishing journalled batches (cluster), automatic tuning, and the dashboard's
per-minute series. ``Worker.run`` decides when each is due."""

from __future__ import annotations

import logging

import redis.asyncio as aioredis

from service.core.layout import ITEM_SHARDS
from service.core.series import MinuteTally
from service.failures import UNAVAILABLE
from service.settings import Settings
from service.store import sequence, series, tuning
from service.store.backends import Backend
from service.store.ingestion import Ingestion, Journal
from service.store.keyspace import Keys
from service.store.scripts import Scripts
from workers.leases import Leases

log = logging.getLogger("sessionrec.worker")

SWEEP_STEP = 500
"""Fields of an item shard's names that one sweep step looks at (HSCAN's COUNT)."""


class Housekeeping:
    """The upkeep one worker does for the whole namespace (several workers doing it at once
    only repeat harmless work)."""

    def __init__(self, settings: Settings, client: aioredis.Redis, keys: Keys, scripts: Scripts,
                 backend: Backend, leases: Leases, minutes: MinuteTally) -> None:
        self.settings = settings
        self.redis = client
        self.keys = keys
        self.scripts = scripts
        self.backend = backend
        self.leases = leases
        self.minutes = minutes
        self.journal = Journal(Ingestion(settings, backend, scripts, keys))
        self.sweep_cursors: dict[int, bytes] = {}

    async def trim(self) -> None:
        """Trim every partition stream, sweep a step of every item shard (``sweep``); on a
        cluster, also finish the journalled batches of the partitions this worker holds (see
        ``service/store/ingestion.py``)."""
        for p in range(self.settings.partitions):
            await self.scripts.trim(self.keys.stream(p))
        await self.sweep()
        if self.backend.one_slot_scripts:
            await self.replay_journals()

    async def replay_journals(self) -> None:
        """The journalled batches of the partitions this worker holds that their API process
        left unfinished: their holder appends them, so one worker does each."""
        for p in list(self.leases.owned):
            if replayed := await self.journal.replay(p):
                log.warning("partition %d: replayed %d journalled batches", p, replayed)

    async def sweep(self) -> int:
        """One step over every item shard: items whose neighbour index expired (no event for
        ``history_ttl``) lose their names, frequencies and trending entries too. Several
        workers sweeping at once do the same deletes twice, harmlessly. Returns how many
        items went."""
        k = self.keys
        removed = 0
        for shard in range(ITEM_SHARDS):
            cursor, gone = await self.scripts.sweep(
                k.names(shard), k.doc_freq(shard), self.sweep_cursors.get(shard, b"0"),
                SWEEP_STEP, k.index_prefix(shard))
            self.sweep_cursors[shard] = cursor
            if gone:
                await self.redis.zrem(k.trend(), *gone)
                removed += len(gone)
        return removed

    async def check_tuning(self) -> None:
        """Take back the tuning lease from a run that finished but still holds it, then (with
        ``--auto-tune``) start an automatic run if one is due (``store/tuning.py``)."""
        worker = self.leases.id
        finished = await tuning.reclaim_lease(self.redis, self.scripts, self.keys,
                                              self.settings)
        if finished is not None:
            log.warning("worker %s: took the tuning lease back from run %s, which finished "
                        "but still held it", worker, finished)
        if self.settings.auto_tune:
            run_id = await tuning.start_if_due(self.redis, self.scripts, self.keys,
                                               self.settings)
            if run_id is not None:
                log.info("worker %s: automatic tuning run %s started", worker, run_id)

    async def check_sequence(self) -> None:
        """Start a sequence model run if one is due (``store/sequence.py``)."""
        run_id = await sequence.start_if_due(self.redis, self.scripts, self.keys, self.settings)
        if run_id is not None:
            log.info("worker %s: sequence model run %s started", self.leases.id, run_id)

    async def add_minutes(self) -> None:
        """This worker's per-minute tally into Redis (the dashboard's series); kept for the
        next try when Redis cannot take it."""
        minutes = self.minutes.take()
        try:
            await series.add(self.redis, self.keys, minutes)
        except UNAVAILABLE:
            self.minutes.give_back(minutes)
            raise
