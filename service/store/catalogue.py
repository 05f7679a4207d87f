"""The catalogue's records in Redis (one hash field per item in its shard's hash, a change log
that serve processes follow) and this process' copy of them, for rules."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from service.core.catalog import Record
from service.core.catalog import decode as decode_record
from service.core.catalog import encode as encode_record
from service.core.catalogueindex import CatalogueIndex
from service.core.layout import (
    item_hash,
    shard_of,
)
from service.settings import Settings
from service.store.backends import Backend
from service.store.keyspace import Keys
from service.store.mirror import CHANGE_LOG_CAP, CatalogueMirror
from service.store.part import Part
from service.store.reads import Reads
from service.store.scripts import Scripts


class Catalogue(Part):
    def __init__(self, settings: Settings, backend: Backend, scripts: Scripts, keys: Keys,
                 reads: Reads) -> None:
        super().__init__(settings, backend, scripts, keys)
        self.reads = reads
        self.mirror = CatalogueMirror(self.redis, keys)

    async def put(self, records: Sequence[Record], now: float | None = None) -> None:
        """Store records, each replacing the item's earlier one: one hash field per item in its
        shard's catalogue hash (one write per shard touched, all shards in one round trip).
        An item's first-seen time (``Keys.catalog_seen``) is set to ``now`` (this process'
        clock; offline tools replaying a log pass theirs) unless it has one: a replaced
        record keeps it."""
        stamp = repr(time.time() if now is None else float(now))
        by_shard: dict[int, dict[str, bytes]] = {}
        availability: dict[str, bool] = {}  # the last record of an item wins, as in the hash
        for record in records:
            h = item_hash(record.item_id)
            by_shard.setdefault(shard_of(h), {})[h.hex()] = encode_record(record)
            availability[h.hex()] = record.available
        gone = [h for h, available in availability.items() if not available]
        back = [h for h, available in availability.items() if available]
        async with self.redis.pipeline(transaction=False) as pipe:
            for shard, fields in by_shard.items():
                seen = self.keys.catalog_seen(shard)  # first: a record never lacks its time
                for hexed in fields:
                    pipe.hsetnx(seen, hexed, stamp)
                pipe.hset(self.keys.catalog(shard), mapping=fields)  # type: ignore[arg-type]
            if gone:
                pipe.sadd(self.keys.unavailable(), *gone)
            if back:
                pipe.srem(self.keys.unavailable(), *back)
            await pipe.execute()
        await self._changed([item_hash(r.item_id) for r in records])
        if gone or back:
            self.reads.forget_hidden()

    async def get(self, item_id: str) -> Record | None:
        h = item_hash(item_id)
        raw: bytes | None = await self.redis.hget(  # type: ignore[assignment]
            self.keys.catalog(shard_of(h)), h.hex())
        return decode_record(raw) if raw is not None else None

    async def first_seen(self, item_id: str) -> float | None:
        """When the item's record first appeared (None: it has no record, or one stored before
        first-seen times were kept)."""
        h = item_hash(item_id)
        raw: bytes | None = await self.redis.hget(  # type: ignore[assignment]
            self.keys.catalog_seen(shard_of(h)), h.hex())
        seen = float(raw) if raw is not None else math.nan
        return seen if math.isfinite(seen) else None

    async def delete(self, item_id: str) -> bool:
        """Remove an item's record (its learned state stays); False if it had none."""
        h = item_hash(item_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hdel(self.keys.catalog(shard_of(h)), h.hex())
            pipe.hdel(self.keys.catalog_seen(shard_of(h)), h.hex())  # gone with the record
            pipe.srem(self.keys.unavailable(), h.hex())  # no record: available again
            deleted, _, _ = await pipe.execute()
        if deleted:
            await self._changed([h])
        self.reads.forget_hidden()
        return bool(deleted)

    async def _changed(self, items: Sequence[bytes]) -> None:
        await self.scripts.catalog(self.keys.catalog_version(), self.keys.catalog_changes(),
                                   CHANGE_LOG_CAP, sorted(set(items)))
        self.mirror.expire()

    async def index(self) -> CatalogueIndex:
        """This process' copy of the catalogue, for rules (no older than a second)."""
        return await self.mirror.current()
