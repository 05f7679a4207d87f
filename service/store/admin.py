"""The operator's rewrites of learned state: hiding an item, forgetting one, resetting a
visitor's session; each bumps its partition's admin epoch, so a worker batch that read the
state before cannot write it back."""

from __future__ import annotations

from service.core.layout import (
    index_sessions,
    item_hash,
    partition_of,
    session_hash,
    shard_of,
)
from service.settings import Settings
from service.store.backends import Backend
from service.store.keyspace import Keys
from service.store.part import Part
from service.store.reads import Reads
from service.store.scripts import Scripts


class Admin(Part):
    def __init__(self, settings: Settings, backend: Backend, scripts: Scripts, keys: Keys,
                 reads: Reads) -> None:
        super().__init__(settings, backend, scripts, keys)
        self.reads = reads

    async def hide(self, item_id: str, hidden: bool) -> None:
        key, member = self.keys.hidden(), item_hash(item_id).hex()
        await (self.redis.sadd(key, member) if hidden else self.redis.srem(key, member))
        self.reads.forget_hidden()

    async def forget_item(self, item_id: str) -> int:
        """Delete an item's learned state: its neighbour and cart indexes, frequency and
        trending score, and its entries in the histories and carts of the sessions those
        indexes list. Returns how many histories (carts not counted) were scrubbed. (Histories
        older than the index reaches expire on their own; hide the item too if it must never
        come back.) Each partition's histories are scrubbed
        in one step with its admin epoch bumped, so a worker batch that read them before
        cannot write the item back."""
        h = item_hash(item_id)
        index_key, cart_index_key = self.keys.index(h), self.keys.cart_index(h)
        blob: bytes = await self.redis.get(index_key) or b""  # type: ignore[assignment]
        carted: bytes = await self.redis.get(cart_index_key) or b""  # type: ignore[assignment]
        by_partition: dict[int, list[str]] = {}
        for session in index_sessions(blob):
            by_partition.setdefault(partition_of(session, self.settings.partitions),
                                    []).append(self.keys.history(session))
        carts: dict[int, list[str]] = {}
        for session in dict.fromkeys(index_sessions(carted)):  # carts: the same entries
            carts.setdefault(partition_of(session, self.settings.partitions),
                             []).append(self.keys.cart(session))
        scrubbed = 0
        for p, keys in by_partition.items():
            scrubbed += await self.scripts.scrub(self.keys.epoch(p), keys, h)
        for p, keys in carts.items():  # not counted: the answer says histories
            await self.scripts.scrub(self.keys.epoch(p), keys, h)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.delete(index_key, cart_index_key)
            pipe.hdel(self.keys.doc_freq(shard_of(h)), h.hex())
            pipe.zrem(self.keys.trend(), item_id)
            await pipe.execute()
        return scrubbed

    async def reset_session(self, session_id: str) -> None:
        """Forget a visitor's session: live interactions, learned history, cart and arrival
        (with the partition's admin epoch bumped in the same transaction, so a worker batch
        that read the history before cannot write it back)."""
        s = session_hash(session_id)
        p = partition_of(s, self.settings.partitions)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(self.keys.epoch(p))
            pipe.delete(self.keys.live_items(s), self.keys.live_ratings(s), self.keys.history(s),
                        self.keys.cart(s))
            pipe.zrem(self.keys.live_registry(p), s.hex())
            pipe.zrem(self.keys.arrivals(p), s)
            await pipe.execute()
