"""The placements in Redis (``core/placements.py``): changed one at a time under a limit, read
whole by every serve process when their version moves. Each carries the serial it was created
with (its counts' key: ``core/feedback.placement_code``)."""

from __future__ import annotations

from typing import cast

from service.core.placements import MAX_PLACEMENTS
from service.store.part import Part


class TooManyPlacements(Exception):
    """A new placement would pass ``MAX_PLACEMENTS``."""


def _name(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogatepass")


class Placements(Part):
    async def version(self) -> int:
        """What a serve process polls: it moves with every change."""
        return int(await self.redis.get(self.keys.placements_version()) or 0)

    async def all(self) -> tuple[int, dict[str, tuple[bytes, int]]]:
        """The version and every placement's JSON and serial, read as one step."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(self.keys.placements_version())
            pipe.hgetall(self.keys.placements())
            pipe.hgetall(self.keys.placement_serials())
            version, found, serials = await pipe.execute()
        serial_of = {_name(n): int(v) for n, v in cast(dict[bytes, bytes], serials).items()}
        return int(version or 0), {_name(n): (raw, serial_of.get(_name(n), 0))
                                   for n, raw in cast(dict[bytes, bytes], found).items()}

    async def get(self, name: str) -> tuple[bytes, int] | None:
        """A placement's JSON and serial (None: there is none)."""
        field = name.encode("utf-8", "surrogatepass")
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hget(self.keys.placements(), field)
            pipe.hget(self.keys.placement_serials(), field)
            raw, serial = await pipe.execute()
        return None if raw is None else (cast(bytes, raw), int(serial or 0))

    async def put(self, name: str, body: str) -> int:
        version = await self.scripts.placement(
            self.keys.placements(), self.keys.placements_version(),
            self.keys.placement_serials(), self.keys.placement_serial(), "put", name, body,
            MAX_PLACEMENTS)
        if version == 0:
            raise TooManyPlacements(name)
        return version

    async def delete(self, name: str) -> bool:
        return await self.scripts.placement(
            self.keys.placements(), self.keys.placements_version(),
            self.keys.placement_serials(), self.keys.placement_serial(), "delete", name) > 0
