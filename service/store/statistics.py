"""The figures /stats, /metrics and the dashboard read: events accepted, processed and dead,
items, live sessions, feedback counts."""

from __future__ import annotations

import time

from redis.exceptions import ResponseError

from service.core.layout import (
    ITEM_SHARDS,
)
from service.settings import Settings
from service.store.backends import Backend
from service.store.ingestion import Journal
from service.store.keyspace import Keys
from service.store.part import Part
from service.store.scripts import Scripts


class Statistics(Part):
    def __init__(self, settings: Settings, backend: Backend, scripts: Scripts, keys: Keys,
                 journal: Journal) -> None:
        super().__init__(settings, backend, scripts, keys)
        self.journal = journal

    async def read(self) -> dict[str, int]:
        now_ms = int(time.time() * 1000)
        partitions = range(self.settings.partitions)
        # the journal before the streams: a replay between the two reads then counts its
        # events twice (pending a moment too high), never not at all (pending 0 too early)
        journalled = await self.journal.not_appended() if self.backend.one_slot_scripts \
            else 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for p in partitions:
                pipe.xinfo_stream(self.keys.stream(p))
                pipe.hgetall(self.keys.counters(p))
                pipe.zcount(self.keys.live_registry(p), now_ms - self.settings.live_ttl * 1000,
                            "+inf")
            for shard in range(ITEM_SHARDS):
                pipe.hlen(self.keys.names(shard))
            replies = await pipe.execute(raise_on_error=False)
        # errors come back as replies: a stream not created yet is one (XINFO on no key),
        # anything else (a node that timed out) is the store failing, which the caller
        # answers 503, not a reply to read as figures
        for n, reply in enumerate(replies):
            if isinstance(reply, Exception) and not (
                    n < 3 * self.settings.partitions and n % 3 == 0
                    and isinstance(reply, ResponseError)):
                raise reply
        accepted = processed = dead = live = unlisted = impressions = clicks = 0
        for p in partitions:
            info, counters, sessions = replies[3 * p: 3 * p + 3]
            if isinstance(info, dict):
                accepted += int(info.get("entries-added", 0))
            processed += int(counters.get(b"processed", 0))
            dead += int(counters.get(b"dead", 0))
            unlisted += int(counters.get(b"unlisted", 0))
            impressions += int(counters.get(b"impressions", 0))
            clicks += int(counters.get(b"attributed_clicks", 0))
            live += int(sessions)
        items = sum(int(n) for n in replies[3 * self.settings.partitions:])
        accepted += journalled
        return {"events_accepted": accepted, "events_processed": processed,
                "events_dead": dead, "events_unlisted": unlisted,
                "pending": max(accepted - processed - dead, 0),
                "items": items, "live_sessions": live, "impressions": impressions,
                "attributed_clicks": clicks}
