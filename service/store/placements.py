"""The placements in Redis (``core/placements.py``): changed one at a time under a limit, read
whole by every serve process when their version moves."""

from __future__ import annotations

from typing import cast

from service.core.placements import MAX_PLACEMENTS
from service.store.part import Part


class TooManyPlacements(Exception):
    """A new placement would pass ``MAX_PLACEMENTS``."""


class Placements(Part):
    async def version(self) -> int:
        """What a serve process polls: it moves with every change."""
        return int(await self.redis.get(self.keys.placements_version()) or 0)

    async def all(self) -> tuple[int, dict[str, bytes]]:
        """The version and every placement's JSON, read as one step."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(self.keys.placements_version())
            pipe.hgetall(self.keys.placements())
            version, found = await pipe.execute()
        return int(version or 0), {name.decode("utf-8", "surrogatepass"): raw
                                   for name, raw in cast(dict[bytes, bytes], found).items()}

    async def get(self, name: str) -> bytes | None:
        raw = await self.redis.hget(self.keys.placements(), name.encode("utf-8", "surrogatepass"))
        return cast(bytes | None, raw)

    async def put(self, name: str, body: str) -> int:
        version = await self.scripts.placement(self.keys.placements(),
                                               self.keys.placements_version(), "put", name,
                                               body, MAX_PLACEMENTS)
        if version == 0:
            raise TooManyPlacements(name)
        return version

    async def delete(self, name: str) -> bool:
        return await self.scripts.placement(self.keys.placements(),
                                            self.keys.placements_version(), "delete",
                                            name) > 0
