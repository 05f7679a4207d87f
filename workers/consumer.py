"""The stream consumer: applies accepted events to the learned state, each exactly once.

How exactly-once holds
----------------------
* A partition is worked by one worker at a time: the holder of its lease. It reads as the
  partition's consumer name, so a new holder first receives the previous holder's pending
  entries (read from id 0), then new ones (``>``), always in stream order.
* Every partition has a watermark: the id of the last entry whose effects are committed. A batch
  is committed by one script that checks the watermark still holds the value read before the
  batch was computed (compare-and-set) and that the batch's first new entry is the stream's
  very next entry after it (no gap), applies the effects, moves the watermark and XACKs, all
  atomically. Entries at or below the watermark are acknowledged without effect. So a crash at
  any point, a redelivery or a stale worker that lost its lease changes nothing twice, and
  nothing is skipped: during a lease handover two readers can each receive a batch, but only
  the older one can commit first.
* Effects depend only on the partition's own sessions' histories (read in the same round trip
  as the watermark) and the events, and every per-item structure is order-free (see
  ``service.model``), so how partitions interleave across workers cannot change the result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service import resp
from service.entries import BadEntry, decode
from service.keyspace import GROUP, Keys, lua, shard_of
from service.model import Effects, Event, apply_events, sessions_of
from service.settings import Settings
from service.store import MEMORY_URL, connect, ensure_groups

log = logging.getLogger("sessionrec.worker")

REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)
TRIM_EVERY = 5.0


class Conflict(Exception):
    """The watermark moved under us: another worker committed this partition meanwhile."""


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    fields: dict[bytes, bytes]


def id_tuple(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _before(entry_id: str) -> str:
    """The stream id just before ``entry_id``: XREADGROUP returns entries after the id given."""
    ms, seq = id_tuple(entry_id)
    return f"{ms}-{seq - 1}" if seq > 0 else f"{ms - 1}-{2**64 - 1}"


class Worker:
    def __init__(self, settings: Settings, client: aioredis.Redis | None = None,
                 worker_id: str | None = None) -> None:
        self.settings = settings
        if client is None:
            # a blocking read waits block_ms: the socket timeout must outlast it
            client = connect(settings.replace(
                redis_timeout=settings.redis_timeout + settings.block_ms / 1000))
        self.redis = client
        self.keys = Keys(settings.namespace, settings.partitions)
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{id(self):x}"
        self.commit_script = client.register_script(lua("commit"))
        self.trim_script = client.register_script(lua("trim"))
        self.lease_script = client.register_script(lua("lease"))
        self.owned: dict[int, asyncio.Task[None]] = {}
        self.stopping = asyncio.Event()
        self.applied = 0

    # --- lifecycle ------------------------------------------------------------------------
    async def run(self) -> None:
        """Work until ``stop()``; survive Redis outages by backing off and resuming."""
        delay = 0.1
        last_trim = 0.0
        grouped = False
        while not self.stopping.is_set():
            try:
                if not grouped:
                    await ensure_groups(self.redis, self.keys)
                    grouped = True
                await self.balance()
                if time.monotonic() - last_trim > TRIM_EVERY:
                    await self.trim()
                    last_trim = time.monotonic()
                delay = 0.1
                wait = self.settings.lease_ms / 3000
            except REDIS_DOWN as exc:
                log.warning("redis unavailable (%s); retrying in %.1fs", exc, delay)
                wait, delay = delay, min(delay * 2, 5.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), wait)
        await self._shutdown()

    def stop(self) -> None:
        self.stopping.set()

    async def _shutdown(self) -> None:
        tasks = list(self.owned.values())
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(*REDIS_DOWN):
            for p in list(self.owned):
                await self.lease_script(keys=[self.keys.lease(p)],
                                        args=[self.id, self.settings.lease_ms, "release"])
        self.owned.clear()

    # --- partition leases -----------------------------------------------------------------
    async def balance(self) -> None:
        """Renew leases, take free partitions up to a fair share, give back any excess."""
        now_ms = int(time.time() * 1000)
        registry = self.keys.workers()
        await self.redis.zadd(registry, {self.id: now_ms})
        await self.redis.zremrangebyscore(registry, "-inf", now_ms - self.settings.lease_ms)
        alive = max(int(await self.redis.zcard(registry)), 1)
        share = math.ceil(self.settings.partitions / alive)
        for p, task in list(self.owned.items()):
            held = await self.lease_script(keys=[self.keys.lease(p)],
                                           args=[self.id, self.settings.lease_ms, "renew"])
            if not held or task.done():
                self.owned.pop(p)
                task.cancel()
        for p in range(self.settings.partitions):
            if len(self.owned) >= share:
                break
            if p in self.owned:
                continue
            if await self.lease_script(keys=[self.keys.lease(p)],
                                       args=[self.id, self.settings.lease_ms, "take"]):
                self.owned[p] = asyncio.create_task(self._partition_loop(p))
        while len(self.owned) > share:
            p = max(self.owned)
            task = self.owned.pop(p)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await self.lease_script(keys=[self.keys.lease(p)],
                                    args=[self.id, self.settings.lease_ms, "release"])

    async def trim(self) -> None:
        for p in range(self.settings.partitions):
            await self.trim_script(keys=[self.keys.stream(p)])

    # --- the work -------------------------------------------------------------------------
    async def _partition_loop(self, p: int) -> None:
        backlog = True  # first drain what this partition's consumer left pending
        delay = 0.1
        while not self.stopping.is_set():
            try:
                entries = await self.read(p, backlog)
                if backlog and not entries:
                    backlog = await self._has_pending(p)
                    continue
                if entries:
                    await asyncio.shield(self.process(p, entries))
                delay = 0.1
            except Conflict:
                log.info("partition %d: watermark moved; re-reading pending entries", p)
                backlog = True
            except REDIS_DOWN as exc:
                log.warning("partition %d: redis unavailable (%s)", p, exc)
                backlog = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), delay)
                delay = min(delay * 2, 5.0)

    async def read(self, p: int, backlog: bool) -> list[Entry]:
        """New entries, or on a backlog read the entries left pending. Pending entries that
        were delivered before are returned one at a time: if one of them crashes the worker,
        it is the only one retried, and after ``max_deliveries`` it is dead-lettered."""
        stream = self.keys.stream(p)
        if backlog:
            pending: list[dict[str, Any]] = await self.redis.xpending_range(
                stream, GROUP, min="-", max="+", count=self.settings.batch_size,
                consumername=self.keys.consumer(p))
            if not pending:
                return []
            if any(x["times_delivered"] > 1 for x in pending):
                # the oldest pending entry goes next, alone: entries apply strictly in order
                first = pending[0]
                entry_id = first["message_id"]
                entry_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                return await self._read_one(p, entry_id, int(first["times_delivered"]))
        reply = await self.redis.xreadgroup(
            GROUP, self.keys.consumer(p), {stream: "0" if backlog else ">"},
            count=self.settings.batch_size, block=None if backlog else self.settings.block_ms)
        if not reply:
            return []
        _, messages = cast(list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes] | None]]]],
                           reply)[0]
        return [Entry(mid.decode(), fields) for mid, fields in messages if fields is not None]

    async def _read_one(self, p: int, entry_id: str, delivered: int) -> list[Entry]:
        stream = self.keys.stream(p)
        reply: Any = await self.redis.xreadgroup(GROUP, self.keys.consumer(p),
                                                 {stream: _before(entry_id)}, count=1)
        messages = cast(list[tuple[bytes, dict[bytes, bytes] | None]],
                        reply[0][1] if reply else [])
        fields = messages[0][1] if messages else None
        if fields is None:
            # the entry was trimmed away: acknowledge it so it stops blocking the partition
            await self.redis.xack(stream, GROUP, entry_id)
            return []
        entry = Entry(messages[0][0].decode(), fields)
        if delivered >= self.settings.max_deliveries:
            log.error("partition %d: entry %s delivered %d times without being applied: "
                      "dead-lettered", p, entry.id, delivered)
            await self._commit_batch(p, [entry], dead_reason=(
                f"delivered {delivered} times without being applied"))
            return []
        return [entry]

    async def _has_pending(self, p: int) -> bool:
        return bool(await self.redis.xpending_range(
            self.keys.stream(p), GROUP, min="-", max="+", count=1,
            consumername=self.keys.consumer(p)))

    async def process(self, p: int, entries: Sequence[Entry]) -> None:
        """Apply one batch; on a script error, bisect to isolate the entry that causes it."""
        try:
            await self._commit_batch(p, entries, dead_reason=None)
        except ResponseError as exc:
            if len(entries) == 1:
                log.error("partition %d: entry %s fails (%s): dead-lettered", p, entries[0].id,
                          exc)
                await self._commit_batch(p, entries, dead_reason=f"apply failed: {exc}")
                return
            half = len(entries) // 2
            await self.process(p, entries[:half])
            await self.process(p, entries[half:])

    async def _commit_batch(self, p: int, entries: Sequence[Entry],
                            dead_reason: str | None) -> None:
        decoded: list[Event | str] = []
        for entry in entries:
            try:
                decoded.append(dead_reason if dead_reason is not None else decode(entry.fields))
            except BadEntry as exc:
                decoded.append(f"unreadable entry: {exc}")
        sessions = sessions_of([ev for ev in decoded if isinstance(ev, Event)])
        # the watermark and the histories share the partition's slot: one round trip
        reply: list[bytes | None] = await self.redis.mget(  # type: ignore[assignment]
            [self.keys.watermark(p)]
                                      + [self.keys.history(s) for s in sessions])
        mark = reply[0].decode() if reply[0] else ""
        histories = {s: b for s, b in zip(sessions, reply[1:], strict=True) if b}
        floor = id_tuple(mark) if mark else (-1, -1)
        events: list[Event] = []
        dead: list[tuple[Entry, str]] = []
        fresh = [(e, ev) for e, ev in zip(entries, decoded, strict=True) if id_tuple(e.id) > floor]
        for entry, ev in fresh:
            if isinstance(ev, Event):
                events.append(ev)
            else:
                dead.append((entry, ev))
        effects = apply_events(histories, events, self.settings.history_cap)
        new_mark = fresh[-1][0].id if fresh else mark
        first_fresh = fresh[0][0].id if fresh else ""
        keys, args = self._commit_args(p, entries, dead, effects, mark, new_mark, first_fresh)
        if await self._commit(keys, args) == -1:
            raise Conflict(p)
        self.applied += effects.applied

    async def _commit(self, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA with the arguments packed in one pass (redis-py would encode thousands of
        them one by one); the embedded store, and a Redis that lost its script cache, take the
        client's ordinary path."""
        if self.settings.redis_url == MEMORY_URL:
            return await self.commit_script(keys=keys, args=args)
        packed = resp.pack(b"EVALSHA", [self.commit_script.sha.encode(), b"%d" % len(keys),
                                         *map(resp.arg, keys), *map(resp.arg, args)])
        try:
            return await resp.execute(self.redis, packed)
        except NoScriptError:
            return await self.commit_script(keys=keys, args=args)

    def _commit_args(self, p: int, entries: Sequence[Entry], dead: Sequence[tuple[Entry, str]],
                     fx: Effects, mark: str, new_mark: str, first_fresh: str
                     ) -> tuple[list[str], list[Any]]:
        k = self.keys
        keys = [k.stream(p), k.watermark(p), k.counters(p), k.dead(p), k.trend(), k.meta()]
        slot: dict[str, int] = {}

        def ref(key: str) -> int:
            if key not in slot:
                keys.append(key)
                slot[key] = len(keys)
            return slot[key]

        s = self.settings
        args: list[Any] = [GROUP, mark, new_mark, s.trend_half_life, fx.applied,
                           fx.new_sessions, len(entries)]
        args += [e.id for e in entries]
        args.append(first_fresh)
        args.append(len(dead))
        for entry, reason in dead:
            raw = {key.decode("utf-8", "replace"): value.decode("utf-8", "replace")
                   for key, value in entry.fields.items()}
            args += [entry.id, reason, orjson.dumps(raw)]
        for change in fx.index:
            args += ["X", ref(k.index(change.item)), change.old, change.new, s.index_cap]
        ttl_ms = s.history_ttl * 1000
        for session, blob in fx.histories.items():
            args += ["H", ref(k.history(session)), blob, ttl_ms]
        for item, n in fx.doc_freq.items():
            args += ["D", ref(k.doc_freq(shard_of(item))), item.hex(), n]
        for item, name in fx.names.items():
            args += ["N", ref(k.names(shard_of(item))), item.hex(), name]
        for member, ts, weight in fx.trend:
            args += ["T", member, repr(ts), repr(weight)]
        return keys, args
