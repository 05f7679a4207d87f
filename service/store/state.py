"""The state the API reads and writes: ingestion, the reads behind every recommendation (the
answers are ``service/api/recommend.py``'s), admin operations and statistics. Topology
differences are the backend's (``backends.py``), keys ``keyspace.Keys``'s, scripts
``scripts.Scripts``'.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from service import kernel
from service.core import scoring
from service.core.catalog import Record
from service.core.catalog import decode as decode_record
from service.core.catalog import encode as encode_record
from service.core.layout import (
    ITEM_PERSON,
    ITEM_SHARDS,
    index_sessions,
    item_hash,
    partition_of,
    session_hash,
    shard_of,
)
from service.core.model import Event
from service.core.modelparams import ModelRecord
from service.core.rules import CatalogueIndex
from service.core.stream import encode, pack_events, unpack_events
from service.failures import UNAVAILABLE, Backlogged, Refused
from service.settings import Settings
from service.store.backends import open_backend
from service.store.caches import FrequencyCache, NameCache
from service.store.feedback import Feedback
from service.store.journal import Journal
from service.store.keyspace import GROUP, Keys
from service.store.mirror import CATALOGUE_MAX_AGE, CHANGE_LOG_CAP, CatalogueMirror
from service.store.readcache import ReadCache
from service.store.scripts import Scripts

log = logging.getLogger("sessionrec.store")

JOURNAL_CAP = 10_000
"""Most batches a partition's journal holds. Entries stay only while appends fail; past this
the API answers 503 (retry later) instead of growing Redis."""

MODEL_WRITE_TRIES = 20
"""Attempts at a model record change while other writers keep writing first."""



class OtherPartitions(Refused, RuntimeError):
    """The namespace was laid out with another partition count than this process'."""

class ModelContention(Exception):
    """The model record kept changing under a write (answered 503: retry)."""



async def ensure_groups(client: aioredis.Redis, keys: Keys) -> None:
    """Create the consumer group of every partition stream (from the start; idempotent), so
    events accepted before any worker ever ran are still delivered."""
    for _, stream in keys.partition_keys():
        try:
            await client.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise


@dataclass(frozen=True, slots=True)
class Once:
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


TRENDING_SNAPSHOT = 4096
TRENDING_SNAPSHOT_AGE = 10.0


@dataclass(frozen=True, slots=True)
class TrendingSnapshot:
    made: float  # time.monotonic() of the read
    members: list[tuple[str, int, float]]  # (item id, its hash, log2 trending score), best first


class Store:
    def __init__(self, settings: Settings, client: aioredis.Redis | None = None) -> None:
        self.settings = settings
        self.backend = open_backend(settings, client)
        self.redis = self.backend.client
        self.keys = Keys(settings.namespace, settings.partitions)
        self.names = NameCache()
        self.frequencies = FrequencyCache()
        self._hidden: tuple[float, scoring.U64] = (-1.0, np.zeros(0, np.uint64))
        self._hidden_read: asyncio.Future[scoring.U64] | None = None
        self._trending = TrendingSnapshot(-math.inf, [])
        self._trending_read: asyncio.Future[TrendingSnapshot] | None = None
        self._history_prefixes = [p.encode() for p in self.keys.history_prefixes()]
        self._index_prefixes = [p.encode() for p in self.keys.index_prefixes()]
        self.scripts = Scripts(self.redis)
        self.journal = Journal(settings, self.backend, self.keys, self.scripts)
        self.mirror = CatalogueMirror(self.redis, self.keys)
        self.feedback = Feedback(self.redis, self.scripts, self.keys, settings.partitions,
                                 self.backend, settings.feedback_mb,
                                 settings.feedback_client_answers)

    @property
    def cache(self) -> ReadCache | None:
        """The backend's read cache, if it has one (and it is still on)."""
        return self.backend.cache

    async def close(self) -> None:
        await self.backend.close()

    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    async def prepare(self) -> None:
        """Refuse to run against a namespace laid out with another partition count or a Redis
        that evicts any key, and make sure every partition stream has its consumer group."""
        await self.backend.check_memory_policy()
        meta = self.keys.meta()
        await self.redis.hsetnx(meta, "partitions", self.settings.partitions)
        stored = int(await self.redis.hget(meta, "partitions") or 0)
        if stored != self.settings.partitions:
            raise OtherPartitions(
                f"namespace {self.settings.namespace!r} was created with {stored} partitions; "
                f"this process is configured with {self.settings.partitions}. Use the same "
                "SESSIONREC_PARTITIONS everywhere, or another SESSIONREC_NAMESPACE.")
        await ensure_groups(self.redis, self.keys)

    # --- ingestion --------------------------------------------------------------------------
    async def ingest(self, events: Sequence[Event], once: Once | None = None) -> list[str]:
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
            return await self._append_live(events, "", once)
        groups: dict[int, list[Event]] = {}
        for ev in events:
            groups.setdefault(self._partition(ev), []).append(ev)
        if len(groups) == 1:
            return await self._append_live(events, "", once)
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
        replies = await asyncio.gather(*(self._append_live(group, token)
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

    def _partition(self, ev: Event) -> int:
        return partition_of(session_hash(ev.session_id), self.settings.partitions)

    def _once_key(self, p: int, once: Once | None) -> str:
        """The idempotency record's key; the token zset (same slot) stands in when none."""
        return self.keys.idempotency(p, once.digest) if once else self.keys.batch_tokens(p)

    async def _append_live(self, events: Sequence[Event], token: str,
                           once: Once | None = None) -> list[str]:
        """One ingest script call (``Journal.append``)."""
        once_key = self._once_key(self._partition(events[0]), once)
        ids = await self.journal.append(events, token, once_key, once.record if once else "")
        if ids and ids[0] == b"replay":
            raise Replayed(ids[1].decode())
        return [i.decode() for i in ids]

    async def _journalled_not_appended(self) -> int:
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
                groups = Counter(self._partition(ev) for ev in events)
                parts += [(p, token, n) for p, n in groups.items()]
        if not parts:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for p, token, _ in parts:
                pipe.zscore(self.keys.batch_tokens(p), token)
            appended = await pipe.execute()
        return sum(n for (_, _, n), done in zip(parts, appended, strict=True) if done is None)

    async def append(self, events: Sequence[Event]) -> None:
        """Write events to their partition streams only, in the documented entry format (what
        an external producer does): learned by the workers, not recorded as live sessions.
        Atomic per partition (one script per partition touched)."""
        groups: dict[int, list[dict[str, str]]] = {}
        for ev in events:
            groups.setdefault(self._partition(ev), []).append(encode(ev))
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

    # --- reads behind recommendations ------------------------------------------------------
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
        self._trending = TrendingSnapshot(time.monotonic(), list(zip(
            names, hashes, (score for _, score in head), strict=True)))
        return self._trending

    async def read(self, command: bytes, args: list[bytes | str | int]) -> Any:
        """One command on the hot path (the backend's reply)."""
        return await self.backend.read(command, args)

    # --- the catalogue ------------------------------------------------------------------------
    async def put_items(self, records: Sequence[Record]) -> None:
        """Store records, each replacing the item's earlier one: one hash field per item in its
        shard's catalogue hash (one write per shard touched, all shards in one round trip)."""
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
                pipe.hset(self.keys.catalog(shard), mapping=fields)  # type: ignore[arg-type]
            if gone:
                pipe.sadd(self.keys.unavailable(), *gone)
            if back:
                pipe.srem(self.keys.unavailable(), *back)
            await pipe.execute()
        await self._catalogue_changed([item_hash(r.item_id) for r in records])
        if gone or back:
            self._forget_hidden()

    async def get_item(self, item_id: str) -> Record | None:
        h = item_hash(item_id)
        raw: bytes | None = await self.redis.hget(  # type: ignore[assignment]
            self.keys.catalog(shard_of(h)), h.hex())
        return decode_record(raw) if raw is not None else None

    async def delete_item(self, item_id: str) -> bool:
        """Remove an item's record (its learned state stays); False if it had none."""
        h = item_hash(item_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hdel(self.keys.catalog(shard_of(h)), h.hex())
            pipe.srem(self.keys.unavailable(), h.hex())  # no record: available again
            deleted, _ = await pipe.execute()
        if deleted:
            await self._catalogue_changed([h])
        self._forget_hidden()
        return bool(deleted)

    async def _catalogue_changed(self, items: Sequence[bytes]) -> None:
        await self.scripts.catalog(self.keys.catalog_version(), self.keys.catalog_changes(),
                                   CHANGE_LOG_CAP, sorted(set(items)))
        self.mirror.expire()

    async def catalogue(self) -> CatalogueIndex:
        """This process' copy of the catalogue, for rules (no older than a second)."""
        return await self.mirror.current()

    # --- the shared model record ----------------------------------------------------------------
    async def model_record(self) -> ModelRecord:
        """The scoring parameters' shared record (version 0: never written)."""
        fields = cast(dict[bytes, bytes], await self.redis.hgetall(self.keys.model()))
        return ModelRecord.from_fields(fields)

    async def sessions_learned(self) -> int:
        """Sessions the learned state has counted (what idf weighting divides)."""
        return int(await self.redis.hget(self.keys.meta(), "sessions") or 0)

    async def model_version(self) -> int:
        """The record's version alone: what a serve process polls."""
        return int(await self.redis.hget(self.keys.model(), "version") or 0)

    async def update_model(self, change: Callable[[ModelRecord], ModelRecord]) -> ModelRecord:
        """``change`` applied to the record as one step: read, changed, written unless another
        writer wrote first (then read again and changed again). The record written."""
        for _ in range(MODEL_WRITE_TRIES):
            record = await self.model_record()
            new = change(record)
            written, version = await self.scripts.model(self.keys.model(), record.version,
                                                        new.fields())
            if written:
                return dataclasses.replace(new, version=version)
        raise ModelContention(f"the model record changed under {MODEL_WRITE_TRIES} writes")

    async def warm(self) -> None:
        """Read, in the background of a start, what the first request with rules would wait
        for: the catalogue copy (a whole read, seconds for a million records) and the trending
        snapshot its fill orders by. Nothing without a catalogue."""
        if int(await self.redis.get(self.keys.catalog_version()) or 0) > 0:
            await self.catalogue()
            await self.trending_snapshot()

    # --- admin operations ---------------------------------------------------------------------
    async def hide(self, item_id: str, hidden: bool) -> None:
        key, member = self.keys.hidden(), item_hash(item_id).hex()
        await (self.redis.sadd(key, member) if hidden else self.redis.srem(key, member))
        self._forget_hidden()

    def _forget_hidden(self) -> None:
        """This process changed what may not be recommended: read it again at once (others
        do within ``hidden_items``' max age)."""
        self._hidden = (-1.0, self._hidden[1])
        self._hidden_read = None  # one started before this change may miss it

    async def forget_item(self, item_id: str) -> int:
        """Delete an item's learned state: its neighbour index, frequency and trending score,
        and its entries in the histories of the sessions its index lists. Returns how many
        histories were scrubbed. (Histories older than the index reaches expire on their own;
        hide the item too if it must never come back.) Each partition's histories are scrubbed
        in one step with its admin epoch bumped, so a worker batch that read them before
        cannot write the item back."""
        h = item_hash(item_id)
        index_key = self.keys.index(h)
        blob: bytes = await self.redis.get(index_key) or b""  # type: ignore[assignment]
        by_partition: dict[int, list[str]] = {}
        for session in index_sessions(blob):
            by_partition.setdefault(partition_of(session, self.settings.partitions),
                                    []).append(self.keys.history(session))
        scrubbed = 0
        for p, keys in by_partition.items():
            scrubbed += await self.scripts.scrub(self.keys.epoch(p), keys, h)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.delete(index_key)
            pipe.hdel(self.keys.doc_freq(shard_of(h)), h.hex())
            pipe.zrem(self.keys.trend(), item_id)
            await pipe.execute()
        return scrubbed

    async def reset_session(self, session_id: str) -> None:
        """Forget a visitor's session: live interactions, learned history and arrival (with
        the partition's admin epoch bumped in the same transaction, so a worker batch that
        read the history before cannot write it back)."""
        s = session_hash(session_id)
        p = partition_of(s, self.settings.partitions)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(self.keys.epoch(p))
            pipe.delete(self.keys.live_items(s), self.keys.live_ratings(s), self.keys.history(s))
            pipe.zrem(self.keys.live_registry(p), s.hex())
            pipe.zrem(self.keys.arrivals(p), s)
            await pipe.execute()

    async def mget(self, keys: list[str]) -> list[bytes | None]:
        return await self.backend.mget(keys)

    async def histories(self, sessions: scoring.U64) -> list[bytes | None]:
        """The neighbours' histories."""
        return await self.backend.blobs(sessions, self._history_prefixes,
                                        self.keys.histories(sessions), "histories")

    async def indexes(self, items: scoring.U64) -> list[bytes | None]:
        """The neighbour indexes of the session's items."""
        return await self.backend.blobs(items, self._index_prefixes, self.keys.indexes(items),
                                        "indexes")

    async def commands(self, commands: list[tuple[bytes, list[bytes | str]]]) -> list[Any]:
        """Several commands in one round trip."""
        return await self.backend.commands(commands)

    async def doc_freq(self, items: scoring.U64) -> tuple[scoring.F64, float]:
        """Sessions containing each item, and sessions in all (cached; misses cost one
        pipelined round trip)."""
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
            self.frequencies.add(order, got)
            values, _ = self.frequencies.lookup(items)
        return values, self.frequencies.sessions or 0.0

    async def item_names(self, hashes: scoring.U64, named: dict[int, str] | None = None
                         ) -> list[str]:
        """The ids behind item hashes: the request's own (``named``), the cache, then Redis."""
        numbers: list[int] = hashes.tolist()
        get = self.names.get
        found = [get(h) for h in numbers]
        if named:
            found = [name if name is not None else named.get(h)
                     for h, name in zip(numbers, found, strict=True)]
        missing = [h for h, name in zip(numbers, found, strict=True) if name is None]
        if not missing:
            return found  # type: ignore[return-value]
        commands: list[tuple[bytes, list[bytes | str]]] = []
        for h in missing:
            raw = scoring.to_hash(h)
            commands.append((b"HGET", [self.keys.names(shard_of(raw)), raw.hex()]))
        for h, name in zip(missing, await self.commands(commands), strict=True):
            if name is not None:
                self.names.put(h, name.decode("utf-8", "surrogatepass"))
        named = named or {}
        return [get(h) or named.get(h) or scoring.to_hash(h).hex() for h in numbers]

    # --- statistics ---------------------------------------------------------------------------
    async def stats(self) -> dict[str, int]:
        now_ms = int(time.time() * 1000)
        partitions = range(self.settings.partitions)
        # the journal before the streams: a replay between the two reads then counts its
        # events twice (pending a moment too high), never not at all (pending 0 too early)
        journalled = await self._journalled_not_appended() if self.backend.one_slot_scripts \
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
