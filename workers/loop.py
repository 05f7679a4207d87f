"""The loop of a held partition: read its entries in stream order, apply them as batches
(``workers/batch.py``), and recover from what interrupts it.

A new hold first drains what the partition's consumer left pending (the backlog, read from id
0), then reads new entries (``>``). Pending entries delivered before are applied one at a
time, each attempt recorded first, so an entry that crashes its worker is the only one retried
and is dead-lettered after ``max_deliveries`` attempts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

from redis.exceptions import ResponseError

from service.failures import UNAVAILABLE
from service.store import transport
from service.store.keyspace import GROUP
from workers.batch import Batches
from workers.entries import Conflict, Entry, before, entries_of, flat, read_command
from workers.partition import Partition

log = logging.getLogger("sessionrec.worker")


class PartitionLoop:
    """Runs the loops of the partitions this worker holds (one task per held partition)."""

    def __init__(self, batches: Batches, stopping: asyncio.Event,
                 regroup: Callable[[], Awaitable[None]]) -> None:
        self.batches = batches
        self.redis = batches.redis
        self.keys = batches.keys
        self.settings = batches.settings
        self.stopping = stopping
        self.regroup = regroup
        """Called when Redis lost the partition's consumer group (it came back empty)."""

    async def run(self, part: Partition) -> None:
        p = part.p
        backlog = True  # first drain what this partition's consumer left pending
        part.begin_hold()
        delay = 0.1
        me = asyncio.current_task()
        # ``part.task is me``: the lease code clears it before cancelling this task, and a
        # cancellation can be lost inside the Redis client's timeout handling (asyncio.timeout
        # turns it into a TimeoutError when both fire together); without this check the loop
        # would go on reading a partition that another worker now holds
        while not self.stopping.is_set() and part.task is me:
            try:
                entries = None
                if not backlog:
                    entries, part.prefetched = part.prefetched, None
                if not entries:
                    entries = await self.read(part, backlog)
                if backlog and not entries:
                    backlog = await self._has_pending(p)
                    continue
                if entries:
                    await asyncio.shield(self.batches.process(part, entries,
                                                              read_ahead=not backlog))
                    part.redeliveries_explained = 0
                    if (attempted := part.attempting) is not None:
                        part.attempting = None
                        await self.redis.hdel(self.keys.attempts(p), attempted)
                if part.cut_at_inflight:
                    part.cut_at_inflight = False
                    backlog = True
                delay = 0.1
            except Conflict as exc:
                log.info("partition %d: %s; re-reading pending entries", p, exc.args[1])
                part.retry_from_backlog()  # read, so pending: the backlog read has them
                backlog = True
            except UNAVAILABLE as exc:
                log.warning("partition %d: redis unavailable (%s)", p, exc)
                part.retry_from_backlog()
                backlog = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), delay)
                delay = min(delay * 2, 5.0)
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                # the stream or its group is gone: Redis came back empty (restarted without
                # persistence, flushed, failed over to an empty replica)
                log.warning("partition %d: consumer group missing (%s); Redis lost its data: "
                            "recreating it", p, exc)
                await self.regroup()
                part.prefetched = None
                backlog = True

    async def read(self, part: Partition, backlog: bool) -> list[Entry]:
        """New entries, or on a backlog read the entries left pending. Pending entries that
        were delivered before are returned one at a time: if one of them crashes the worker,
        it is the only one retried, and after ``max_deliveries`` it is dead-lettered."""
        p = part.p
        stream = self.keys.stream(p)
        if backlog:
            pending: list[dict[str, Any]] = await self.redis.xpending_range(
                stream, GROUP, min="-", max="+", count=self.settings.batch_size,
                consumername=self.keys.consumer(p))
            if not pending:
                return []
            if any(x["times_delivered"] > 1 for x in pending):
                # the oldest pending entry goes next, alone: entries apply strictly in order
                first = pending[0]
                entry_id = first["message_id"]
                entry_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                return await self._read_one(part, entry_id)
        if self.batches.backend.raw_reads:
            # the raw reply: redis-py's parser would build a dict per entry through
            # pairs_to_dict, only for the worker to flatten it again
            return entries_of(await transport.execute(
                self.redis, read_command(self.keys, self.settings, p, backlog)))
        reply = await self.redis.xreadgroup(
            GROUP, self.keys.consumer(p), {stream: "0" if backlog else ">"},
            count=self.settings.batch_size, block=None if backlog else self.settings.block_ms)
        if not reply:
            return []
        _, messages = cast(list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes] | None]]]],
                           reply)[0]
        return [Entry(mid.decode(), flat(fields)) for mid, fields in messages
                if fields is not None]

    async def _read_one(self, part: Partition, entry_id: str) -> list[Entry]:
        p = part.p
        stream = self.keys.stream(p)
        reply: Any = await self.redis.xreadgroup(GROUP, self.keys.consumer(p),
                                                 {stream: before(entry_id)}, count=1)
        messages = cast(list[tuple[bytes, dict[bytes, bytes] | None]],
                        reply[0][1] if reply else [])
        fields = messages[0][1] if messages else None
        if fields is None:
            # the entry was trimmed away: acknowledge it so it stops blocking the partition
            await self.redis.xack(stream, GROUP, entry_id)
            return []
        entry = Entry(messages[0][0].decode(), flat(fields))
        # Counted are attempts to apply the entry alone, recorded before each one: an attempt
        # that never cleared its mark crashed its worker. Deliveries are no measure: a lease
        # handover or a worker killed for any reason redelivers every pending entry. Retries
        # this process caused itself (after an outage or a conflict) are not counted either.
        attempts = int(await self.redis.hincrby(self.keys.attempts(p), entry.id, 1))
        failed = attempts - 1 - part.redeliveries_explained
        if failed >= self.settings.max_deliveries:
            log.error("partition %d: entry %s failed %d attempts: dead-lettered", p, entry.id,
                      failed)
            await self.batches.commit(part, [entry], dead_reason=(
                f"attempted {failed} times without being applied"))
            await self.redis.hdel(self.keys.attempts(p), entry.id)
            return []
        part.attempting = entry.id
        return [entry]

    async def _has_pending(self, p: int) -> bool:
        return bool(await self.redis.xpending_range(
            self.keys.stream(p), GROUP, min="-", max="+", count=1,
            consumername=self.keys.consumer(p)))
