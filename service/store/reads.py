"""The reads behind every recommendation: histories and indexes (through the read cache),
document frequencies and item names (cached in process), the hidden items and the trending
head, each on the hot path in as few round trips as the backend allows."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from service import kernel
from service.core import scoring
from service.core.layout import (
    ITEM_PERSON,
    ITEM_SHARDS,
    shard_of,
)
from service.failures import UNAVAILABLE
from service.settings import Settings
from service.store.backends import Backend
from service.store.caches import FrequencyCache, NameCache
from service.store.keyspace import Keys
from service.store.mirror import CATALOGUE_MAX_AGE
from service.store.part import Part
from service.store.scripts import Scripts

TRENDING_SNAPSHOT = 4096
TRENDING_SNAPSHOT_AGE = 10.0


@dataclass(frozen=True, slots=True)
class TrendingSnapshot:
    made: float  # time.monotonic() of the read
    members: list[tuple[str, int, float]]  # (item id, its hash, log2 trending score), best first
    score_of: dict[int, float]  # item hash -> log2 trending score


class Reads(Part):
    def __init__(self, settings: Settings, backend: Backend, scripts: Scripts,
                 keys: Keys) -> None:
        super().__init__(settings, backend, scripts, keys)
        self.names = NameCache()
        self.frequencies = FrequencyCache()
        self._hidden: tuple[float, scoring.U64] = (-1.0, np.zeros(0, np.uint64))
        self._hidden_read: asyncio.Future[scoring.U64] | None = None
        self._trending = TrendingSnapshot(-math.inf, [], {})
        self._trending_read: asyncio.Future[TrendingSnapshot] | None = None
        self._history_prefixes = [p.encode() for p in keys.history_prefixes()]
        self._index_prefixes = [p.encode() for p in keys.index_prefixes()]

    async def hidden_items(self, max_age: float = CATALOGUE_MAX_AGE) -> scoring.U64:
        """Hashes of the items never to recommend now (hidden, or unavailable in the
        catalogue), re-read at most every ``max_age`` seconds per process (one read shared by
        the requests that find the copy stale together)."""
        fetched, items = self._hidden
        if time.monotonic() - fetched > max_age:
            if self._hidden_read is None or self._hidden_read.done():
                self._hidden_read = asyncio.ensure_future(self._read_hidden())
            items = await asyncio.shield(self._hidden_read)
        return items

    async def _read_hidden(self) -> scoring.U64:
        started = time.monotonic()  # the copy is as old as the read's start, not its end
        members = await self.read(b"SUNION", [self.keys.hidden(), self.keys.unavailable()])
        items = np.array(sorted(int.from_bytes(bytes.fromhex(m.decode()), "little")
                                for m in members), dtype=np.uint64)
        self._hidden = (started, items)
        return items

    def forget_hidden(self) -> None:
        """This process changed what may not be recommended: read it again at once (others
        do within ``hidden_items``' max age)."""
        self._hidden = (-1.0, self._hidden[1])
        self._hidden_read = None  # one started before this change may miss it

    async def trending_head(self, n: int) -> list[tuple[bytes, float]]:
        """The ``n`` most trending members and their scores, best first."""
        reply = await self.read(b"ZREVRANGE", [self.keys.trend(), 0, n - 1, b"WITHSCORES"])
        return [(m, float(v)) for m, v in zip(reply[::2], reply[1::2], strict=True)]

    async def trending_snapshot(self, max_age: float = TRENDING_SNAPSHOT_AGE
                                ) -> TrendingSnapshot:
        """The ``TRENDING_SNAPSHOT`` most trending items and their scores: what the rules'
        trending fill orders a filter's items by. Re-read in the background once older than
        ``max_age`` seconds (the old one serves meanwhile: a fill's order may lag a few
        seconds, a request never waits for the read); only the first read is waited for."""
        snapshot = self._trending
        if time.monotonic() - snapshot.made > max_age:
            if self._trending_read is None or self._trending_read.done():
                self._trending_read = asyncio.ensure_future(self._read_trending())
            if snapshot.made == -math.inf:
                snapshot = await asyncio.shield(self._trending_read)
        return snapshot

    async def _read_trending(self) -> TrendingSnapshot:
        if self._trending.made != -math.inf:  # a background refresh: failures wait for the
            try:  # next one (the request path reports Redis outages itself)
                return await self._read_trending_now()
            except UNAVAILABLE:
                return self._trending
        return await self._read_trending_now()

    async def _read_trending_now(self) -> TrendingSnapshot:
        head = await self.trending_head(TRENDING_SNAPSHOT)
        names = [member.decode("utf-8", "surrogatepass") for member, _ in head]
        hashes = np.frombuffer(kernel.hashes(names, ITEM_PERSON), "<u8").tolist() \
            if names else []
        members = list(zip(names, hashes, (score for _, score in head), strict=True))
        self._trending = TrendingSnapshot(time.monotonic(), members,
                                          {h: score for _, h, score in members})
        return self._trending

    async def read(self, command: bytes, args: list[bytes | str | int]) -> Any:
        """One command on the hot path (the backend's reply)."""
        return await self.backend.read(command, args)

    async def mget(self, keys: list[str]) -> list[bytes | None]:
        return await self.backend.mget(keys)

    async def histories(self, sessions: scoring.U64) -> list[bytes | None]:
        """The neighbours' histories."""
        return await self.backend.blobs(sessions, self._history_prefixes,
                                        partial(self.keys.histories, sessions), "histories")

    async def indexes(self, items: scoring.U64) -> list[bytes | None]:
        """The neighbour indexes of the session's items."""
        return await self.backend.blobs(items, self._index_prefixes,
                                        partial(self.keys.indexes, items), "indexes")

    async def commands(self, commands: list[tuple[bytes, list[bytes | str]]]) -> list[Any]:
        """Several commands in one round trip."""
        return await self.backend.commands(commands)

    def known_doc_freq(self, items: scoring.U64) -> tuple[bytes, float] | None:
        """``doc_freq`` of ``items`` when the cache holds them all (as float64 bytes), else None
        (then ``doc_freq`` reads the rest): a request's frequencies nearly always are, and
        awaiting a coroutine for them cost more than the lookup."""
        values = self.frequencies.known(items)
        return None if values is None else (values, self.frequencies.sessions or 0.0)

    def frequency_table(self) -> tuple[scoring.U64, scoring.F64, float] | None:
        """The frequency cache's table and sessions' count (``FrequencyCache.table``)."""
        return self.frequencies.table()

    async def doc_freq(self, items: scoring.U64, learned_only: bool = False
                       ) -> tuple[scoring.F64, float]:
        """Sessions containing each item, and sessions in all (cached; misses cost one
        pipelined round trip). ``learned_only``: the items are a client's (a list to rerank),
        so only those some session holds are cached; invented ids would otherwise grow the
        cache without bound until its next clearing."""
        values, wanted = self.frequencies.lookup(items)
        if len(wanted) or self.frequencies.sessions is None:
            shards = wanted % np.uint64(ITEM_SHARDS)
            order = np.concatenate([wanted[shards == shard] for shard in range(ITEM_SHARDS)])
            commands: list[tuple[bytes, list[bytes | str]]] = [
                (b"HGET", [self.keys.meta(), b"sessions"])]
            for shard in range(ITEM_SHARDS):
                fields = [scoring.to_hash(h).hex() for h in wanted[shards == shard]]
                if fields:
                    commands.append((b"HMGET", [self.keys.doc_freq(shard), *fields]))
            replies = await self.commands(commands)
            self.frequencies.sessions = float(replies.pop(0) or 0)
            got = np.array([float(v or 0) for reply in replies for v in reply])
            if learned_only:
                order, got = order[got > 0], got[got > 0]
            self.frequencies.add(order, got)
            values, _ = self.frequencies.lookup(items)
        return values, self.frequencies.sessions or 0.0

    async def item_names(self, hashes: scoring.U64, named: dict[int, str] | None = None
                         ) -> list[str]:
        """The ids behind item hashes: the request's own (``named``), the cache, then Redis."""
        numbers: list[int] = hashes.tolist()
        found = self.names.get_many(numbers)
        if None not in found:
            return found  # type: ignore[return-value]
        if named:
            found = [name if name is not None else named.get(h)
                     for h, name in zip(numbers, found, strict=True)]
        missing = [h for h, name in zip(numbers, found, strict=True) if name is None]
        if not missing:
            return found  # type: ignore[return-value]
        get = self.names.get
        commands: list[tuple[bytes, list[bytes | str]]] = []
        for h in missing:
            raw = scoring.to_hash(h)
            commands.append((b"HGET", [self.keys.names(shard_of(raw)), raw.hex()]))
        for h, name in zip(missing, await self.commands(commands), strict=True):
            if name is not None:
                self.names.put(h, name.decode("utf-8", "surrogatepass"))
        named = named or {}
        return [get(h) or named.get(h) or scoring.to_hash(h).hex() for h in numbers]
