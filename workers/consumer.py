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
import math
import os
import socket
import time
from collections.abc import Sequence
from typing import Any, NamedTuple, cast

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, ResponseError

from service.core.feedback import Claim, claim, hour_of, tally
from service.core.layout import (
    ITEM_SHARDS,
    item_hash,
    partition_of,
    session_hash,
)
from service.core.model import (
    IMPRESSION,
    Event,
    apply_events,
    arrival_of,
    no_later_than,
    sessions_of,
)
from service.core.series import FRESHNESS_MS, MinuteTally
from service.core.stream import BadEntry, decode_flat, fields_of
from service.failures import UNAVAILABLE
from service.settings import Settings
from service.store import series, transport, tuning
from service.store.backends import connect, open_backend
from service.store.feedback import Feedback
from service.store.journal import Journal
from service.store.keyspace import GROUP, Keys
from service.store.scripts import Scripts
from service.store.state import ensure_groups
from workers.commit import Call, CommitAssembler, Group, shard_hex

log = logging.getLogger("sessionrec.worker")

TRIM_EVERY = 5.0
SWEEP_STEP = 500
"""Fields of an item shard's names that one sweep step looks at (HSCAN's COUNT)."""

SIGNING_KEY_AGE = 5.0
"""Seconds a worker keeps the recommendation ids' signing key before reading it again (it
changes only when Redis lost it, and then the ids signed before count nowhere anyway)."""
AUTO_TUNE_CHECK = 30.0
"""Seconds between a worker's checks whether an automatic tuning run is due (``--auto-tune``)."""


class Conflict(Exception):
    """The watermark moved under us: another worker committed this partition meanwhile."""


class Entry(NamedTuple):
    """A stream entry as read, ``flat`` being ``[field, value, ...]`` (a named tuple: one is
    built per event read)."""

    id: str
    flat: list[bytes]

    @property
    def fields(self) -> dict[bytes, bytes]:
        return fields_of(self.flat)


def id_tuple(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _flat(fields: dict[bytes, bytes]) -> list[bytes]:
    return [x for pair in fields.items() for x in pair]


def _before(entry_id: str) -> str:
    """The stream id just before ``entry_id``: XREADGROUP returns entries after the id given."""
    ms, seq = id_tuple(entry_id)
    return f"{ms}-{seq - 1}" if seq > 0 else f"{ms - 1}-{2**64 - 1}"


class Worker:
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
        self.journal = Journal(settings, self.backend, self.keys, self.scripts)
        self.commits = CommitAssembler(self.keys, settings)
        self.redeliveries_explained: dict[int, int] = {}
        """Per partition: redeliveries since the last success that an outage or a conflict
        explains (not a crash the entry might cause: those count toward dead-lettering)."""
        self.cut_at_inflight: set[int] = set()
        self.cut_at: dict[int, str] = {}  # partition -> where a slot's part of a batch ends
        """Partitions whose last batch was cut at the in-flight mark: read the backlog next."""
        self.prefetched: dict[int, list[Entry]] = {}
        """Per partition: the next batch, read in the same round trip as the last commit."""
        self.attempting: dict[int, str] = {}
        """Per partition: the redelivered entry being applied alone (its attempt recorded)."""
        self.sweep_cursors: dict[int, bytes] = {}
        self.owned: dict[int, asyncio.Task[None]] = {}
        self.stopping = asyncio.Event()
        self.applied = 0
        self.auto_tune_every = AUTO_TUNE_CHECK
        self.feedback = Feedback(client, self.scripts, self.keys, settings.partitions)
        self.minutes = MinuteTally()
        self._signing_key: tuple[float, bytes] = (-math.inf, b"")

    # --- lifecycle ------------------------------------------------------------------------
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
                await self.balance()
                # a tuning run is a process of its own: none can share an embedded Redis
                if self.backend.other_processes and \
                        time.monotonic() - last_tune_check > self.auto_tune_every:
                    last_tune_check = time.monotonic()
                    await self.check_tuning()
                if time.monotonic() - last_trim > TRIM_EVERY:
                    await self.trim()
                    last_trim = time.monotonic()
                await self.add_minutes()
                delay = 0.1
                wait = self.settings.lease_ms / 3000
            except UNAVAILABLE as exc:
                log.warning("redis unavailable (%s); retrying in %.1fs", exc, delay)
                wait, delay = delay, min(delay * 2, 5.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), wait)
        await self._shutdown()

    def stop(self) -> None:
        self.stopping.set()

    async def check_tuning(self) -> None:
        """Take back the tuning lease from a run that finished but still holds it, then (with
        ``--auto-tune``) start an automatic run if one is due (``store/tuning.py``)."""
        finished = await tuning.reclaim_lease(self.redis, self.scripts, self.keys,
                                              self.settings)
        if finished is not None:
            log.warning("worker %s: took the tuning lease back from run %s, which finished "
                        "but still held it", self.id, finished)
        if self.settings.auto_tune:
            run_id = await tuning.start_if_due(self.redis, self.scripts, self.keys,
                                               self.settings)
            if run_id is not None:
                log.info("worker %s: automatic tuning run %s started", self.id, run_id)

    async def regroup(self) -> None:
        """After Redis lost its data: the consumer groups again (from the start of each new
        stream, so events accepted since are all delivered), and nothing this process
        remembers about the old state (which names it wrote)."""
        self.commits.named.clear()
        await ensure_groups(self.redis, self.keys)

    async def _shutdown(self) -> None:
        tasks = list(self.owned.values())
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(*UNAVAILABLE):
            for p in list(self.owned):
                await self.scripts.lease(self.keys.lease(p), self.id, self.settings.lease_ms,
                                         "release")
        self.owned.clear()

    # --- partition leases -----------------------------------------------------------------
    async def balance(self) -> None:
        """Renew leases, take free partitions up to a fair share, give back any excess."""
        now_ms = int(time.time() * 1000)
        registry = self.keys.workers()
        await self.redis.zadd(registry, {self.id: now_ms})
        await self.redis.zremrangebyscore(registry, "-inf", now_ms - self.settings.lease_ms)
        alive = max(int(await self.redis.zcard(registry)), 1)
        share = math.ceil(self.settings.partitions / alive)
        for p, task in list(self.owned.items()):
            held = await self.scripts.lease(self.keys.lease(p), self.id,
                                            self.settings.lease_ms, "renew")
            if not held or task.done():
                log.info("worker %s, partition %d: %s", self.id, p,
                         "task ended" if held else "lease lost")
                self.owned.pop(p)
                task.cancel()
        for p in range(self.settings.partitions):
            if len(self.owned) >= share:
                break
            if p in self.owned:
                continue
            if await self.scripts.lease(self.keys.lease(p), self.id, self.settings.lease_ms,
                                        "take"):
                log.info("worker %s, partition %d: lease taken", self.id, p)
                self.owned[p] = asyncio.create_task(self._partition_loop(p))
        while len(self.owned) > share:
            p = max(self.owned)
            task = self.owned.pop(p)
            task.cancel()
            # bounded: a cancellation swallowed inside the Redis client must not stall the
            # lease renewals (the loop also ends by itself once p is no longer its own)
            await asyncio.wait([task], timeout=1.0)
            await self.scripts.lease(self.keys.lease(p), self.id, self.settings.lease_ms,
                                     "release")
            log.info("worker %s, partition %d: lease given back (fair share %d)", self.id, p,
                     share)

    async def trim(self) -> None:
        """Trim every partition stream, sweep a step of every item shard (``sweep``); on a
        cluster, also finish the journalled batches of the partitions this worker holds (see
        ``service/store/journal.py``)."""
        for p in range(self.settings.partitions):
            await self.scripts.trim(self.keys.stream(p))
        await self.sweep()
        if self.backend.one_slot_scripts:
            for p in list(self.owned):
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

    # --- the work -------------------------------------------------------------------------
    async def _partition_loop(self, p: int) -> None:
        backlog = True  # first drain what this partition's consumer left pending
        self.prefetched.pop(p, None)  # from an earlier hold of p: the backlog read has them
        self.cut_at.pop(p, None)
        delay = 0.1
        me = asyncio.current_task()
        # ``owned[p] is me``: balance() drops p before cancelling this task, and a cancellation
        # can be lost inside the Redis client's timeout handling (asyncio.timeout turns it into
        # a TimeoutError when both fire together); without this check the loop would go on
        # reading a partition that another worker now holds
        while not self.stopping.is_set() and self.owned.get(p) is me:
            try:
                entries = self.prefetched.pop(p, None) if not backlog else None
                if not entries:
                    entries = await self.read(p, backlog)
                if backlog and not entries:
                    backlog = await self._has_pending(p)
                    continue
                if entries:
                    await asyncio.shield(self.process(p, entries, read_ahead=not backlog))
                    self.redeliveries_explained.pop(p, None)
                    if (attempted := self.attempting.pop(p, None)) is not None:
                        await self.redis.hdel(self.keys.attempts(p), attempted)
                if p in self.cut_at_inflight:
                    self.cut_at_inflight.discard(p)
                    backlog = True
                delay = 0.1
            except Conflict as exc:
                log.info("partition %d: %s; re-reading pending entries", p, exc.args[1])
                self.prefetched.pop(p, None)  # read, so pending: the backlog read has them
                backlog = True
                self.redeliveries_explained[p] = self.redeliveries_explained.get(p, 0) + 1
            except UNAVAILABLE as exc:
                log.warning("partition %d: redis unavailable (%s)", p, exc)
                self.prefetched.pop(p, None)
                backlog = True
                self.redeliveries_explained[p] = self.redeliveries_explained.get(p, 0) + 1
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
                self.prefetched.pop(p, None)
                backlog = True

    async def read(self, p: int, backlog: bool) -> list[Entry]:
        """New entries, or on a backlog read the entries left pending. Pending entries that
        were delivered before are returned one at a time: if one of them crashes the worker,
        it is the only one retried, and after ``max_deliveries`` it is dead-lettered."""
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
                return await self._read_one(p, entry_id, int(first["times_delivered"]))
        if self.raw_reads:
            # the raw reply: redis-py's parser builds a dict per entry through pairs_to_dict,
            # a tenth of the worker's time at full speed
            return _entries_of(await transport.execute(self.redis, self._read_command(p, backlog)))
        reply = await self.redis.xreadgroup(
            GROUP, self.keys.consumer(p), {stream: "0" if backlog else ">"},
            count=self.settings.batch_size, block=None if backlog else self.settings.block_ms)
        if not reply:
            return []
        _, messages = cast(list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes] | None]]]],
                           reply)[0]
        return [Entry(mid.decode(), _flat(fields)) for mid, fields in messages
                if fields is not None]

    @property
    def raw_reads(self) -> bool:
        return self.backend.raw_reads

    def _read_command(self, p: int, backlog: bool, block: bool = True) -> bytes:
        wait: list[bytes | int] = [b"BLOCK", self.settings.block_ms] if block and not backlog \
            else []
        return transport.pack(b"XREADGROUP", [
            b"GROUP", GROUP, self.keys.consumer(p), b"COUNT", self.settings.batch_size, *wait,
            b"STREAMS", self.keys.stream(p), b"0" if backlog else b">"])

    async def _read_one(self, p: int, entry_id: str, delivered: int) -> list[Entry]:
        stream = self.keys.stream(p)
        reply: Any = await self.redis.xreadgroup(GROUP, self.keys.consumer(p),
                                                 {stream: _before(entry_id)}, count=1)
        messages = cast(list[tuple[bytes, dict[bytes, bytes] | None]],
                        reply[0][1] if reply else [])
        fields = messages[0][1] if messages else None
        if fields is None:
            # the entry was trimmed away: acknowledge it so it stops blocking the partition
            await self.redis.xack(stream, GROUP, entry_id)
            return []
        entry = Entry(messages[0][0].decode(), _flat(fields))
        # Counted are attempts to apply the entry alone, recorded before each one: an attempt
        # that never cleared its mark crashed its worker. Deliveries are no measure: a lease
        # handover or a worker killed for any reason redelivers every pending entry. Retries
        # this process caused itself (after an outage or a conflict) are not counted either.
        attempts = int(await self.redis.hincrby(self.keys.attempts(p), entry.id, 1))
        failed = attempts - 1 - self.redeliveries_explained.get(p, 0)
        if failed >= self.settings.max_deliveries:
            log.error("partition %d: entry %s failed %d attempts: dead-lettered", p, entry.id,
                      failed)
            await self._commit_batch(p, [entry], dead_reason=(
                f"attempted {failed} times without being applied"))
            await self.redis.hdel(self.keys.attempts(p), entry.id)
            return []
        self.attempting[p] = entry.id
        return [entry]

    async def _has_pending(self, p: int) -> bool:
        return bool(await self.redis.xpending_range(
            self.keys.stream(p), GROUP, min="-", max="+", count=1,
            consumername=self.keys.consumer(p)))

    async def process(self, p: int, entries: Sequence[Entry], read_ahead: bool = False) -> None:
        """Apply one batch; on a script error, bisect to isolate the entry that causes it.
        ``read_ahead``: read the partition's next new entries behind the commit, in the same
        round trip (they are read whatever the commit's fate, so pending: a failed commit
        sends the loop to the backlog, which reads them again)."""
        try:
            await self._commit_batch(p, entries, dead_reason=None, read_ahead=read_ahead)
        except ResponseError as exc:
            if isinstance(exc, UNAVAILABLE):
                raise  # the cluster is failing over or full: retry later, never dead-letter
            if len(entries) == 1:
                log.error("partition %d: entry %s fails (%s): dead-lettered", p, entries[0].id,
                          exc)
                await self._commit_batch(p, entries, dead_reason=f"apply failed: {exc}")
                return
            half = len(entries) // 2
            await self.process(p, entries[:half])
            await self.process(p, entries[half:])

    async def _commit_batch(self, p: int, entries: Sequence[Entry],
                            dead_reason: str | None, read_ahead: bool = False) -> None:
        k = self.keys
        decoded: list[Event | str] = []
        skew = self.settings.max_clock_skew
        # entries come in stream order: none arrived before the first (a cheap first test)
        earliest = id_tuple(entries[0].id)[0] / 1000 + skew if entries else 0.0
        for entry in entries:
            if dead_reason is not None:
                decoded.append(dead_reason)
                continue
            try:
                read = decode_flat(entry.flat)
            except BadEntry as exc:
                decoded.append(f"unreadable entry: {exc}")
                continue
            if read[2] > earliest:
                read = no_later_than(read, id_tuple(entry.id)[0] / 1000 + skew)
            decoded.append(read)
        homes = {ev.session_id: partition_of(session_hash(ev.session_id),
                                             self.settings.partitions)
                 for ev in decoded if isinstance(ev, Event)}
        for n, ev in enumerate(decoded):
            if isinstance(ev, Event) and (home := homes[ev.session_id]) != p:
                # its session's history lives in another partition's slot: never applicable
                decoded[n] = (f"session {ev.session_id!r} belongs to partition {home}: write "
                              f"it to {k.stream(home)}")
                log.warning("partition %d: entry %s of session %r dead-lettered: the session "
                            "belongs to partition %d (its producer must write it to %s; "
                            "partition_of(session_hash(session_id), partitions))", p,
                            entries[n].id, ev.session_id, home, k.stream(home))
        sessions = sessions_of([ev for ev in decoded if isinstance(ev, Event)])
        claimed = await self._claims(entries, decoded)
        answers = list({c.answer.nonce: None for c in claimed.values()})
        hours = sorted({hour_of(c.answer.issued) for c in claimed.values()})
        # the watermark, the histories, the answers' records and their hours' flood marks
        # share the partition's slot: one round trip
        reply: list[bytes | None] = await self.redis.mget(  # type: ignore[assignment]
            [k.watermark(p), k.inflight(p), k.epoch(p)] + [k.history(s) for s in sessions]
            + [k.answer(p, nonce) for nonce in answers]
            + [k.answers_flooded(p, hour) for hour in hours])
        mark = reply[0].decode() if reply[0] else ""
        epoch = reply[2].decode() if reply[2] else ""
        histories = {s: b for s, b in zip(sessions, reply[3:3 + len(sessions)], strict=True)
                     if b}
        at = 3 + len(sessions)
        records = dict(zip(answers, reply[at:at + len(answers)], strict=True))
        flooded = {hour for hour, mark_ in zip(hours, reply[at + len(answers):], strict=True)
                   if mark_ is not None}
        held = self.cut_at.pop(p, None)
        if reply[1] is not None or held is not None:
            # a batch's effects reached some slots and not the partition (cluster): batches end
            # at its end until the watermark gets there (or, first, at the end of the part of
            # it a slot holds); the rest stays pending for later
            ceilings = [id_tuple(x) for x in (reply[1].decode() if reply[1] else None, held)
                        if x is not None]
            ceiling = min(ceilings)
            kept = [n for n, e in enumerate(entries) if id_tuple(e.id) <= ceiling]
            if len(kept) < len(entries):
                self.cut_at_inflight.add(p)
                entries = [entries[n] for n in kept]
                decoded = [decoded[n] for n in kept]
        fresh = list(zip(entries, decoded, strict=True))
        if mark:  # entries come in stream order: only a prefix can be at or below the mark
            floor = id_tuple(mark)
            start = 0
            while start < len(fresh) and id_tuple(fresh[start][0].id) <= floor:
                start += 1
            fresh = fresh[start:]
        events: list[Event] = []
        arrived: list[str] = []  # each event's entry id: when the server accepted it
        dead: list[tuple[Entry, str]] = []
        for entry, ev in fresh:
            if isinstance(ev, Event):
                events.append(ev)
                arrived.append(entry.id)
            else:
                dead.append((entry, ev))
        found = [claimed[entry.id] for entry, ev in fresh
                 if isinstance(ev, Event) and entry.id in claimed]
        counted = tally(found, records, await self.feedback.ends(
            c.answer.experiment for c in found if c.answer.experiment), flooded) \
            if found else None
        feedback = counted.counts if counted is not None else {}
        learned = [ev for ev in events if ev.type != IMPRESSION]
        impressions = len(events) - len(learned)  # consumed and counted, never learned
        unlisted = 0
        if self.settings.catalog_only and learned:
            listed = await self.listed({ev.item_id for ev in learned})
            unlisted = len(learned) - sum(ev.item_id in listed for ev in learned)
        if impressions or unlisted:
            kept = [n for n, ev in enumerate(events) if ev.type != IMPRESSION
                    and (not unlisted or ev.item_id in listed)]
            events, arrived = [events[n] for n in kept], [arrived[n] for n in kept]
        effects = apply_events(histories, events, self.settings.history_cap,
                               lambda n: arrival_of(arrived[n]))
        new_mark = fresh[-1][0].id if fresh else mark
        first_fresh = fresh[0][0].id if fresh else ""
        commit = self.commits.commit_call(
            p, [e.id for e in entries], [(e.id, reason, e.fields) for e, reason in dead],
            effects.applied + unlisted + impressions, mark, new_mark, first_fresh, epoch)
        if unlisted:  # consumed, not learned: counted apart (GET /stats, events_unlisted)
            feedback["unlisted"] = unlisted
        if feedback:  # with the watermark: a redelivered event counts once
            commit.args += ("D", commit.ref(k.counters(p)), len(feedback))
            for pair in feedback.items():
                commit.args += pair
        if counted is not None:  # what each answer has counted now, with the counts
            for nonce, (offset, flags) in counted.flags.items():
                commit.args += ("R", commit.ref(k.answer(p, nonce)), offset, flags)
        elsewhere: dict[Group, Call] | None = {} if self.backend.one_slot_scripts else None
        self.commits.add_ops(p, effects, commit, elsewhere, new_mark, first_fresh)
        if elsewhere:
            if not await self.scripts.intent(k.stream(p), k.watermark(p), k.inflight(p),
                                             k.epoch(p), mark, new_mark, first_fresh, epoch):
                raise Conflict(p, f"batch {first_fresh}..{new_mark} refused by the in-flight "
                                  f"check (watermark {mark!r}, in flight {reply[1]!r})")
            parts = await self._apply_elsewhere(list(elsewhere.values()))
            if parts:
                # a slot holds a part of this batch (another worker's batch over the same
                # entries ended there): end the next try at that part's end
                self.cut_at[p] = min(parts, key=id_tuple)
                raise Conflict(p, f"batch {first_fresh}..{new_mark}: a slot holds it up to "
                                  f"{self.cut_at[p]}")
        if await self._commit(p, commit.keys, commit.args, read_ahead) == -1:
            raise Conflict(p, f"commit of {first_fresh}..{new_mark} refused: the watermark is "
                              f"no longer {mark!r}, or the batch does not follow it")
        self.commits.named.update(effects.names)
        self.applied += effects.applied
        if fresh:  # the dashboard's events per minute and freshness (arrival to applied)
            now = time.time()
            self.minutes.add(now, "events", len(fresh))
            self.minutes.observe_many(now, "freshness", FRESHNESS_MS,
                                      (now * 1000 - id_tuple(e.id)[0] for e, _ in fresh))

    async def add_minutes(self) -> None:
        """This worker's per-minute tally into Redis (the dashboard's series)."""
        minutes = self.minutes.take()
        try:
            await series.add(self.redis, self.keys, minutes)
        except UNAVAILABLE:
            self.minutes.give_back(minutes)
            raise

    async def _claims(self, entries: Sequence[Entry], decoded: Sequence[Event | str]
                      ) -> dict[str, Claim]:
        """The batch's events that act on an answer with an id signed for their session, by
        entry id (their records are read with the batch's histories)."""
        attributed = [(entry, ev) for entry, ev in zip(entries, decoded, strict=True)
                      if isinstance(ev, Event) and ev.recommendation_id is not None]
        if not attributed:
            return {}
        if time.monotonic() - self._signing_key[0] > SIGNING_KEY_AGE:
            self._signing_key = (time.monotonic(), await self.feedback.signing_key())
        key = self._signing_key[1]
        found: dict[str, Claim] = {}
        for entry, ev in attributed:
            said = claim(key, ev.type, ev.recommendation_id, ev.session_id, ev.item_id,
                         id_tuple(entry.id)[0] / 1000)
            if said is not None:
                found[entry.id] = said
        return found

    async def listed(self, items: set[str]) -> set[str]:
        """The items among ``items`` that have a catalogue record (allow-list mode: a flood of
        invented ids is consumed without growing the learned state)."""
        by_shard: dict[int, list[tuple[str, str]]] = {}
        for item in items:
            shard, hexed = shard_hex(item_hash(item))
            by_shard.setdefault(shard, []).append((item, hexed))
        async with self.redis.pipeline(transaction=False) as pipe:
            for shard, named in by_shard.items():
                pipe.hmget(self.keys.catalog(shard), [hexed for _, hexed in named])
            replies = await pipe.execute()
        return {item for named, found in zip(by_shard.values(), replies, strict=True)
                for (item, _), record in zip(named, found, strict=True) if record is not None}

    async def _commit(self, p: int, keys: list[str], args: list[Any], read_ahead: bool) -> Any:
        """EVALSHA with the arguments packed in one pass (redis-py would encode thousands of
        them one by one); the embedded store, a cluster, and a Redis that lost its script
        cache take the client's ordinary path. With ``read_ahead``, the next XREADGROUP
        rides in the same write: the partition's next batch arrives with the commit's reply,
        instead of a round trip later queued behind the other partitions' commits (a fifth
        of Redis' time went idle waiting for those)."""
        if not self.raw_reads:
            return await self.scripts.commit(keys=keys, args=args)
        if not read_ahead:
            return await transport.run_script(lambda packed: transport.execute(self.redis, packed),
                                         self.scripts.commit, keys, args)

        async def send(packed: bytes) -> Any:
            reply, ahead = await transport.execute_then(self.redis, packed,
                                                   self._read_command(p, False, block=False))
            # kept even when the commit failed (NOSCRIPT, a script error): these entries are
            # delivered now, and the next batches come after whatever retries this one
            if not isinstance(ahead, Exception):  # else the next plain read meets it again
                self.prefetched[p] = _entries_of(ahead)
            if isinstance(reply, Exception):
                raise reply
            return reply
        return await transport.run_script(send, self.scripts.commit, keys, args)

    async def _apply_elsewhere(self, calls: list[Call]) -> list[str]:
        """Each other slot's share of the batch, one apply.lua call per slot, sent as one
        pipeline (a round trip per node, all nodes at once). A crash half-way is repaired by
        the retry: slots that have the batch skip it. Returns where the slots that hold only a
        part of the batch have it up to (none: every slot has it now)."""
        for attempt in range(2):
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for call in calls:
                        pipe.execute_command("EVALSHA", self.scripts.apply.sha, len(call.keys),
                                             *call.keys, *call.args)
                    replies = await pipe.execute()
                return [reply[1].decode() for reply in replies
                        if isinstance(reply, list) and reply and reply[0] == b"overlap"]
            except NoScriptError:
                if attempt:
                    raise
                await self.redis.script_load(self.scripts.apply.script)
        return []


def _entries_of(raw: Any) -> list[Entry]:
    """XREADGROUP's raw reply for one stream as entries (a deleted entry's fields are nil)."""
    if not raw:
        return []
    # RESP3 (redis-py's default here) answers a map stream -> entries, RESP2 a list
    messages = next(iter(raw.values())) if isinstance(raw, dict) else raw[0][1]
    return [Entry(mid.decode(), flat) for mid, flat in messages if flat is not None]
