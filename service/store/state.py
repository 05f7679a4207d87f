"""The state the API and the tools read and write in Redis, one part per concern: ingestion
(and the cluster's journal), the reads behind every recommendation (the answers are
``service/answers``'), the catalogue, the operator's rewrites, the model record, statistics and
feedback. ``Store`` builds them over one backend; topology differences are the backend's
(``backends.py``), keys ``keyspace.Keys``'s, scripts ``scripts.Scripts``'.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from service.failures import Refused
from service.settings import Settings
from service.store.admin import Admin
from service.store.backends import open_backend
from service.store.catalogue import Catalogue
from service.store.feedback import Feedback
from service.store.ingestion import Ingestion, Journal
from service.store.keyspace import GROUP, Keys
from service.store.modelrecord import ModelRecords
from service.store.placements import Placements
from service.store.readcache import ReadCache
from service.store.reads import Reads
from service.store.scripts import Scripts
from service.store.sequence import SequenceModels
from service.store.statistics import Statistics


class OtherPartitions(Refused, RuntimeError):
    """The namespace was laid out with another partition count than this process'."""


async def ensure_groups(client: aioredis.Redis, keys: Keys) -> None:
    """Create the consumer group of every partition stream (from the start; idempotent), so
    events accepted before any worker ever ran are still delivered."""
    for _, stream in keys.partition_keys():
        try:
            await client.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise



class Store:
    """The composition root of what the API and the tools read and write in Redis: one
    backend (the topology), its scripts and keys, and a part per concern."""

    def __init__(self, settings: Settings, client: aioredis.Redis | None = None) -> None:
        self.settings = settings
        self.backend = open_backend(settings, client)
        self.redis = self.backend.client
        self.keys = Keys(settings.namespace, settings.partitions)
        self.scripts = Scripts(self.redis)
        self.ingestion = Ingestion(settings, self.backend, self.scripts, self.keys)
        self.journal = Journal(self.ingestion)
        self.reads = Reads(settings, self.backend, self.scripts, self.keys)
        self.items = Catalogue(settings, self.backend, self.scripts, self.keys, self.reads)
        self.admin = Admin(settings, self.backend, self.scripts, self.keys, self.reads)
        self.model = ModelRecords(settings, self.backend, self.scripts, self.keys)
        self.sequence = SequenceModels(settings, self.backend, self.scripts, self.keys)
        self.placements = Placements(settings, self.backend, self.scripts, self.keys)
        self.stats = Statistics(settings, self.backend, self.scripts, self.keys, self.journal)
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

    async def warm(self) -> None:
        """Read, in the background of a start, what the first request with rules would wait
        for: the catalogue copy (a whole read, seconds for a million records) and the trending
        snapshot its fill orders by. Nothing without a catalogue."""
        if int(await self.redis.get(self.keys.catalog_version()) or 0) > 0:
            await self.items.index()
            await self.reads.trending_snapshot()
