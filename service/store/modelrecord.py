"""The scoring parameters' shared record in Redis: read, polled by version, changed as one
step against concurrent writers."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import cast

from service.core.modelparams import ModelRecord
from service.store.part import Part

MODEL_WRITE_TRIES = 20
"""Attempts at a model record change while other writers keep writing first."""


class ModelContention(Exception):
    """The model record kept changing under a write (answered 503: retry)."""


class ModelRecords(Part):
    async def record(self) -> ModelRecord:
        """The scoring parameters' shared record (version 0: never written)."""
        fields = cast(dict[bytes, bytes], await self.redis.hgetall(self.keys.model()))
        return ModelRecord.from_fields(fields)

    async def sessions_learned(self) -> int:
        """Sessions the learned state has counted (what idf weighting divides)."""
        return int(await self.redis.hget(self.keys.meta(), "sessions") or 0)

    async def version(self) -> int:
        """The record's version alone: what a serve process polls."""
        return int(await self.redis.hget(self.keys.model(), "version") or 0)

    async def update(self, change: Callable[[ModelRecord], ModelRecord]) -> ModelRecord:
        """``change`` applied to the record as one step: read, changed, written unless another
        writer wrote first (then read again and changed again). The record written."""
        for _ in range(MODEL_WRITE_TRIES):
            record = await self.record()
            new = change(record)
            written, version = await self.scripts.model(self.keys.model(), record.version,
                                                        new.fields())
            if written:
                return dataclasses.replace(new, version=version)
        raise ModelContention(f"the model record changed under {MODEL_WRITE_TRIES} writes")
