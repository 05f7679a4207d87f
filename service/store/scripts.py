"""The one registry of the Lua scripts (``service/store/lua/*.lua``): each read once, with the
shared operations of ``ops.lua`` spliced in where a script says ``--[[ops]]``, registered once
per client, and called through one typed method here that knows its KEYS and ARGV. No caller
reads a file or lays out a script's arguments, except the two whose arguments are assembled
by a builder: ``ingest`` (``Ingestion.append_live``) and ``commit``/``apply``
(``workers/commit.py``), sent packed on the hot path's transport.

Scripts run by EVALSHA (redis-py's ``Script`` falls back to EVAL after a restart or a failover
that lost the script cache), so each call is one round trip with no loading step.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any, Literal

from redis.commands.core import AsyncScript

NAMES = ("ingest", "append", "journal", "scrub", "ratelimit", "catalog", "model", "experiment",
         "placement", "answer", "commit",
         "intent", "apply", "trim", "sweep", "lease")


@cache
def lua(name: str) -> str:
    """Source of one script, with ``ops.lua`` spliced in where it says ``--[[ops]]``."""
    def read(n: str) -> str:
        return resources.files("service.store").joinpath(f"lua/{n}.lua").read_text("utf-8")
    return read(name).replace("--[[ops]]", read("ops"))


class Scripts:
    """Every script, registered on one client."""

    def __init__(self, client: Any) -> None:
        self.registered: dict[str, AsyncScript] = {
            name: client.register_script(lua(name)) for name in NAMES}
        self.ingest = self.registered["ingest"]
        """API: an event batch onto its partition's stream and live sessions, idempotently
        (KEYS and ARGV laid out by ``Ingestion.append_live``)."""
        self.commit = self.registered["commit"]
        """Worker: a batch's effects, watermark and XACK at once (``workers/commit.py``)."""
        self.answer = self.registered["answer"]
        """API: the answers of one loop turn in one partition and hour, each within the client's
        share and the partition's hourly budget (``Feedback.record_answer``, on the hot
        path's transport)."""
        self.apply = self.registered["apply"]
        """Worker, on a cluster: one other slot's share of a batch (``workers/commit.py``)."""

    # --- API ---------------------------------------------------------------------------------
    async def append(self, stream: str, entries: Sequence[dict[str, str]]) -> None:
        """Entries onto one partition stream, all or nothing (the producer path)."""
        args: list[Any] = []
        for fields in entries:
            args.append(2 * len(fields))
            for field, value in fields.items():
                args += [field, value]
        await self.registered["append"](keys=[stream], args=args)

    async def journal(self, journal: str, once_key: str, token: str, payload: bytes,
                      record: str, cap: int) -> bytes:
        """A cluster batch spanning partitions, journalled with its idempotency record:
        ``b""`` when journalled, ``b"full"`` at ``cap``, else the first request's record."""
        reply: bytes = await self.registered["journal"](
            keys=[journal, once_key], args=[token, payload, record, cap])
        return reply

    async def ratelimit(self, bucket: str, now_ms: int, rate: float, burst: int) -> int:
        """Take one token from a client's bucket: 0 when admitted, else the ms to wait."""
        return int(await self.registered["ratelimit"](keys=[bucket], args=[now_ms, rate, burst]))

    async def scrub(self, epoch: str, histories: Sequence[str], item: bytes) -> int:
        """An item out of one partition's histories, its admin epoch bumped in the same step;
        how many histories held it."""
        return int(await self.registered["scrub"](keys=[epoch, *histories], args=[item]))

    async def catalog(self, version: str, changes: str, cap: int, items: Sequence[bytes]
                      ) -> int:
        """Log that the records of ``items`` (hashes) changed; the catalogue's new version."""
        return int(await self.registered["catalog"](
            keys=[version, changes], args=[cap, b"".join(items).hex()]))

    async def model(self, record: str, read_version: int, fields: dict[str, str]
                    ) -> tuple[bool, int]:
        """Write the model record's ``fields`` unless its version moved past ``read_version``:
        whether written, and the version now."""
        args: list[Any] = [read_version]
        for name, value in fields.items():
            args += [name, value]
        written, version = await self.registered["model"](keys=[record], args=args)
        return bool(written), int(version)

    async def experiment(self, running: str, experiments: str, ends: str,
                         action: Literal["start", "end"], name: str, body: str, serial: int,
                         ended_ms: int = 0) -> tuple[bool, str]:
        """Start (``body``: its JSON) or end (``body``: the ended record, ``ended_ms`` its end)
        the experiment: whether done, and on a refused start the running one's JSON."""
        done, current = await self.registered["experiment"](
            keys=[running, experiments, ends], args=[action, name, body, serial, ended_ms])
        return bool(done), current.decode() if isinstance(current, bytes) else str(current)

    async def placement(self, placements: str, version: str, serials: str, serial: str,
                        action: Literal["put", "delete"], name: str, body: str = "",
                        limit: int = 0) -> int:
        """Put (``body``: its JSON) or delete a placement: the placements' new version, 0 when
        a new one would pass ``limit``, -1 when the one to delete does not exist."""
        return int(await self.registered["placement"](
            keys=[placements, version, serials, serial],
            args=[action, name, body, limit]))

    # --- worker ------------------------------------------------------------------------------
    async def lease(self, key: str, worker: str, lease_ms: int,
                    action: Literal["take", "renew", "release"]) -> bool:
        """Whether ``worker`` holds the partition's lease after taking, renewing or releasing
        it."""
        return bool(await self.registered["lease"](keys=[key], args=[worker, lease_ms, action]))

    async def trim(self, stream: str) -> int:
        """Trim a stream below its oldest entry some group has not acknowledged."""
        return int(await self.registered["trim"](keys=[stream]))

    async def sweep(self, names: str, doc_freq: str, cursor: bytes, step: int,
                    index_prefix: str) -> tuple[bytes, list[bytes]]:
        """One step over an item shard: the next cursor and the ids of the items whose index
        expired (their names and frequencies deleted; trending is the caller's)."""
        reply = await self.registered["sweep"](keys=[names, doc_freq],
                                               args=[cursor, step, index_prefix])
        return reply[0], list(reply[1:])

    async def intent(self, stream: str, watermark: str, inflight: str, epoch: str,
                     expected_mark: str, last: str, first: str, read_epoch: str) -> bool:
        """Fix a cluster batch's end in its partition's slot before its effects go to other
        slots; False when the watermark moved, there is a gap or the batch runs past the
        in-flight mark."""
        reply = await self.registered["intent"](
            keys=[stream, watermark, inflight, epoch],
            args=[expected_mark, last, first, read_epoch])
        return int(reply) != -1
