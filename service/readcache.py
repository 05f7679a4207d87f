"""The hot path's in-process copy of learned histories and neighbour indexes, kept coherent with
Redis by server-assisted client-side caching (``CLIENT TRACKING``).

Why: a request reads up to twenty index blobs (8 KB each at the cap) and two hundred
histories. Serving those from Redis cost Redis about 80 us of CPU per request, on the same two
cores as the API processes: it was what kept a second API process from scaling. Most of those
keys change rarely (closed sessions never; a long-tail item's index seldom), so each process
keeps what it read, and Redis tells it which keys changed.

How it stays exact: the reads that fill the cache go over their own connection, in RESP3, with
tracking on. Redis then remembers every key that connection read and, when one is written,
expired, evicted or flushed, pushes an ``invalidate`` message on it; the entry is dropped, and
the next request reads the new value. A reply and an invalidation can cross (a key written
after Redis answered, before the caller stored the answer): while a key's read is in flight it
is *pending*, an invalidation marks it *dirty*, and a dirty answer is used once but not kept.
A lost connection loses the tracking, so the whole cache is dropped with it (``reset``); answers
in flight at that moment are not kept either. A connection can also die unnoticed (a network
partition, no reply pending): so when the connection has not been heard from for ``LIVENESS``
seconds, a read first sends a PING on it. Redis answers it after every invalidation it pushed
before, so once the PONG is in, the cache holds nothing older than the PING; if it never comes,
the link's timeout drops the connection, and the cache with it.

A key that does not exist is tracked too, so its absence is cached as ``b""`` (what scoring
reads an absent blob as). The cache holds at most ``capacity`` bytes; past that the oldest
entries go (first in, first out: Redis keeps tracking them, so one stray invalidation later is
ignored).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from service import _kernel, resp, scoring

LIVENESS = 1.0
"""Seconds a read trusts the tracking connection without hearing from it."""

PING = resp.pack(b"PING", [])

ENTRY_OVERHEAD = 120
"""Bytes one entry costs the process beyond its value: a dict slot, an int key, a bytes
header (measured with tracemalloc, rounded up)."""

HEX_DIGITS = 16  # a key ends with its 8-byte hash in hex (``service.keyspace``)


class Table:
    """One kind of cached blob (histories or indexes), by hash as a little-endian integer."""

    __slots__ = ("dirty", "pending", "prefixes", "values")

    def __init__(self, prefixes: Sequence[str]) -> None:
        self.prefixes = [p.encode() for p in prefixes]
        self.values: dict[int, bytes] = {}
        self.pending: dict[int, int] = {}
        self.dirty: set[int] = set()


class ReadCache:
    def __init__(self, history_prefixes: Sequence[str], index_prefixes: Sequence[str],
                 capacity: int) -> None:
        self.histories = Table(history_prefixes)
        self.indexes = Table(index_prefixes)
        self.capacity = capacity
        self.size = 0
        self.generation = 0
        """Bumped by ``reset``: an answer read before a reset is not kept after it."""
        self.hits = self.misses = self.invalidations = self.resets = 0
        self.heard = -LIVENESS
        """``time.monotonic()`` when a PING last went out that Redis answered."""
        self._ping: asyncio.Future[None] | None = None
        self._by_prefix = {p: t for t in (self.histories, self.indexes) for p in t.prefixes}

    async def read(self, table: Table, hashes: scoring.U64,
                   send: Callable[[bytes], Awaitable[Any]]) -> list[bytes]:
        """The blobs of ``hashes`` (``b""`` for none), from the cache where it has them; the
        rest in one MGET through ``send``, which must go over the tracking connection."""
        if time.monotonic() - self.heard > LIVENESS:
            await self._alive(send)
        numbers: list[int] = hashes.tolist()
        values = table.values
        found: list[bytes | None] = list(map(values.get, numbers))
        if None not in found:
            self.hits += len(numbers)
            return found  # type: ignore[return-value]
        wanted = [n for n, value in enumerate(found) if value is None]
        self.hits += len(numbers) - len(wanted)
        self.misses += len(wanted)
        pending = table.pending
        for n in wanted:
            h = numbers[n]
            pending[h] = pending.get(h, 0) + 1
        generation = self.generation
        reply: list[bytes | None] | None = None
        try:
            reply = await send(_kernel.mget(hashes[wanted], table.prefixes))
        finally:
            dirty = table.dirty
            keep = reply is not None and generation == self.generation
            for m, n in enumerate(wanted):
                h = numbers[n]
                if reply is not None:
                    found[n] = reply[m] or b""
                if keep and h not in dirty:
                    self._put(values, h, found[n])  # type: ignore[arg-type]
                left = pending.get(h, 1) - 1
                if left > 0:
                    pending[h] = left
                else:
                    pending.pop(h, None)
                    dirty.discard(h)
        return found  # type: ignore[return-value]

    async def _alive(self, send: Callable[[bytes], Awaitable[Any]]) -> None:
        """One PING for every read that finds the connection unheard from (shared)."""
        if self._ping is None:
            self._ping = asyncio.ensure_future(self._ping_once(send))
        await asyncio.shield(self._ping)

    async def _ping_once(self, send: Callable[[bytes], Awaitable[Any]]) -> None:
        sent = time.monotonic()
        try:
            await send(PING)
            self.heard = sent
        finally:
            self._ping = None

    def _put(self, values: dict[int, bytes], h: int, blob: bytes) -> None:
        old = values.get(h)
        if old is not None:
            self.size -= len(old) + ENTRY_OVERHEAD
        values[h] = blob
        self.size += len(blob) + ENTRY_OVERHEAD
        if self.size > self.capacity:
            self._evict(self.capacity * 9 // 10)

    def _evict(self, target: int) -> None:
        """Drop the oldest entries, the larger table first, until ``size`` <= ``target``."""
        while self.size > target:
            values = max(self.histories.values, self.indexes.values, key=len)
            if not values:
                break
            blob = values.pop(next(iter(values)))
            self.size -= len(blob) + ENTRY_OVERHEAD

    def invalidate(self, keys: list[bytes] | None) -> None:
        """An ``invalidate`` push: these keys changed (``None``: the database was flushed)."""
        if keys is None:
            self.reset()
            return
        self.invalidations += len(keys)
        for key in keys:
            table = self._by_prefix.get(key[:-HEX_DIGITS])
            if table is None:
                continue
            try:
                h = int.from_bytes(bytes.fromhex(key[-HEX_DIGITS:].decode()), "little")
            except ValueError:
                continue
            blob = table.values.pop(h, None)
            if blob is not None:
                self.size -= len(blob) + ENTRY_OVERHEAD
            if h in table.pending:
                table.dirty.add(h)

    def reset(self) -> None:
        """Forget everything: the tracking connection was lost (or the database flushed), so
        changes may have gone unannounced."""
        self.generation += 1
        self.resets += 1
        self.histories.values.clear()
        self.indexes.values.clear()
        self.size = 0

    def on_push(self, message: list[Any]) -> None:
        """The tracking connection's push messages (``Link``'s hook)."""
        if len(message) == 2 and message[0] == b"invalidate":
            self.invalidate(message[1])

    def figures(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "invalidations": self.invalidations,
                "resets": self.resets, "bytes": self.size,
                "entries": len(self.histories.values) + len(self.indexes.values)}
