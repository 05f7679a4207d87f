"""Where the topologies differ, behind one interface: a ``Backend`` per kind of Redis URL.

=====================  ==========  ===============================================================
URL                    backend     how it reads and writes
=====================  ==========  ===============================================================
``redis://``,          Standalone  packed commands on a shared raw connection (``transport``),
``rediss://``,                     the read cache over a tracked one (TCP and unix sockets)
``unix://``
``redis+cluster://``   Cluster     redis-py's cluster client; reads grouped per hash slot and
                                   node; a script reaches one slot, so batches spanning
                                   partitions are journalled first (``Ingestion.ingest``)
``memory://``          Embedded    fakeredis in process (the demo's zero-install default), through
                                   the client's pipeline
=====================  ==========  ===============================================================

``open_backend`` chooses by URL. The request and ingest code (``state.py``) calls the interface
and never asks which topology it runs on; it asks one capability: ``one_slot_scripts``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, ClassVar, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import (
    ResponseError,
)

from service import kernel
from service.core.scoring import U64, Candidates, Params, Query
from service.failures import UNAVAILABLE, Refused
from service.settings import Settings
from service.store import transport
from service.store.keyspace import Keys
from service.store.readcache import ReadCache, Table

log = logging.getLogger("sessionrec.store")

MEMORY_URL = "memory://"
CLUSTER_SCHEME = "redis+cluster://"

Command = tuple[bytes, list[bytes | str]]


class BadUrl(Refused, ValueError):
    """A Redis URL that names no usable node."""


class UnsafeRedis(Refused, RuntimeError):
    """A Redis configured to lose what exactly-once depends on."""


class Backend:
    """One topology. ``client`` is redis-py's (or fakeredis') client for everything off the
    hot path; the methods below are the hot path's reads and writes."""

    one_slot_scripts: ClassVar[bool] = False
    """A script reaches one hash slot only: a batch spanning partitions cannot be one script."""

    raw_reads: ClassVar[bool] = False
    """Workers may read their streams with packed commands on raw connections."""

    other_processes: ClassVar[bool] = True
    """Another process can reach this store (a tuning run is a process of its own)."""

    def __init__(self, settings: Settings, client: aioredis.Redis | None = None) -> None:
        self.settings = settings
        self.client = client if client is not None else self.connect(settings)
        self.cache: ReadCache | None = None
        """Histories and indexes kept in process (only where a tracked connection is possible)."""

    @staticmethod
    def connect(settings: Settings) -> aioredis.Redis:
        raise NotImplementedError

    async def close(self) -> None:
        await self.client.aclose()

    async def check_memory_policy(self) -> None:
        """Refuse a Redis whose ``maxmemory-policy`` is ``allkeys-*``: under memory pressure it
        would evict the event streams, consumer groups and watermarks (keys without an
        expiry), losing accepted events or applying them twice. ``volatile-*`` policies evict
        only keys with an expiry (sessions, histories, indexes, idempotency records): learned
        state fades, nothing accepted is lost. A Redis that does not let us ask (CONFIG renamed
        or denied, as on managed services) is taken as it is, with a warning."""
        try:
            replies = await self._memory_policies()
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
                    f"Redis' maxmemory-policy is {policy.decode()}: under memory pressure it "
                    "would evict event streams and watermarks, losing accepted events. Set "
                    "'maxmemory-policy noeviction' or a volatile-* policy (volatile-lru keeps "
                    "accepting events and lets old learned state go first).")

    async def _memory_policies(self) -> list[Any]:
        return [await self.client.execute_command(  # type: ignore[no-untyped-call]
            "CONFIG", "GET", "maxmemory-policy")]

    async def read(self, command: bytes, args: list[bytes | str | int]) -> Any:
        """One command, the client's parsed reply, with a WITHSCORES reply flat as Redis sends
        it (the cluster client and the embedded server pair members with scores)."""
        reply = await self.client.execute_command(  # type: ignore[no-untyped-call]
            command.decode(), *args)
        if command == b"ZREVRANGE" and reply and isinstance(reply[0], list | tuple):
            return [x for pair in reply for x in pair]
        return reply

    async def commands(self, commands: list[Command]) -> list[Any]:
        """Several commands in one round trip (the client's pipeline; per node on a cluster)."""
        async with self.client.pipeline(transaction=False) as pipe:
            for name, args in commands:
                pipe.execute_command(name.decode(), *args)
            return list(await pipe.execute())

    async def mget(self, keys: list[str]) -> list[bytes | None]:
        if not keys:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            groups = self._queue_mget(pipe, keys)
            replies = await pipe.execute()
        values: list[bytes | None] = [None] * len(keys)
        for group, reply in zip(groups, replies, strict=True):
            for n, value in zip(group, reply, strict=True):
                values[n] = value
        return values

    def _queue_mget(self, pipe: Any, keys: list[str]) -> list[list[int]]:
        pipe.execute_command("MGET", *keys)
        return [list(range(len(keys)))]

    async def blobs(self, hashes: U64, prefixes: list[bytes], keys: Callable[[], list[str]],
                    table: str) -> list[bytes | None]:
        """The histories or indexes (``table``) behind ``hashes``, whose keys ``keys()`` names
        (or, packed by the kernel, ``prefixes`` plus the hash in hex): named only by a backend
        that reads them as strings, since a request's couple of hundred key strings cost more
        than its scoring where the kernel packs the command or the read cache holds the
        blobs."""
        return await self.mget(keys())

    def cached_candidates(self, query: Query, params: Params, exclude_session: int | None
                          ) -> Candidates | None:
        """Neighbours and scores straight from the read cache when it holds every blob; None
        sends the request through the reads."""
        return None

    async def run_script(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        return await script(keys=keys, args=args)


class Standalone(Backend):
    raw_reads = True

    def __init__(self, settings: Settings, client: aioredis.Redis | None = None) -> None:
        super().__init__(settings, client)
        self.lane = transport.open_transport(self.client, settings.redis_timeout)
        self.tracked: transport.SharedConnection | None = None
        if settings.read_cache_mb > 0:
            keys = Keys(settings.namespace, settings.partitions)
            cache = ReadCache(keys.history_prefixes(), keys.index_prefixes(),
                              settings.read_cache_mb << 20)
            # None where the link cannot track (TLS): the cache stays off
            self.tracked = transport.shared_connection(self.client, settings.redis_timeout,
                                                       tracking=cache)
            if self.tracked is not None:
                self.cache = cache

    @staticmethod
    def connect(settings: Settings) -> aioredis.Redis:
        """Short timeouts and no retries: when Redis is unreachable the API must answer 503
        within a second, not hang. A blocking pool: a burst of concurrent requests waits (up
        to the timeout) for a free connection instead of failing with MaxConnectionsError."""
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.redis_url, max_connections=256, timeout=settings.redis_timeout,
            socket_timeout=settings.redis_timeout,
            socket_connect_timeout=settings.redis_timeout, retry=Retry(NoBackoff(), 0))
        return aioredis.Redis.from_pool(pool)

    async def close(self) -> None:
        await self.lane.close()
        if self.tracked is not None:
            await self.tracked.close()
        await super().close()

    async def read(self, command: bytes, args: list[bytes | str | int]) -> Any:
        """One command on the hot path's link (its raw reply)."""
        return await self.lane.execute(transport.pack(command, args))

    async def commands(self, commands: list[Command]) -> list[Any]:
        """One packed write."""
        packed = b"".join(transport.pack(name, args) for name, args in commands)
        replies = await self.lane.execute(packed, len(commands))
        return [replies] if len(commands) == 1 else list(replies)

    async def mget(self, keys: list[str]) -> list[bytes | None]:
        """MGET through a pre-packed command on a pooled connection."""
        if not keys:
            return []
        reply: list[bytes | None] = await self.lane.execute(transport.pack(b"MGET", keys))
        return reply

    async def blobs(self, hashes: U64, prefixes: list[bytes], keys: Callable[[], list[str]],
                    table: str) -> list[bytes | None]:
        """Through the read cache when there is one; else one MGET packed by the kernel (two
        hundred keys are two hundred Python strings otherwise)."""
        if not len(hashes):
            return []
        if self.cache is not None and (blobs := await self._cached(
                getattr(self.cache, table), hashes)) is not None:
            return blobs
        reply: list[bytes | None] = await self.lane.execute(kernel.mget(hashes, prefixes))
        return reply

    async def _cached(self, table: Table, hashes: U64) -> list[bytes | None] | None:
        """The blobs through the read cache; None if it turns out unusable: a Redis that
        refuses tracking (an ACL without CLIENT or HELLO, a managed service that disables
        them) answers the tracked link's handshake with an error, and the cache is then
        switched off for good, so that reads go uncached instead of failing every request."""
        link = self.tracked
        if self.cache is None or link is None:
            return None
        if link.connection is None:
            try:
                await link.execute(transport.pack(b"PING", []))
            except ResponseError as exc:
                log.warning("read cache off: Redis refused client-side caching (%s)", exc)
                self.cache = None
                return None
        return await self.cache.read(table, hashes, link.execute)

    def cached_candidates(self, query: Query, params: Params, exclude_session: int | None
                          ) -> Candidates | None:
        link = self.tracked
        if self.cache is None or link is None or link.connection is None:
            return None
        return self.cache.candidates(query, params, exclude_session)

    async def run_script(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """On the link: redis-py would encode thousands of arguments one by one."""
        return await transport.run_script(self.lane.execute, script, keys, args)


class Cluster(Backend):
    one_slot_scripts = True

    @staticmethod
    def connect(settings: Settings) -> aioredis.Redis:
        return cast(aioredis.Redis, RedisCluster(
            startup_nodes=cluster_seeds(settings.redis_url),
            socket_timeout=settings.redis_timeout,
            socket_connect_timeout=settings.redis_timeout,
            retry=Retry(NoBackoff(), 0),
            max_connections=256,
        ))

    async def _memory_policies(self) -> list[Any]:
        cluster: Any = self.client
        return list((await cluster.execute_command(
            "CONFIG", "GET", "maxmemory-policy", target_nodes=RedisCluster.PRIMARIES)).values())

    def _queue_mget(self, pipe: Any, keys: list[str]) -> list[list[int]]:
        """One MGET per hash slot: the pipeline sends each node its share in one round trip,
        all nodes at once (execute_command: cluster pipelines refuse their mget() helper)."""
        groups = list(_by_slot(keys).values())
        for group in groups:
            pipe.execute_command("MGET", *(keys[n] for n in group))
        return groups

    async def mget(self, keys: list[str]) -> list[bytes | None]:
        if not keys:
            return []
        with contextlib.suppress(*UNAVAILABLE):
            return await self._mget_per_node(keys)
        # a moved slot, a failing node or a map not loaded yet: the client's pipeline follows
        # redirects and refreshes its slot map
        return await super().mget(keys)

    async def _mget_per_node(self, keys: list[str]) -> list[bytes | None]:
        """The lean read: one packed write of per-slot MGETs to each master, all masters at
        once, on connections taken from redis-py's nodes (its cluster pipeline costs more
        Python per request than the reads themselves)."""
        cluster: Any = self.client
        by_node: dict[str, tuple[Any, list[list[int]]]] = {}
        for slot, group in _by_slot(keys).items():
            node = cluster.nodes_manager.get_node_from_slot(slot)
            by_node.setdefault(node.name, (node, []))[1].append(group)
        out: list[bytes | None] = [None] * len(keys)

        async def read(node: Any, node_groups: list[list[int]]) -> None:
            packed = b"".join(transport.pack(b"MGET", [keys[n] for n in group])
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


class Embedded(Backend):
    other_processes = False
    _server: ClassVar[Any] = None
    """One in-process server per process: the API and the worker of the demo share it."""

    @staticmethod
    def connect(settings: Settings) -> aioredis.Redis:
        import fakeredis

        if Embedded._server is None:
            Embedded._server = fakeredis.FakeServer()
        client: aioredis.Redis = fakeredis.aioredis.FakeRedis(server=Embedded._server)
        return client

    async def check_memory_policy(self) -> None:
        """In process: nothing evicts."""


def backend_class(url: str) -> type[Backend]:
    if url == MEMORY_URL:
        return Embedded
    if url.startswith(CLUSTER_SCHEME):
        return Cluster
    return Standalone


def open_backend(settings: Settings, client: aioredis.Redis | None = None) -> Backend:
    """The backend for ``settings.redis_url`` (on ``client`` when given)."""
    return backend_class(settings.redis_url)(settings, client)


def connect(settings: Settings) -> aioredis.Redis:
    """A client for ``settings.redis_url`` alone (workers, tools)."""
    return backend_class(settings.redis_url).connect(settings)


def cluster_seeds(url: str) -> list[ClusterNode]:
    """``redis+cluster://h1:p1,h2:p2[/...]`` -> seed nodes (the client discovers the rest)."""
    hosts = url[len(CLUSTER_SCHEME):].split("/", 1)[0]
    seeds = []
    for part in filter(None, hosts.split(",")):
        host, _, port = part.rpartition(":")
        if not host or not port.isdigit():
            raise BadUrl(f"redis_url: {part!r} is not host:port; write "
                             "redis+cluster://host:port[,host:port...]")
        seeds.append(ClusterNode(host.strip("[]"), int(port)))
    if not seeds:
        raise BadUrl("redis_url: name at least one seed node, as in "
                         "redis+cluster://127.0.0.1:7000")
    return seeds


def _by_slot(keys: list[str]) -> dict[int, list[int]]:
    """Positions of ``keys`` grouped by hash slot (multi-key commands stay within one)."""
    groups: dict[int, list[int]] = {}
    for n, key in enumerate(keys):
        groups.setdefault(key_slot(key.encode()), []).append(n)
    return groups
