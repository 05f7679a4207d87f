"""Applying one batch of a partition's entries, in four steps:

* **decode**: each entry as an event, or the reason it can never be applied (unreadable, or its
  session belongs to another partition): those are dead-lettered by the commit;
* **fence**: the partition slot's state the batch applies to, read in one round trip (the
  watermark, the in-flight mark, the admin epoch, the sessions' histories, the answers'
  records), and the batch cut to what may commit now: only entries after the watermark take
  effect, and a batch stops at the in-flight mark until the watermark gets there;
* **effects**: what the fresh events change (the feedback they count, the histories, indexes
  and frequencies they move), assembled into script calls (``workers/commit.py``);
* **send**: on a cluster the other slots' shares first (after the intent script fixes the
  batch's end), then the partition's commit, which checks the watermark and the gap again.

A refused fence raises ``Conflict``: the partition's loop reads its backlog again.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, ResponseError

from service.core.feedback import Claim, claim, hour_of, tally
from service.core.layout import item_hash, partition_of, session_hash
from service.core.model import (
    IMPRESSION,
    Effects,
    Event,
    apply_events,
    arrival_of,
    carting_sessions,
    no_later_than,
    sessions_of,
)
from service.core.series import FRESHNESS_MS, MinuteTally
from service.core.stream import BadEntry, decode_flat
from service.failures import UNAVAILABLE
from service.settings import Settings
from service.store import transport
from service.store.backends import Backend
from service.store.feedback import Feedback
from service.store.keyspace import Keys
from service.store.scripts import Scripts
from workers.commit import Call, CommitAssembler, Group, shard_hex
from workers.entries import Conflict, Entry, entries_of, id_tuple, read_command
from workers.partition import Partition

log = logging.getLogger("sessionrec.worker")

SIGNING_KEY_AGE = 5.0
"""Seconds a worker keeps the recommendation ids' signing key before reading it again (it
changes only when Redis lost it, and then the ids signed before count nowhere anyway)."""

Decoded = Event | str
"""An entry decoded: its event, or why it can never be applied (its dead letter's reason)."""


@dataclass(slots=True)
class Fenced:
    """A batch past its fence, and the partition slot's state it applies to."""

    entries: Sequence[Entry]
    """The batch as it is acknowledged: cut at the in-flight mark, if one is set."""
    fresh: list[tuple[Entry, Decoded]]
    """Its entries after the watermark: the only ones that take effect."""
    mark: str
    epoch: str
    inflight: bytes | None
    histories: dict[bytes, bytes]
    records: dict[bytes, bytes | None]
    flooded: set[int]
    carts: dict[bytes, bytes]
    """The stored carts of the sessions with cart events in the batch."""


@dataclass(slots=True)
class Prepared:
    """A fenced batch's script calls: the partition's commit, and on a cluster one call per
    other slot its effects land in."""

    fenced: Fenced
    effects: Effects
    commit: Call
    elsewhere: dict[Group, Call] | None
    new_mark: str
    first_fresh: str


class Batches:
    """Applies batches of the partitions this worker holds; shared by their loops."""

    def __init__(self, settings: Settings, client: aioredis.Redis, keys: Keys, scripts: Scripts,
                 backend: Backend, feedback: Feedback) -> None:
        self.settings = settings
        self.redis = client
        self.keys = keys
        self.scripts = scripts
        self.backend = backend
        self.feedback = feedback
        self.commits = CommitAssembler(keys, settings)
        self.minutes = MinuteTally()
        """The dashboard's events per minute and freshness, until the next flush."""
        self.applied = 0
        self._signing_key: tuple[float, bytes] = (-math.inf, b"")

    async def process(self, part: Partition, entries: Sequence[Entry],
                      read_ahead: bool = False) -> None:
        """Apply one batch; on a script error, bisect to isolate the entry that causes it.
        ``read_ahead``: read the partition's next new entries behind the commit, in the same
        round trip (they are read whatever the commit's fate, so pending: a failed commit
        sends the loop to the backlog, which reads them again)."""
        try:
            await self.commit(part, entries, dead_reason=None, read_ahead=read_ahead)
        except ResponseError as exc:
            if isinstance(exc, UNAVAILABLE):
                raise  # the cluster is failing over or full: retry later, never dead-letter
            if len(entries) == 1:
                log.error("partition %d: entry %s fails (%s): dead-lettered", part.p,
                          entries[0].id, exc)
                await self.commit(part, entries, dead_reason=f"apply failed: {exc}")
                return
            half = len(entries) // 2
            await self.process(part, entries[:half])
            await self.process(part, entries[half:])

    async def commit(self, part: Partition, entries: Sequence[Entry], dead_reason: str | None,
                     read_ahead: bool = False) -> None:
        """One batch through the four steps; with ``dead_reason``, every entry is
        dead-lettered with it instead of decoded."""
        decoded = self.decode(part.p, entries, dead_reason)
        claimed = await self._claims(entries, decoded)
        fenced = await self.fence(part, entries, decoded, claimed)
        prepared = await self.effects(part.p, fenced, claimed)
        await self.send(part, prepared, read_ahead)

    # --- step 1: decode ---------------------------------------------------------------------
    def decode(self, p: int, entries: Sequence[Entry], dead_reason: str | None
               ) -> list[Decoded]:
        decoded: list[Decoded] = []
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
        k = self.keys
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
        return decoded

    async def _claims(self, entries: Sequence[Entry], decoded: Sequence[Decoded]
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

    # --- step 2: fence ----------------------------------------------------------------------
    async def fence(self, part: Partition, entries: Sequence[Entry],
                    decoded: Sequence[Decoded], claimed: dict[str, Claim]) -> Fenced:
        k, p = self.keys, part.p
        events = [ev for ev in decoded if isinstance(ev, Event)]
        sessions = sessions_of(events)
        carting = carting_sessions(events)
        answers = list({c.answer.nonce: None for c in claimed.values()})
        hours = sorted({hour_of(c.answer.issued) for c in claimed.values()})
        # the watermark, the histories, the answers' records, their hours' flood marks and the
        # carts share the partition's slot: one round trip
        reply: list[bytes | None] = await self.redis.mget(  # type: ignore[assignment]
            [k.watermark(p), k.inflight(p), k.epoch(p)] + [k.history(s) for s in sessions]
            + [k.answer(p, nonce) for nonce in answers]
            + [k.answers_flooded(p, hour) for hour in hours] + [k.cart(s) for s in carting])
        mark = reply[0].decode() if reply[0] else ""
        epoch = reply[2].decode() if reply[2] else ""
        histories = {s: b for s, b in zip(sessions, reply[3:3 + len(sessions)], strict=True)
                     if b}
        at = 3 + len(sessions)
        records = dict(zip(answers, reply[at:at + len(answers)], strict=True))
        at += len(answers)
        flooded = {hour for hour, mark_ in zip(hours, reply[at:at + len(hours)], strict=True)
                   if mark_ is not None}
        carts = {s: b for s, b in zip(carting, reply[at + len(hours):], strict=True) if b}
        held, part.cut_at = part.cut_at, None
        if reply[1] is not None or held is not None:
            # a batch's effects reached some slots and not the partition (cluster): batches end
            # at its end until the watermark gets there (or, first, at the end of the part of
            # it a slot holds); the rest stays pending for later
            ceilings = [id_tuple(x) for x in (reply[1].decode() if reply[1] else None, held)
                        if x is not None]
            ceiling = min(ceilings)
            kept = [n for n, e in enumerate(entries) if id_tuple(e.id) <= ceiling]
            if len(kept) < len(entries):
                part.cut_at_inflight = True
                entries = [entries[n] for n in kept]
                decoded = [decoded[n] for n in kept]
        fresh = list(zip(entries, decoded, strict=True))
        if mark:  # entries come in stream order: only a prefix can be at or below the mark
            floor = id_tuple(mark)
            start = 0
            while start < len(fresh) and id_tuple(fresh[start][0].id) <= floor:
                start += 1
            fresh = fresh[start:]
        return Fenced(entries, fresh, mark, epoch, reply[1], histories, records, flooded,
                      carts)

    # --- step 3: effects --------------------------------------------------------------------
    async def effects(self, p: int, fenced: Fenced, claimed: dict[str, Claim]) -> Prepared:
        k, fresh, mark = self.keys, fenced.fresh, fenced.mark
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
        counted = tally(found, fenced.records, await self.feedback.ends(
            c.answer.experiment for c in found if c.answer.experiment), fenced.flooded) \
            if found else None
        feedback = counted.counts if counted is not None else {}
        learned = [ev for ev in events if ev.type != IMPRESSION]
        impressions = len(events) - len(learned)  # consumed and counted, never learned
        unlisted = 0
        listed: set[str] = set()
        if self.settings.catalog_only and learned:
            listed = await self.listed({ev.item_id for ev in learned})
            unlisted = len(learned) - sum(ev.item_id in listed for ev in learned)
        if impressions or unlisted:
            kept = [n for n, ev in enumerate(events) if ev.type != IMPRESSION
                    and (not unlisted or ev.item_id in listed)]
            events, arrived = [events[n] for n in kept], [arrived[n] for n in kept]
        effects = apply_events(fenced.histories, events, self.settings.history_cap,
                               lambda n: arrival_of(arrived[n]), fenced.carts)
        new_mark = fresh[-1][0].id if fresh else mark
        first_fresh = fresh[0][0].id if fresh else ""
        commit = self.commits.commit_call(
            p, [e.id for e in fenced.entries], [(e.id, reason, e.fields) for e, reason in dead],
            effects.applied + unlisted + impressions, mark, new_mark, first_fresh, fenced.epoch)
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
        return Prepared(fenced, effects, commit, elsewhere, new_mark, first_fresh)

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

    # --- step 4: send -----------------------------------------------------------------------
    async def send(self, part: Partition, prepared: Prepared, read_ahead: bool) -> None:
        k, p, fenced = self.keys, part.p, prepared.fenced
        mark, new_mark, first_fresh = fenced.mark, prepared.new_mark, prepared.first_fresh
        if prepared.elsewhere:
            if not await self.scripts.intent(k.stream(p), k.watermark(p), k.inflight(p),
                                             k.epoch(p), mark, new_mark, first_fresh,
                                             fenced.epoch):
                raise Conflict(p, f"batch {first_fresh}..{new_mark} refused by the in-flight "
                                  f"check (watermark {mark!r}, in flight {fenced.inflight!r})")
            parts = await self._apply_elsewhere(list(prepared.elsewhere.values()))
            if parts:
                # a slot holds a part of this batch (another worker's batch over the same
                # entries ended there): end the next try at that part's end
                part.cut_at = min(parts, key=id_tuple)
                raise Conflict(p, f"batch {first_fresh}..{new_mark}: a slot holds it up to "
                                  f"{part.cut_at}")
        commit = prepared.commit
        if await self.send_commit(part, commit.keys, commit.args, read_ahead) == -1:
            raise Conflict(p, f"commit of {first_fresh}..{new_mark} refused: the watermark is "
                              f"no longer {mark!r}, or the batch does not follow it")
        self.commits.named.update(prepared.effects.names)
        self.applied += prepared.effects.applied
        if fenced.fresh:  # the dashboard's events per minute and freshness (arrival to applied)
            now = time.time()
            self.minutes.add(now, "events", len(fenced.fresh))
            self.minutes.observe_many(now, "freshness", FRESHNESS_MS,
                                      (now * 1000 - id_tuple(e.id)[0] for e, _ in fenced.fresh))

    async def send_commit(self, part: Partition, keys: list[str], args: list[Any],
                          read_ahead: bool) -> Any:
        """EVALSHA with the arguments packed in one pass (redis-py would encode thousands of
        them one by one); the embedded store, a cluster, and a Redis that lost its script
        cache take the client's ordinary path. With ``read_ahead``, the next XREADGROUP
        rides in the same write: the partition's next batch arrives with the commit's reply,
        instead of a round trip later, queued behind the other partitions' commits while
        Redis waits idle for it."""
        if not self.backend.raw_reads:
            return await self.scripts.commit(keys=keys, args=args)
        if not read_ahead:
            return await transport.run_script(lambda packed: transport.execute(self.redis, packed),
                                              self.scripts.commit, keys, args)
        behind = read_command(self.keys, self.settings, part.p, False, block=False)

        async def send(packed: bytes) -> Any:
            reply, ahead = await transport.execute_then(self.redis, packed, behind)
            # kept even when the commit failed (NOSCRIPT, a script error): these entries are
            # delivered now, and the next batches come after whatever retries this one
            if not isinstance(ahead, Exception):  # else the next plain read meets it again
                part.prefetched = entries_of(ahead)
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
