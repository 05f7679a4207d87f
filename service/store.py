"""Redis I/O for the API: ingestion, the reads behind every recommendation, and statistics.

A recommendation costs two round trips (the query items' neighbour indexes plus the trending
head; then the chosen neighbours' histories) and a third only for item ids not yet in this
process' name cache. Keys come from ``keyspace.Keys``; scripts are registered once per client
(EVALSHA, falling back to EVAL after a script flush).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service import _kernel, resp, scoring
from service.entries import encode, number, pack_events, unpack_events
from service.keyspace import (
    GROUP,
    ITEM_SHARDS,
    Keys,
    item_hash,
    lua,
    partition_of,
    session_hash,
    shard_of,
)
from service.model import TYPE_RATING, Event
from service.readcache import ReadCache, Table
from service.scoring import Params, Query
from service.settings import Settings

log = logging.getLogger("sessionrec.store")

UNAVAILABLE: tuple[type[BaseException], ...] = (
    RedisConnectionError, RedisTimeoutError, ClusterDownError, TryAgainError, AskError,
    ReadOnlyError, OutOfMemoryError, RedisClusterException, ConnectionError, OSError,
    TimeoutError)
"""Errors that say Redis (or a cluster node, mid-failover) cannot take the call now, as opposed
to a call that can never succeed: retried by workers, 503 from the API, never a dead letter."""

REDIS_FAILURES: tuple[type[BaseException], ...] = (*UNAVAILABLE, RedisError)
"""What the API answers with 503: Redis could not serve the call."""

JOURNAL_GRACE = 10.0
"""Seconds a journalled batch is left to the API process that wrote it before a worker
replays it."""

JOURNAL_CAP = 10_000
"""Most batches a partition's journal holds. Entries stay only while appends fail; past this
the API answers 503 (retry later) instead of growing Redis."""

MEMORY_URL = "memory://"
"""The embedded store (fakeredis, in-process): the demo's zero-install default."""

MSG_SESSION = "Recommendations based on session interactions."
MSG_BOTH = "Recommendations based on session interactions, completed with trending items."
MSG_POPULAR = "Trending items: the session gives no co-visitation signal yet."
MSG_SIMILAR = "Items most often visited in the same sessions as this item."
MSG_NO_SIMILAR = "No session has visited this item with another one yet."
MSG_TRENDING = "Trending items (time-decayed popularity)."

CLUSTER_SCHEME = "redis+cluster://"
"""Selects redis-py's cluster client; the URL names one or more seed nodes, comma-separated."""

_embedded_server: Any = None


def is_cluster(url: str) -> bool:
    return url.startswith(CLUSTER_SCHEME)


def cluster_seeds(url: str) -> list[ClusterNode]:
    """``redis+cluster://h1:p1,h2:p2[/...]`` -> seed nodes (the client discovers the rest)."""
    hosts = url[len(CLUSTER_SCHEME):].split("/", 1)[0]
    seeds = []
    for part in filter(None, hosts.split(",")):
        host, _, port = part.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"redis_url: {part!r} is not host:port; write "
                             "redis+cluster://host:port[,host:port...]")
        seeds.append(ClusterNode(host.strip("[]"), int(port)))
    if not seeds:
        raise ValueError("redis_url: name at least one seed node, as in "
                         "redis+cluster://127.0.0.1:7000")
    return seeds


def connect(settings: Settings) -> aioredis.Redis:
    """A client for ``settings.redis_url`` with short timeouts and no retries: when Redis is
    unreachable the API must answer 503 within a second, not hang."""
    if settings.redis_url == MEMORY_URL:
        global _embedded_server
        import fakeredis

        if _embedded_server is None:
            _embedded_server = fakeredis.FakeServer()
        client: aioredis.Redis = fakeredis.aioredis.FakeRedis(server=_embedded_server)
        return client
    if is_cluster(settings.redis_url):
        return cast(aioredis.Redis, RedisCluster(
            startup_nodes=cluster_seeds(settings.redis_url),
            socket_timeout=settings.redis_timeout,
            socket_connect_timeout=settings.redis_timeout,
            retry=Retry(NoBackoff(), 0),
            max_connections=256,
        ))
    # a blocking pool: a burst of concurrent requests waits (up to the timeout) for a free
    # connection instead of failing with MaxConnectionsError, which would answer 503
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url, max_connections=256, timeout=settings.redis_timeout,
        socket_timeout=settings.redis_timeout, socket_connect_timeout=settings.redis_timeout,
        retry=Retry(NoBackoff(), 0))
    return aioredis.Redis.from_pool(pool)


class UnsafeRedis(RuntimeError):
    """A Redis configured to lose what exactly-once depends on."""


async def check_memory_policy(client: aioredis.Redis) -> None:
    """Refuse a Redis whose ``maxmemory-policy`` is ``allkeys-*``: under memory pressure it
    would evict the event streams, consumer groups and watermarks (keys without an expiry),
    losing accepted events or applying them twice. ``volatile-*`` policies evict only keys
    with an expiry (sessions, histories, indexes, idempotency records): learned state fades,
    nothing accepted is lost. A Redis that does not let us ask (CONFIG renamed or denied, as
    on managed services) is taken as it is, with a warning."""
    if isinstance(client, RedisCluster):
        replies = list((await client.execute_command(
            "CONFIG", "GET", "maxmemory-policy", target_nodes=RedisCluster.PRIMARIES)).values())
    else:
        try:
            replies = [await client.execute_command(  # type: ignore[no-untyped-call]
                "CONFIG", "GET", "maxmemory-policy")]
        except ResponseError as exc:
            log.warning("cannot read Redis' maxmemory-policy (%s): make sure it is noeviction "
                        "or volatile-*", exc)
            return
    for reply in replies:
        if isinstance(reply, list):  # RESP2 without redis-py's pairing
            reply = dict(zip(reply[::2], reply[1::2], strict=True))
        policy = reply.get(b"maxmemory-policy", b"") if isinstance(reply, dict) else b""
        if policy.startswith(b"allkeys-"):
            raise UnsafeRedis(
                f"Redis' maxmemory-policy is {policy.decode()}: under memory pressure it would "
                "evict event streams and watermarks, losing accepted events. Set "
                "'maxmemory-policy noeviction' or a volatile-* policy (volatile-lru keeps "
                "accepting events and lets old learned state go first).")


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
class Answer:
    recommendations: list[dict[str, Any]]
    message: str

    def body(self) -> dict[str, Any]:
        return {"recommendations": self.recommendations, "message": self.message}


@dataclass(frozen=True, slots=True)
class LiveInteraction:
    item_id: str
    timestamp: float
    rating: float


class NameCache:
    """Item hash -> id, for ids Redis returned (a hash names one id, so entries never go
    stale). Only what Redis said goes in: a request's own ids are any strings a client
    invents, and caching them let one client fill the cache and stall every request on its
    eviction. Bounded by two generations: when the young one is full it becomes the old one
    and the previous old one is dropped whole, O(1); a hit in the old one is promoted."""

    def __init__(self, capacity: int = 1_000_000) -> None:
        self.capacity = capacity
        self._young: dict[int, str] = {}
        self._old: dict[int, str] = {}

    def get(self, key: int) -> str | None:
        name = self._young.get(key)
        if name is None:
            name = self._old.get(key)
            if name is not None:
                self.put(key, name)
        return name

    def put(self, key: int, name: str) -> None:
        if len(self._young) >= max(self.capacity // 2, 1):
            self._old = self._young
            self._young = {}
        self._young[key] = name

    def __len__(self) -> int:
        return len(self._young) + len(self._old)


class FrequencyCache:
    """Item hash -> sessions containing it, for idf weighting: an open-addressing table over
    two numpy arrays, probed by the kernel (a request looks up a few hundred candidates; a
    dict or a bisection costs more than the scoring). Cleared after ``ttl`` seconds: a
    slightly stale frequency is harmless, a missing one costs a round trip."""

    def __init__(self, ttl: float = 300.0, capacity: int = 1 << 12) -> None:
        self.ttl = ttl
        self.initial = capacity
        self.clear()

    def clear(self) -> None:
        self.keys = np.zeros(self.initial, np.uint64)
        self.values = np.full(self.initial, np.nan)
        self.size = 0
        self.sessions: float | None = None
        self.since = time.monotonic()

    def lookup(self, items: scoring.U64) -> tuple[scoring.F64, scoring.U64]:
        """Each item's frequency (0 if unknown) and the unknown items."""
        if time.monotonic() - self.since > self.ttl:
            self.clear()
        values, missing = _kernel.lookup(self.keys, self.values, items)
        return np.frombuffer(values, np.float64), np.frombuffer(missing, np.uint64)

    def add(self, items: scoring.U64, values: scoring.F64) -> None:
        if (self.size + len(items)) * 2 > len(self.keys):  # at most half full: short probes
            old = ~np.isnan(self.values)
            capacity = len(self.keys)
            while (self.size + len(items)) * 2 > capacity:
                capacity *= 2
            keys, vals = self.keys[old], self.values[old]
            self.keys = np.zeros(capacity, np.uint64)
            self.values = np.full(capacity, np.nan)
            _kernel.insert(self.keys, self.values, keys, vals)
        self.size += _kernel.insert(self.keys, self.values,
                                    np.ascontiguousarray(items, np.uint64),
                                    np.ascontiguousarray(values, np.float64))


class MultiGet:
    """The replies of a (possibly per-slot) MGET queued on a pipeline, back in key order."""

    def __init__(self, size: int, groups: list[list[int]]) -> None:
        self.values: list[bytes | None] = [None] * size
        self.groups = groups

    def fill(self, replies: list[Any]) -> None:
        """Take this read's replies off the front of ``replies``."""
        for group in self.groups:
            for n, value in zip(group, replies.pop(0), strict=True):
                self.values[n] = value


class Store:
    def __init__(self, settings: Settings, client: aioredis.Redis | None = None) -> None:
        self.settings = settings
        self.cluster = is_cluster(settings.redis_url)
        self.redis = client if client is not None else connect(settings)
        self.keys = Keys(settings.namespace, settings.partitions)
        self.params = Params.from_settings(settings)
        self.similar_params = Params(1, settings.index_cap, settings.index_cap, 0.0,
                                     index_cap=settings.index_cap)
        self.names = NameCache()
        self.frequencies = FrequencyCache()
        self._hidden: tuple[float, scoring.U64] = (-1.0, np.zeros(0, np.uint64))
        self._hidden_read: asyncio.Future[scoring.U64] | None = None
        self.standalone = not self.cluster and settings.redis_url != MEMORY_URL
        self.lane = resp.hot_path(self.redis, settings.redis_timeout) if self.standalone \
            else resp.Lane(self.redis)
        self.cache: ReadCache | None = None
        """Histories and indexes kept in process (standalone Redis over TCP or a unix socket:
        the link that tracks them speaks neither TLS nor cluster)."""
        self.tracked: resp.Link | None = None
        if self.standalone and settings.read_cache_mb > 0:
            cache = ReadCache(self.keys.history_prefixes(), self.keys.index_prefixes(),
                              settings.read_cache_mb << 20)
            self.tracked = resp.link_to(self.redis, settings.redis_timeout, tracking=cache)
            if self.tracked is not None:
                self.cache = cache
        self._history_prefixes = [p.encode() for p in self.keys.history_prefixes()]
        self._index_prefixes = [p.encode() for p in self.keys.index_prefixes()]
        self.ingest_script = self.redis.register_script(lua("ingest"))
        self.append_script = self.redis.register_script(lua("append"))
        self.journal_script = self.redis.register_script(lua("journal"))
        self.scrub_script = self.redis.register_script(lua("scrub"))

    async def close(self) -> None:
        if not self.cluster and self.settings.redis_url != MEMORY_URL:
            await self.lane.close()
        if self.tracked is not None:
            await self.tracked.close()
        await self.redis.aclose()

    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    async def prepare(self) -> None:
        """Refuse to run against a namespace laid out with another partition count or a Redis
        that evicts any key, and make sure every partition stream has its consumer group."""
        if self.settings.redis_url != MEMORY_URL:
            await check_memory_policy(self.redis)
        meta = self.keys.meta()
        await self.redis.hsetnx(meta, "partitions", self.settings.partitions)
        stored = int(await self.redis.hget(meta, "partitions") or 0)
        if stored != self.settings.partitions:
            raise RuntimeError(
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
        fails, the workers replay the entry (``replay_journal``) and the answer is still 202.
        """
        if not self.cluster:
            return await self._append_live(events, "", once)
        groups: dict[int, list[Event]] = {}
        for ev in events:
            groups.setdefault(self._partition(ev), []).append(ev)
        if len(groups) == 1:
            return await self._append_live(events, "", once)
        token = uuid.uuid4().hex
        first = next(iter(groups))
        journalled = await self.journal_script(
            keys=[self.keys.journal(first), self._once_key(first, once)],
            args=[token, b"%d|%s" % (int(time.time() * 1000), pack_events(list(events))),
                  once.record if once else "", JOURNAL_CAP])
        if journalled == b"full":
            raise RedisConnectionError("the journal is full: appends keep failing")
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
        except REDIS_FAILURES as exc:
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
        """One ingest script call (one slot on a cluster unless ``events`` share a partition)."""
        p = self._partition(events[0])
        keys: list[str] = [self.keys.batch_tokens(p), self._once_key(p, once)]
        args: list[Any] = [token, int(time.time() * 1000), self.settings.live_ttl * 1000,
                           self.settings.live_cap, once.record if once else ""]
        for ev in events:
            s = session_hash(ev.session_id)
            p = partition_of(s, self.settings.partitions)
            keys += [self.keys.stream(p), self.keys.live_items(s), self.keys.live_ratings(s),
                     self.keys.live_registry(p)]
            args += [ev.session_id, ev.item_id, number(ev.timestamp), ev.type,
                     "" if ev.rating is None else number(ev.rating),
                     number(TYPE_RATING[ev.type]), s.hex()]
        if self.standalone:  # on the link: redis-py would encode 5,500 arguments one by one
            ids = await resp.run_script(self.lane.execute, self.ingest_script, keys, args)
        else:
            ids = await self.ingest_script(keys=keys, args=args)
        if ids and ids[0] == b"replay":
            raise Replayed(ids[1].decode())
        return [i.decode() for i in ids]

    async def replay_journal(self, p: int, min_age: float | None = None) -> int:
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
                groups.setdefault(self._partition(ev), []).append(ev)
            for group in groups.values():
                await self._append_live(group, token.decode())
            await self.redis.hdel(journal, token)
            replayed += 1
        return replayed

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
                    continue  # unreadable: a worker dead-letters it (replay_journal)
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
        groups: dict[int, list[Any]] = {}
        for ev in events:
            args = groups.setdefault(self._partition(ev), [])
            fields = encode(ev)
            args.append(2 * len(fields))
            for field, value in fields.items():
                args += [field, value]
        for p, args in groups.items():
            await self.append_script(keys=[self.keys.stream(p)], args=args)

    async def live_session(self, session_id: str) -> list[LiveInteraction]:
        s = session_hash(session_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrange(self.keys.live_items(s), 0, -1, withscores=True)
            pipe.hgetall(self.keys.live_ratings(s))
            items, ratings = await pipe.execute()
        return [LiveInteraction(item.decode("utf-8", "surrogatepass"), ts,
                                float(ratings.get(item, 1.0)))
                for item, ts in items]

    # --- reads behind recommendations --------------------------------------------------------
    async def recommend(self, interactions: Sequence[tuple[str, float, float]], k: int,
                        recommend_seen: bool, session_id: str | None = None) -> Answer:
        hashes = [item_hash(item) for item, _, _ in interactions]
        query = scoring.build_query(hashes, [ts for _, ts, _ in interactions],
                                    [r for _, _, r in interactions], self.params)
        exclude_session = (int.from_bytes(session_hash(session_id), "little")
                           if session_id is not None else None)
        seen = None if recommend_seen else query.seen
        # the request names its own items (recommend_seen may return them): for this answer
        # only, never into the shared name cache
        named = {int.from_bytes(h, "little"): item
                 for h, (item, _, _) in zip(hashes, interactions, strict=True)} \
            if recommend_seen else None
        return await self._answer(query, k, seen, self.params, exclude_session,
                                  fill_with_trending=True, named=named)

    async def similar(self, item_id: str, k: int) -> Answer:
        h = item_hash(item_id)
        query = scoring.build_query([h], [0.0], [1.0], self.similar_params)
        return await self._answer(query, k, query.seen, self.similar_params, None,
                                  fill_with_trending=False)

    async def popular(self, k: int) -> Answer:
        hidden = await self.hidden_items()
        trending = await self.trending_head(k + len(hidden))
        return Answer(_normalised_trending(trending, k, {int(h) for h in hidden},
                                           1.0), MSG_TRENDING)

    async def hidden_items(self, max_age: float = 1.0) -> scoring.U64:
        """Hidden item hashes, re-read at most every ``max_age`` seconds per process (one read
        shared by the requests that find the copy stale together)."""
        fetched, items = self._hidden
        if time.monotonic() - fetched > max_age:
            if self._hidden_read is None or self._hidden_read.done():
                self._hidden_read = asyncio.ensure_future(self._read_hidden())
            items = await asyncio.shield(self._hidden_read)
        return items

    async def _read_hidden(self) -> scoring.U64:
        members = await self.read(b"SMEMBERS", [self.keys.hidden()])
        items = np.array(sorted(int.from_bytes(bytes.fromhex(m.decode()), "little")
                                for m in members), dtype=np.uint64)
        self._hidden = (time.monotonic(), items)
        return items

    async def trending_head(self, n: int) -> list[tuple[bytes, float]]:
        """The ``n`` most trending members and their scores, best first."""
        reply = await self.read(b"ZREVRANGE", [self.keys.trend(), 0, n - 1, b"WITHSCORES"])
        if reply and isinstance(reply[0], list | tuple):  # paired by the cluster client
            return [(m, float(v)) for m, v in reply]
        return [(m, float(v)) for m, v in zip(reply[::2], reply[1::2], strict=True)]

    async def read(self, command: bytes, args: list[bytes | str | int]) -> Any:
        """One command: on the hot path's link on standalone Redis (its raw reply), through
        the client otherwise (the client's parsed reply)."""
        if self.standalone:
            return await self.lane.execute(resp.pack(command, args))
        return await self.redis.execute_command(  # type: ignore[no-untyped-call]
            command.decode(), *args)

    # --- admin operations ---------------------------------------------------------------------
    async def hide(self, item_id: str, hidden: bool) -> None:
        key, member = self.keys.hidden(), item_hash(item_id).hex()
        await (self.redis.sadd(key, member) if hidden else self.redis.srem(key, member))
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
        for o in range(0, len(blob), 16):
            session = blob[o + 8:o + 16]
            by_partition.setdefault(partition_of(session, self.settings.partitions),
                                    []).append(self.keys.history(session))
        scrubbed = 0
        for p, keys in by_partition.items():
            scrubbed += int(await self.scrub_script(keys=[self.keys.epoch(p), *keys], args=[h]))
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.delete(index_key)
            pipe.hdel(self.keys.doc_freq(shard_of(h)), h.hex())
            pipe.zrem(self.keys.trend(), item_id)
            await pipe.execute()
        return scrubbed

    async def reset_session(self, session_id: str) -> None:
        """Forget a visitor's session: live interactions and learned history (with the
        partition's admin epoch bumped in the same transaction, so a worker batch that read
        the history before cannot write it back)."""
        s = session_hash(session_id)
        p = partition_of(s, self.settings.partitions)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(self.keys.epoch(p))
            pipe.delete(self.keys.live_items(s), self.keys.live_ratings(s), self.keys.history(s))
            pipe.zrem(self.keys.live_registry(p), s.hex())
            await pipe.execute()

    async def _answer(self, query: Query, k: int, seen: scoring.U64 | None, params: Params,
                      exclude_session: int | None, *, fill_with_trending: bool,
                      named: dict[int, str] | None = None) -> Answer:
        extra = len(query.seen) if seen is not None else 0
        cached = self._cached_candidates(query, params, exclude_session)
        if cached is not None:
            candidates, scores = cached
        else:
            index_blobs = await self.indexes(query.items)
            sessions, similarity = scoring.neighbours(query, index_blobs, params,
                                                      exclude_session)
            candidates = np.zeros(0, np.uint64)
            scores = np.zeros(0)
            if len(sessions):
                histories = await self.histories(sessions)
                candidates, scores = scoring.score(query, histories, similarity, params)
        df, n_sessions = await self.doc_freq(candidates) if params.idf_weight \
            else (np.zeros(0), 0.0)
        hidden = await self.hidden_items()
        exclude = hidden if seen is None else np.concatenate((seen, hidden))
        best, best_scores = scoring.rank(candidates, scores, df, n_sessions, query, params,
                                         seen is None, exclude, k)
        names = await self.item_names(best, named)
        relative = _kernel.relative(best_scores)
        found: list[dict[str, Any]] = [{"id": name, "score": sc}
                                       for name, sc in zip(names, relative, strict=True)]
        if not fill_with_trending:
            return Answer(found, MSG_SIMILAR if found else MSG_NO_SIMILAR)
        if len(found) >= k:
            return Answer(found, MSG_SESSION)
        # only now the trending head: sessions with neighbours rarely need it
        trending = await self.trending_head(k + extra)
        taken: set[Any] = {r["id"] for r in found} | {int(x) for x in exclude}
        floor = float(found[-1]["score"]) if found else 1.0
        filler = _normalised_trending(trending, k - len(found), taken, floor)
        if not found:
            return Answer(filler, MSG_POPULAR)
        return Answer(found + filler, MSG_BOTH if filler else MSG_SESSION)

    async def _mget_per_node(self, keys: list[str]) -> list[bytes | None]:
        """The cluster's lean read: one packed write of per-slot MGETs to each master, all
        masters at once, on connections taken from redis-py's nodes (its cluster pipeline
        costs more Python per request than the reads themselves)."""
        cluster: Any = self.redis
        by_node: dict[str, tuple[Any, list[list[int]]]] = {}
        for slot, group in _by_slot(keys).items():
            node = cluster.nodes_manager.get_node_from_slot(slot)
            by_node.setdefault(node.name, (node, []))[1].append(group)
        out: list[bytes | None] = [None] * len(keys)

        async def read(node: Any, node_groups: list[list[int]]) -> None:
            packed = b"".join(resp.pack(b"MGET", [keys[n] for n in group])
                              for group in node_groups)
            conn = node.acquire_connection()
            try:
                await conn.send_packed_command(packed, check_health=False)
                replies = [await conn.read_response() for _ in node_groups]
            except BaseException:
                await conn.disconnect()
                node.release(conn)
                raise
            node.release(conn)
            for group, reply in zip(node_groups, replies, strict=True):
                if isinstance(reply, Exception):
                    raise reply
                for n, value in zip(group, reply, strict=True):
                    out[n] = value

        results = await asyncio.gather(*(read(node, node_groups)
                                         for node, node_groups in by_node.values()),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return out

    def _queue_mget(self, pipe: Any, keys: list[str]) -> MultiGet:
        """Queue the reads of ``keys`` on a pipeline: one MGET on standalone Redis, one per
        hash slot on a cluster (where the pipeline sends each node its share in one round
        trip, all nodes at once)."""
        groups: list[list[int]] = []
        if keys and not self.cluster:
            groups.append(list(range(len(keys))))
        elif keys:
            groups = list(_by_slot(keys).values())
        for group in groups:
            # execute_command: cluster pipelines refuse their mget() helper, not MGET itself
            pipe.execute_command("MGET", *(keys[n] for n in group))
        return MultiGet(len(keys), groups)

    async def mget(self, keys: list[str]) -> list[bytes | None]:
        """MGET through a pre-packed command on a pooled connection (the hot path's biggest
        read); the embedded store and a cluster take the client's pipeline."""
        if not keys:
            return []
        if self.cluster:
            with contextlib.suppress(*REDIS_FAILURES):
                return await self._mget_per_node(keys)
            # a moved slot, a failing node or a map not loaded yet: the client's pipeline
            # follows redirects and refreshes its slot map
        if self.settings.redis_url == MEMORY_URL or self.cluster:
            async with self.redis.pipeline(transaction=False) as pipe:
                values = self._queue_mget(pipe, keys)
                values.fill(await pipe.execute())
            return values.values
        reply: list[bytes | None] = await self.lane.execute(resp.pack(b"MGET", keys))
        return reply

    async def histories(self, sessions: scoring.U64) -> list[bytes | None]:
        """The neighbours' histories: on standalone Redis one MGET packed by the kernel (two
        hundred keys are two hundred Python strings otherwise)."""
        if not self.standalone or not len(sessions):
            return await self.mget(self.keys.histories(sessions))
        if self.cache is not None and (blobs := await self._cached(self.cache.histories,
                                                                   sessions)) is not None:
            return blobs
        reply: list[bytes | None] = await self.lane.execute(
            _kernel.mget(sessions, self._history_prefixes))
        return reply

    async def indexes(self, items: scoring.U64) -> list[bytes | None]:
        """The neighbour indexes of the session's items, read like ``histories``."""
        if not self.standalone or not len(items):
            return await self.mget(self.keys.indexes(items))
        if self.cache is not None and (blobs := await self._cached(self.cache.indexes,
                                                                   items)) is not None:
            return blobs
        reply: list[bytes | None] = await self.lane.execute(
            _kernel.mget(items, self._index_prefixes))
        return reply

    def _cached_candidates(self, query: Query, params: Params, exclude_session: int | None
                           ) -> tuple[scoring.U64, scoring.F64] | None:
        """Neighbours and scores straight from the read cache when it holds every blob
        (``ReadCache.candidates``); None sends the request through the reads."""
        link = self.tracked
        if self.cache is None or link is None or link.connection is None:
            return None
        return self.cache.candidates(query, params, exclude_session)

    async def _cached(self, table: Table, hashes: scoring.U64) -> list[bytes | None] | None:
        """The blobs through the read cache; None if it turns out unusable: a Redis that
        refuses tracking (an ACL without CLIENT or HELLO, a managed service that disables
        them) answers the tracked link's handshake with an error, and the cache is then
        switched off for good, so that reads go uncached instead of failing every request."""
        link = self.tracked
        if self.cache is None or link is None:
            return None
        if link.connection is None:
            try:
                await link.execute(resp.pack(b"PING", []))
            except ResponseError as exc:
                log.warning("read cache off: Redis refused client-side caching (%s)", exc)
                self.cache = None
                return None
        return await self.cache.read(table, hashes, link.execute)

    async def commands(self, commands: list[tuple[bytes, list[bytes | str]]]) -> list[Any]:
        """Several commands in one round trip: one packed write on standalone Redis, the
        client's pipeline on a cluster (per node) or the embedded store."""
        if self.settings.redis_url == MEMORY_URL or self.cluster:
            async with self.redis.pipeline(transaction=False) as pipe:
                for name, args in commands:
                    pipe.execute_command(name.decode(), *args)
                return list(await pipe.execute())
        packed = b"".join(resp.pack(name, args) for name, args in commands)
        replies = await self.lane.execute(packed, len(commands))
        return [replies] if len(commands) == 1 else list(replies)

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
        journalled = await self._journalled_not_appended() if self.cluster else 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for p in partitions:
                pipe.xinfo_stream(self.keys.stream(p))
                pipe.hgetall(self.keys.counters(p))
                pipe.zcount(self.keys.live_registry(p), now_ms - self.settings.live_ttl * 1000,
                            "+inf")
            for shard in range(ITEM_SHARDS):
                pipe.hlen(self.keys.names(shard))
            replies = await pipe.execute(raise_on_error=False)
        accepted = processed = dead = live = unlisted = 0
        for p in partitions:
            info, counters, sessions = replies[3 * p: 3 * p + 3]
            if isinstance(info, dict):
                accepted += int(info.get("entries-added", 0))
            processed += int(counters.get(b"processed", 0))
            dead += int(counters.get(b"dead", 0))
            unlisted += int(counters.get(b"unlisted", 0))
            live += int(sessions)
        items = sum(int(n) for n in replies[3 * self.settings.partitions:])
        accepted += journalled
        return {"events_accepted": accepted, "events_processed": processed,
                "events_dead": dead, "events_unlisted": unlisted,
                "pending": max(accepted - processed - dead, 0),
                "items": items, "live_sessions": live}


def _by_slot(keys: list[str]) -> dict[int, list[int]]:
    """Positions of ``keys`` grouped by hash slot (multi-key commands stay within one)."""
    groups: dict[int, list[int]] = {}
    for n, key in enumerate(keys):
        groups.setdefault(key_slot(key.encode()), []).append(n)
    return groups


def _normalised_trending(trending: Sequence[tuple[bytes, float]], k: int, taken: set[Any],
                         ceiling: float) -> list[dict[str, Any]]:
    """Trending members as answer rows scaled into (0, ceiling], skipping taken ids/hashes.

    Trending scores are log2 of decayed counts, so ``2^(s - s_max)`` is the share of the leader.
    """
    rows: list[dict[str, Any]] = []
    if not trending:
        return rows
    leader = trending[0][1]
    for member, log_score in trending:
        name = member.decode("utf-8", "surrogatepass")
        if name in taken or int.from_bytes(item_hash(name), "little") in taken:
            continue
        rows.append({"id": name,
                     "score": round(ceiling * math.pow(2.0, log_score - leader), 6)})
        if len(rows) == k:
            break
    return rows
