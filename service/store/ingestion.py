"""Events in: a batch appended to its partition streams and its sessions' live interactions,
all or nothing, at most once per idempotency key; on a cluster, a batch spanning partitions
goes through a journal (``Journal``) that the workers finish when an append fails."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from service.core.layout import (
    partition_of,
    session_hash,
)
from service.core.model import TYPE_RATING, Event
from service.core.stream import encode, number, pack_events, unpack_events
from service.failures import UNAVAILABLE, Backlogged
from service.store.part import Part

log = logging.getLogger("sessionrec.store")

JOURNAL_GRACE = 10.0
"""Seconds a journalled batch is left to the API process that wrote it before a worker
replays it."""

JOURNAL_CAP = 10_000
"""Most batches a partition's journal holds. Entries stay only while appends fail; past this
the API answers 503 (retry later) instead of growing Redis."""

@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """A request's Idempotency-Key: ``digest`` names its record (the key hashed with the
    client's API key, so one client cannot block another's), ``record`` is what the first
    request keeps for its retries (its answer and a digest of its body)."""

    digest: str
    record: str


class Replayed(Exception):
    """The request's Idempotency-Key was used before: nothing was appended again."""

    def __init__(self, record: str) -> None:
        super().__init__(record)
        self.record = record


@dataclass(frozen=True, slots=True)
class LiveInteraction:
    item_id: str
    timestamp: float
    rating: float


class Ingestion(Part):
    async def ingest(self, events: Sequence[Event], once: IdempotencyKey | None = None
                     ) -> list[str]:
        """Append events to their partition streams and their sessions' live interactions, all
        or nothing for the batch. Returns the stream ids.

        With ``once`` (a client's Idempotency-Key), the first request with that key records
        ``once.record`` for a day in the same atomic step as its append; a later one appends
        nothing and raises ``Replayed`` with the first record.

        On standalone Redis one script does the whole batch. On a cluster a script reaches one
        slot only: a batch within one partition (what a browser sends) is still one script; a
        batch spanning partitions is first journalled whole in one atomic write (from then on it
        is durable, so it will be accepted), then appended partition by partition under a token
        that makes each append idempotent, and the journal entry is deleted. When an append
        fails, the workers replay the entry (``Journal.replay``) and the answer is still 202.
        """
        if not self.backend.one_slot_scripts:
            return await self.append_live(events, "", once)
        groups: dict[int, list[Event]] = {}
        for ev in events:
            groups.setdefault(self.partition(ev), []).append(ev)
        if len(groups) == 1:
            return await self.append_live(events, "", once)
        token = uuid.uuid4().hex
        first = next(iter(groups))
        journalled = await self.scripts.journal(
            self.keys.journal(first), self._once_key(first, once), token,
            b"%d|%s" % (int(time.time() * 1000), pack_events(list(events))),
            once.record if once else "", JOURNAL_CAP)
        if journalled == b"full":
            raise Backlogged(f"partition {first}'s journal is full: appends keep failing")
        if journalled:
            raise Replayed(journalled.decode())
        journal = self.keys.journal(first)
        replies = await asyncio.gather(*(self.append_live(group, token)
                                         for group in groups.values()), return_exceptions=True)
        failed = [r for r in replies if isinstance(r, BaseException)]
        try:
            if failed:
                raise failed[0]
            await self.redis.hdel(journal, token)
        except UNAVAILABLE as exc:
            log.warning("batch %s journalled but not yet appended everywhere (%r): a worker "
                        "replays it", token, exc)
            return []
        return [i for reply in replies if isinstance(reply, list) for i in reply]

    def partition(self, ev: Event) -> int:
        return partition_of(session_hash(ev.session_id), self.settings.partitions)

    def _once_key(self, p: int, once: IdempotencyKey | None) -> str:
        """The idempotency record's key; the token zset (same slot) stands in when none."""
        return self.keys.idempotency(p, once.digest) if once else self.keys.batch_tokens(p)

    async def append_live(self, events: Sequence[Event], token: str,
                           once: IdempotencyKey | None = None) -> list[str]:
        """One ingest script call (one slot on a cluster unless ``events`` share a partition)."""
        p = self.partition(events[0])
        keys: list[str] = [self.keys.batch_tokens(p), self._once_key(p, once)]
        args: list[Any] = [token, int(time.time() * 1000), self.settings.live_ttl * 1000,
                           self.settings.live_cap, once.record if once else ""]
        for ev in events:
            s = session_hash(ev.session_id)
            p = partition_of(s, self.settings.partitions)
            keys += [self.keys.stream(p), self.keys.live_items(s), self.keys.live_ratings(s),
                     self.keys.live_registry(p)]
            args += [ev.session_id, ev.item_id, number(ev.timestamp), ev.type,
                     "" if ev.rating is None else number(ev.rating),
                     number(TYPE_RATING[ev.type]), s.hex(), ev.recommendation_id or ""]
        ids = await self.backend.run_script(self.scripts.ingest, keys, args)
        if ids and ids[0] == b"replay":
            raise Replayed(ids[1].decode())
        return [i.decode() for i in ids]

    async def append(self, events: Sequence[Event]) -> None:
        """Write events to their partition streams only, in the documented entry format (what
        an external producer does): learned by the workers, not recorded as live sessions.
        Atomic per partition (one script per partition touched)."""
        groups: dict[int, list[dict[str, str]]] = {}
        for ev in events:
            groups.setdefault(self.partition(ev), []).append(encode(ev))
        for p, entries in groups.items():
            await self.scripts.append(self.keys.stream(p), entries)

    async def live_session(self, session_id: str) -> list[LiveInteraction]:
        s = session_hash(session_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrange(self.keys.live_items(s), 0, -1, withscores=True)
            pipe.hgetall(self.keys.live_ratings(s))
            items, ratings = await pipe.execute()
        return [LiveInteraction(item.decode("utf-8", "surrogatepass"), ts,
                                float(ratings.get(item, 1.0)))
                for item, ts in items]


class Journal:
    """The cluster's journal of batches spanning partitions: replayed by the workers when an
    API process died or lost a node between the journal write and the appends."""

    def __init__(self, ingestion: Ingestion) -> None:
        self.ingestion = ingestion
        self.settings = ingestion.settings
        self.redis = ingestion.redis
        self.keys = ingestion.keys

    async def replay(self, p: int, min_age: float | None = None) -> int:
        """Finish the journalled batches of partition ``p`` older than ``min_age`` seconds
        (default ``JOURNAL_GRACE``): an API process died or lost a node between the journal
        write and the appends. Returns how many were replayed; the tokens make a replay of an
        already appended part a no-op."""
        journal = self.keys.journal(p)
        entries = cast(dict[bytes, bytes], await self.redis.hgetall(journal))
        grace = JOURNAL_GRACE if min_age is None else min_age  # read now: tests shorten it
        cutoff = (time.time() - grace) * 1000
        replayed = 0
        for token, value in entries.items():
            stamp, _, payload = value.partition(b"|")
            try:
                if int(stamp) > cutoff:
                    continue
                events = unpack_events(payload)
            except (ValueError, IndexError) as exc:
                # never written so by ingest: set aside, or every worker would fail on it
                log.error("partition %d: journal entry %r is unreadable (%s): dead-lettered",
                          p, token, exc)
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.xadd(self.keys.dead(p), {"id": b"journal:" + token,
                                                  "reason": f"unreadable journal entry: {exc}",
                                                  "fields": value},
                              maxlen=self.settings.dead_letter_cap, approximate=True)
                    pipe.hdel(journal, token)
                    await pipe.execute()
                continue
            groups: dict[int, list[Event]] = {}
            for ev in events:
                groups.setdefault(self.ingestion.partition(ev), []).append(ev)
            for group in groups.values():
                await self.ingestion.append_live(group, token.decode())
            await self.redis.hdel(journal, token)
            replayed += 1
        return replayed

    async def not_appended(self) -> int:
        """Events of journalled batches that have not reached their partition stream yet (the
        journal is empty but for a batch being written, or one a node failure interrupted)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for p in range(self.settings.partitions):
                pipe.hgetall(self.keys.journal(p))
            journals: list[dict[bytes, bytes]] = await pipe.execute()
        parts: list[tuple[int, bytes, int]] = []
        for journal in journals:
            for token, value in journal.items():
                try:
                    events = unpack_events(value.partition(b"|")[2])
                except (ValueError, IndexError):
                    continue  # unreadable: a worker dead-letters it (Journal.replay)
                groups = Counter(self.ingestion.partition(ev) for ev in events)
                parts += [(p, token, n) for p, n in groups.items()]
        if not parts:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for p, token, _ in parts:
                pipe.zscore(self.keys.batch_tokens(p), token)
            appended = await pipe.execute()
        return sum(n for (_, _, n), done in zip(parts, appended, strict=True) if done is None)
