"""The one registry of the Lua scripts (``service/store/lua/*.lua``): each read once, with the
shared operations of ``ops.lua`` spliced in where a script says ``--[[ops]]``, and registered
once per client. Every caller reaches a script through ``Scripts``; none reads a file.

Scripts run by EVALSHA (redis-py's ``Script`` falls back to EVAL after a restart or a failover
that lost the script cache), so each call is one round trip with no loading step.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import cache
from importlib import resources
from typing import Any

from redis.commands.core import AsyncScript


@cache
def lua(name: str) -> str:
    """Source of one script, with ``ops.lua`` spliced in where it says ``--[[ops]]``."""
    def read(n: str) -> str:
        return resources.files("service.store").joinpath(f"lua/{n}.lua").read_text("utf-8")
    return read(name).replace("--[[ops]]", read("ops"))


@dataclass(frozen=True, slots=True)
class Scripts:
    """Every script, registered on one client. Field names are the files' names."""

    ingest: AsyncScript  # API: an event batch onto its partition stream, idempotently
    append: AsyncScript  # API: a cluster batch's events, one partition at a time
    journal: AsyncScript  # API: the cluster journal of batches not yet appended
    scrub: AsyncScript  # admin: an item out of every history that holds it
    ratelimit: AsyncScript  # API: a token bucket per client address
    commit: AsyncScript  # worker: a batch's effects, watermark and XACK in one step
    intent: AsyncScript  # worker: a cluster batch's effects recorded before they are applied
    apply: AsyncScript  # worker: a recorded intent applied to one item shard
    trim: AsyncScript  # worker: neighbour indexes cut back to their cap
    sweep: AsyncScript  # worker: expired items' names, frequencies and trending entries
    lease: AsyncScript  # worker: a partition's lease taken, renewed or released

    @classmethod
    def register(cls, client: Any) -> Scripts:
        return cls(**{f.name: client.register_script(lua(f.name)) for f in fields(cls)})
