"""Appending accepted events, and the cluster journal that finishes appends left half-done.

On a cluster a script reaches one slot only, so a batch spanning partitions is first written
whole into its first partition's journal (``Store.ingest``), then appended partition by
partition under a token that makes each append idempotent. An API process that dies or loses a
node between the two leaves the journal entry behind; a worker replays it (``replay``). Both
sides append through ``Journal.append``, so a replay is the same call the API made.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, cast

from service.core.layout import partition_of, session_hash
from service.core.model import TYPE_RATING, Event
from service.core.stream import number, unpack_events
from service.settings import Settings
from service.store.backends import Backend
from service.store.keyspace import Keys
from service.store.scripts import Scripts

log = logging.getLogger("sessionrec.store")

JOURNAL_GRACE = 10.0
"""Seconds a journalled batch is left to the API process that wrote it before a worker
replays it."""


class Journal:
    """The ingest script's call, and the replay of the journalled batches it did not finish.
    Needs no read cache or catalogue: a worker builds one on its own client."""

    def __init__(self, settings: Settings, backend: Backend, keys: Keys,
                 scripts: Scripts) -> None:
        self.settings = settings
        self.backend = backend
        self.redis = backend.client
        self.keys = keys
        self.scripts = scripts

    def partition(self, ev: Event) -> int:
        return partition_of(session_hash(ev.session_id), self.settings.partitions)

    async def append(self, events: Sequence[Event], token: str, once_key: str | None = None,
                     record: str = "") -> list[bytes]:
        """One ingest script call (one slot on a cluster unless ``events`` share a partition):
        the stream ids, or ``[b"replay", first record]`` when ``once_key`` holds one."""
        p = self.partition(events[0])
        keys: list[str] = [self.keys.batch_tokens(p), once_key or self.keys.batch_tokens(p)]
        args: list[Any] = [token, int(time.time() * 1000), self.settings.live_ttl * 1000,
                           self.settings.live_cap, record]
        for ev in events:
            s = session_hash(ev.session_id)
            p = partition_of(s, self.settings.partitions)
            keys += [self.keys.stream(p), self.keys.live_items(s), self.keys.live_ratings(s),
                     self.keys.live_registry(p)]
            args += [ev.session_id, ev.item_id, number(ev.timestamp), ev.type,
                     "" if ev.rating is None else number(ev.rating),
                     number(TYPE_RATING[ev.type]), s.hex(), ev.recommendation_id or ""]
        return cast(list[bytes], await self.backend.run_script(self.scripts.ingest, keys, args))

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
                groups.setdefault(self.partition(ev), []).append(ev)
            for group in groups.values():
                await self.append(group, token.decode())
            await self.redis.hdel(journal, token)
            replayed += 1
        return replayed
