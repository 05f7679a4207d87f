"""The hot path's in-process copy of learned histories and neighbour indexes, kept coherent with
Redis by server-assisted client-side caching (``CLIENT TRACKING``).

Why: a request reads up to twenty index blobs (8 KB each at the cap) and two hundred
histories. Serving those from Redis costs Redis more CPU per request than anything else, on
the same cores as the API processes: it is what kept a second API process from scaling. Most
of those keys change rarely (closed sessions never; a long-tail item's index seldom), so each
process keeps what it read, and Redis tells it which keys changed.

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
reads an absent blob as). The cache holds at most ``capacity`` bytes; past that entries from
random places go (Redis keeps tracking them, so one stray invalidation later is ignored).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np

from service import kernel
from service.core import scoring
from service.store import transport

LIVENESS = 1.0
"""Seconds a read trusts the tracking connection without hearing from it."""

PING = transport.pack(b"PING", [])

ENTRY_OVERHEAD = 80
"""Bytes one entry costs the process beyond its value: its key and list slot in a table at
most half full (32) and the bytes object's header (33), rounded up."""

HEX_DIGITS = 16  # a key ends with its 8-byte hash in hex (``service.store.keyspace``)


class Table:
    """One kind of cached blob (histories or indexes), by hash as a little-endian integer: an
    open-addressing table the kernel probes (``kernel.objects_*``), kept at most half full.
    A request looks up two hundred blobs at once; in a dict each lookup chased a key object
    and an entry through memory, a tenth of the request."""

    __slots__ = ("count", "dirty", "keys", "pending", "prefixes", "slots")

    def __init__(self, prefixes: Sequence[str], capacity: int = 1 << 12) -> None:
        self.prefixes = [p.encode() for p in prefixes]
        self.keys = np.zeros(capacity, np.uint64)
        self.slots: list[bytes | None] = [None] * capacity
        self.count = 0
        self.pending: dict[int, int] = {}
        self.dirty: set[int] = set()

    def get(self, hashes: scoring.U64) -> list[bytes | None]:
        return kernel.objects_get(self.keys, self.slots, hashes)

    def put(self, h: int, blob: bytes) -> bytes | None:
        """Store ``blob`` under ``h``; the blob it replaced, if any."""
        if h == 0:
            return None  # marks an empty slot: never cached (one hash in 2^64)
        if (self.count + 1) * 2 > len(self.keys):
            self._grow()
        old: bytes | None = kernel.objects_put(self.keys, self.slots, h, blob)
        self.count += old is None
        return old

    def pop(self, h: int) -> bytes | None:
        old: bytes | None = kernel.objects_pop(self.keys, self.slots, h)
        self.count -= old is not None
        return old

    def clear(self) -> None:
        self.keys[:] = 0
        self.slots[:] = [None] * len(self.slots)
        self.count = 0

    def some(self, n: int) -> list[int]:
        """Up to ``n`` cached hashes from a random place (what eviction drops)."""
        start = random.randrange(len(self.keys))
        window = self.keys[start:start + 64 * n]
        return window[np.flatnonzero(window)[:n]].tolist()  # type: ignore[no-any-return]

    def _grow(self) -> None:
        keys, slots = self.keys, self.slots
        self.keys = np.zeros(len(keys) * 2, np.uint64)
        self.slots = [None] * len(self.keys)
        for at in np.flatnonzero(keys).tolist():
            kernel.objects_put(self.keys, self.slots, int(keys[at]), slots[at])


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
                   send: Callable[[bytes], Awaitable[Any]]) -> list[bytes | None]:
        """The blobs of ``hashes`` (``b""`` for none), from the cache where it has them; the
        rest in one MGET through ``send``, which must go over the tracking connection."""
        if time.monotonic() - self.heard > LIVENESS:
            await self._alive(send)
        found = table.get(hashes)
        if None not in found:
            self.hits += len(found)
            return found
        numbers: list[int] = hashes.tolist()
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
            reply = await send(kernel.mget(hashes[wanted], table.prefixes))
        finally:
            dirty = table.dirty
            keep = reply is not None and generation == self.generation
            for m, n in enumerate(wanted):
                h = numbers[n]
                if reply is not None:
                    found[n] = reply[m] or b""
                if keep and h not in dirty:
                    self._put(table, h, found[n])  # type: ignore[arg-type]
                left = pending.get(h, 1) - 1
                if left > 0:
                    pending[h] = left
                else:
                    pending.pop(h, None)
                    dirty.discard(h)
        return found

    def candidates(self, query: scoring.Query, params: scoring.Params,
                   exclude_session: int | None) -> scoring.Candidates | None:
        """``scoring.neighbours`` then ``scoring.score`` in one kernel call on the cached
        blobs, when the cache holds every one of them and its connection was heard from
        lately; None otherwise (``read`` then fetches what is missing, or PINGs first).
        Between the steps a busy server spent more than in them: lists, arrays and calls whose
        code and objects had left the CPU's caches since the last request."""
        if time.monotonic() - self.heard > LIVENESS:
            return None
        got = kernel.candidates(
            query.items, query.weights, self.indexes.keys, self.indexes.slots,
            self.histories.keys, self.histories.slots, params.sample_sessions,
            params.neighbours, exclude_session or 0, exclude_session is not None,
            params.index_cap, params.neighbour_half_life, params.sequence_weight,
            params.before_weight)
        if got is None:
            return None
        candidates, scores, latest, found = got
        self.hits += len(query.items) + found
        return scoring.Candidates(np.frombuffer(candidates, np.uint64),
                                  np.frombuffer(scores, np.float64),
                                  np.frombuffer(latest, np.int64))

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

    def _put(self, table: Table, h: int, blob: bytes) -> None:
        old = table.put(h, blob)
        if old is not None:
            self.size -= len(old) + ENTRY_OVERHEAD
        self.size += len(blob) + ENTRY_OVERHEAD
        if self.size > self.capacity:
            self._evict(self.capacity * 9 // 10)

    def _evict(self, target: int) -> None:
        """Drop entries from random places, the fuller table first, until ``size`` <=
        ``target`` and no further: a batch that overshot would empty a small cache of the
        entries just read (Redis keeps tracking them: one stray invalidation later, ignored)."""
        while self.size > target:
            table = max(self.histories, self.indexes, key=lambda t: t.count)
            if not table.count:
                break
            for h in table.some(64):
                self._drop(table, h)
                if self.size <= target:
                    break

    def _drop(self, table: Table, h: int) -> None:
        blob = table.pop(h)
        if blob is not None:
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
            self._drop(table, h)
            if h in table.pending:
                table.dirty.add(h)

    def reset(self) -> None:
        """Forget everything: the tracking connection was lost (or the database flushed), so
        changes may have gone unannounced."""
        self.generation += 1
        self.resets += 1
        self.histories.clear()
        self.indexes.clear()
        self.size = 0

    def on_push(self, message: list[Any]) -> None:
        """The tracking connection's push messages (``SharedConnection``'s hook)."""
        if len(message) == 2 and message[0] == b"invalidate":
            self.invalidate(message[1])

    def figures(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "invalidations": self.invalidations,
                "resets": self.resets, "bytes": self.size,
                "entries": self.histories.count + self.indexes.count}
