"""A serve process' copy of the catalogue, for the rules of a request (``core/rules.py``).

The copy is read whole the first time a request carries a rule, then follows the change log
(``Keys.catalog_changes``): at most once per ``max_age`` seconds it reads the version counter,
and when that moved, the log's new entries and the records of the items they name. Any gap (a
log trimmed past this copy, a Redis that came back empty, a version that went backwards) sends
it back to reading the catalogue whole. A process that never sees a rule never reads it.
"""

from __future__ import annotations

import asyncio
import gc
import math
import time
from typing import Any, cast

import redis.asyncio as aioredis

from service.core.catalog import decode as decode_record
from service.core.catalogueindex import CatalogueIndex
from service.core.layout import HASH_BYTES, ITEM_SHARDS, shard_of
from service.store.keyspace import Keys

CHANGE_LOG_CAP = 10_000
"""Entries the change log keeps (each one write: one record, or one batch of records). A copy
further behind than this reads the catalogue whole."""

CATALOGUE_MAX_AGE = 0.5
"""Seconds a serve process' copy of the catalogue (and of the hidden set) may be old. The
contract promises a change reaches every answer within a second; half of that leaves the other
half to the request that was already running and to a loaded machine."""

READ_LOG_COUNT = 1000
APPLY_AT_ONCE = 250
"""Records read and applied between two turns of the event loop (each costs some
microseconds to decode and index: a few milliseconds at most held)."""
HEX = 2 * HASH_BYTES  # an item hash in the log


class CatalogueMirror:
    def __init__(self, client: aioredis.Redis, keys: Keys,
                 max_age: float = CATALOGUE_MAX_AGE) -> None:
        self.client = client
        self.keys = keys
        self.max_age = max_age
        self.index = CatalogueIndex()
        self.version: int | None = None  # None: never read
        self.last_entry = b"0-0"
        self._checked = -1.0
        self._sync: asyncio.Future[CatalogueIndex] | None = None
        self.full_reads = 0

    async def current(self) -> CatalogueIndex:
        """The copy, no older than ``max_age`` seconds (one sync shared by the requests that
        find it stale together)."""
        if time.monotonic() - self._checked <= self.max_age:
            return self.index
        if self._sync is None or self._sync.done():
            self._sync = asyncio.ensure_future(self._refresh())
        return await asyncio.shield(self._sync)

    def expire(self) -> None:
        """Sync on the next use (this process just wrote the catalogue)."""
        self._checked = -1.0

    async def _refresh(self) -> CatalogueIndex:
        started = time.monotonic()
        version = int(await self.client.get(self.keys.catalog_version()) or 0)
        behind = self.version is not None and version > self.version
        if self.version is None or version < self.version \
                or (behind and not await self._follow(version)):
            await self._read_whole()
        self._checked = started
        return self.index

    async def _follow(self, version: int) -> bool:
        """Apply the log's entries up to ``version``; False on a gap."""
        assert self.version is not None
        while self.version < version:
            entries = cast(list[Any], await self.client.xrange(
                self.keys.catalog_changes(), b"(" + self.last_entry, b"+",
                count=READ_LOG_COUNT))
            if not entries or int(entries[0][1][b"v"]) != self.version + 1:
                return False
            changed: set[bytes] = set()
            for _, fields in entries:
                hexes = fields[b"items"].decode()
                changed.update(bytes.fromhex(hexes[n:n + HEX]) for n in range(0, len(hexes), HEX))
            await self._read_records(sorted(changed))
            self.last_entry = entries[-1][0]
            self.version = int(entries[-1][1][b"v"])
        return True

    async def _read_records(self, items: list[bytes]) -> None:
        """The records of ``items``, read and applied ``APPLY_AT_ONCE`` at a time: a change
        of many records (an import) applied in one go held the event loop for a second."""
        for start in range(0, len(items), APPLY_AT_ONCE):
            await self._read_some(items[start:start + APPLY_AT_ONCE])

    async def _read_some(self, items: list[bytes]) -> None:
        by_shard: dict[int, list[bytes]] = {}
        for h in items:
            by_shard.setdefault(shard_of(h), []).append(h)
        async with self.client.pipeline(transaction=False) as pipe:
            for shard, hashes in by_shard.items():
                fields = [h.hex() for h in hashes]
                pipe.hmget(self.keys.catalog(shard), fields)
                pipe.hmget(self.keys.catalog_seen(shard), fields)
            replies: list[Any] = await pipe.execute()
        for n, hashes in enumerate(by_shard.values()):
            values, seen = replies[2 * n], replies[2 * n + 1]
            for h, raw, first in zip(hashes, values, seen, strict=True):
                self.index.put(int.from_bytes(h, "little"),
                               decode_record(raw) if raw is not None else None,
                               _seconds(first))

    async def _read_whole(self) -> None:
        """Every record. The log's last entry is read first: changes made during the read
        come after it, so the next sync applies them again (a put replaces: harmless)."""
        last = cast(list[Any], await self.client.xrevrange(self.keys.catalog_changes(), b"+",
                                                           b"-", count=1))
        index = CatalogueIndex()
        for shard in range(ITEM_SHARDS):
            # the shard's first-seen times before its records: a record written between the
            # two reads has no time here (never new) until the next sync applies it again
            seen = {field: _seconds(raw) async for field, raw in self.client.hscan_iter(
                self.keys.catalog_seen(shard), count=APPLY_AT_ONCE)}
            async for field, raw in self.client.hscan_iter(self.keys.catalog(shard),
                                                           count=APPLY_AT_ONCE):
                index.put(int.from_bytes(bytes.fromhex(field.decode()), "little"),
                          decode_record(raw), seen.get(field, math.nan))
        # the price and arrival orders, in a thread while the index is this read's alone
        # (numpy's sort leaves the interpreter free: requests go on with the previous copy)
        await asyncio.to_thread(index.sort_prices)
        await asyncio.to_thread(index.sort_arrivals)
        self.index = index
        # out of the collector's sight, as everything loaded at a start (runtime.tune_gc): a
        # copy of a million records is millions of containers, and each full collection
        # walked them all, holding the event loop for hundreds of milliseconds. They hold no
        # cycles, so references free them when a later whole read replaces this copy.
        gc.freeze()
        self.version = int(last[0][1][b"v"]) if last else 0
        self.last_entry = last[0][0] if last else b"0-0"
        self.full_reads += 1


def _seconds(raw: bytes | None) -> float:
    """A first-seen time as stored (NaN: none)."""
    try:
        return float(raw) if raw is not None else math.nan
    except ValueError:
        return math.nan
