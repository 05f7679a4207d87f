"""The stream consumer: applies accepted events to the learned state, each exactly once.

How exactly-once holds
----------------------
* A partition is worked by one worker at a time: the holder of its lease. It reads as the
  partition's consumer name, so a new holder first receives the previous holder's pending
  entries (read from id 0), then new ones (``>``), always in stream order.
* Every partition has a watermark: the id of the last entry whose effects are committed. A batch
  is committed by one script that checks the watermark still holds the value read before the
  batch was computed (compare-and-set) and that the batch's first new entry is the stream's
  very next entry after it (no gap), applies the effects, moves the watermark and XACKs, all
  atomically. Entries at or below the watermark are acknowledged without effect. So a crash at
  any point, a redelivery or a stale worker that lost its lease changes nothing twice, and
  nothing is skipped: during a lease handover two readers can each receive a batch, but only
  the older one can commit first.
* Effects depend only on the partition's own sessions' histories (read in the same round trip
  as the watermark) and the events, and every per-item structure is order-free (see
  ``service.core.model``), so how partitions interleave across workers cannot change the result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Sequence

import redis.asyncio as aioredis

from service.failures import UNAVAILABLE
from service.settings import Settings
from service.store.backends import connect, open_backend
from service.store.feedback import Feedback
from service.store.keyspace import Keys
from service.store.scripts import Scripts
from service.store.state import ensure_groups
from workers.batch import Batches
from workers.entries import Conflict, Entry
from workers.housekeeping import Housekeeping
from workers.leases import Leases
from workers.loop import PartitionLoop
from workers.partition import Partition

__all__ = ["AUTO_TUNE_CHECK", "TRIM_EVERY", "Conflict", "Entry", "Worker"]

log = logging.getLogger("sessionrec.worker")

TRIM_EVERY = 5.0
"""Seconds between a worker's housekeeping rounds (trim, sweep, journal replay)."""
AUTO_TUNE_CHECK = 30.0
"""Seconds between a worker's checks whether an automatic tuning run is due (``--auto-tune``)."""


class Worker:
    """One worker process' consumer: its leases (``leases.py``), the loops of the partitions
    it holds (``loop.py``) applying their batches (``batch.py``), and its housekeeping
    (``housekeeping.py``)."""

    def __init__(self, settings: Settings, client: aioredis.Redis | None = None,
                 worker_id: str | None = None) -> None:
        self.settings = settings
        if client is None:
            # a blocking read waits block_ms: the socket timeout must outlast it
            client = connect(settings.replace(
                redis_timeout=settings.redis_timeout + settings.block_ms / 1000))
        self.redis = client
        self.keys = Keys(settings.namespace, settings.partitions)
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{id(self):x}"
        self.scripts = Scripts(client)
        self.backend = open_backend(settings.replace(read_cache_mb=0), client)
        self.stopping = asyncio.Event()
        self.auto_tune_every = AUTO_TUNE_CHECK
        feedback = Feedback(client, self.scripts, self.keys, settings.partitions)
        self.batches = Batches(settings, client, self.keys, self.scripts, self.backend, feedback)
        self.partitions = [Partition(p) for p in range(settings.partitions)]
        self.loop = PartitionLoop(self.batches, self.stopping, self.regroup)
        self.leases = Leases(settings, client, self.keys, self.scripts, self.id,
                             self.partitions, self.loop.run)
        self.housekeeping = Housekeeping(settings, client, self.keys, self.scripts,
                                         self.backend, self.leases, self.batches.minutes)

    @property
    def applied(self) -> int:
        """Events this worker applied (learned), for its last log line."""
        return self.batches.applied

    async def run(self) -> None:
        """Work until ``stop()``; survive Redis outages by backing off and resuming."""
        delay = 0.1
        last_trim = 0.0
        last_tune_check = time.monotonic()  # the first check one period after the start
        grouped = False
        with contextlib.suppress(*UNAVAILABLE):  # checked again by the API's start
            await self.backend.check_memory_policy()
        while not self.stopping.is_set():
            try:
                if not grouped:
                    await ensure_groups(self.redis, self.keys)
                    grouped = True
                await self.leases.balance()
                # a tuning run is a process of its own: none can share an embedded Redis
                if self.backend.other_processes and \
                        time.monotonic() - last_tune_check > self.auto_tune_every:
                    last_tune_check = time.monotonic()
                    await self.housekeeping.check_tuning()
                    await self.housekeeping.check_sequence()
                if time.monotonic() - last_trim > TRIM_EVERY:
                    await self.housekeeping.trim()
                    last_trim = time.monotonic()
                await self.housekeeping.add_minutes()
                delay = 0.1
                wait = self.settings.lease_ms / 3000
            except UNAVAILABLE as exc:
                log.warning("redis unavailable (%s); retrying in %.1fs", exc, delay)
                wait, delay = delay, min(delay * 2, 5.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), wait)
        await self.shutdown()

    def stop(self) -> None:
        self.stopping.set()

    async def shutdown(self) -> None:
        """Let the partitions' loops finish, and give their leases back."""
        await self.leases.release_all()

    async def regroup(self) -> None:
        """After Redis lost its data: the consumer groups again (from the start of each new
        stream, so events accepted since are all delivered), and nothing this process
        remembers about the old state (which names it wrote)."""
        self.batches.commits.named.clear()
        await ensure_groups(self.redis, self.keys)

    async def process(self, p: int, entries: Sequence[Entry]) -> None:
        """Apply one batch of partition ``p``'s entries, as its loop would."""
        await self.batches.process(self.partitions[p], entries)
