"""Partition stream entries as the worker reads them: the entry, the order of stream ids, and
the XREADGROUP a commit can carry behind it (``workers/batch.py``)."""

from __future__ import annotations

from typing import Any, NamedTuple

from service.core.stream import fields_of
from service.settings import Settings
from service.store import transport
from service.store.keyspace import GROUP, Keys


class Conflict(Exception):
    """The watermark moved under us: another worker committed this partition meanwhile."""


class Entry(NamedTuple):
    """A stream entry as read, ``flat`` being ``[field, value, ...]`` (a named tuple: one is
    built per event read)."""

    id: str
    flat: list[bytes]

    @property
    def fields(self) -> dict[bytes, bytes]:
        return fields_of(self.flat)


def id_tuple(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def flat(fields: dict[bytes, bytes]) -> list[bytes]:
    return [x for pair in fields.items() for x in pair]


def before(entry_id: str) -> str:
    """The stream id just before ``entry_id``: XREADGROUP returns entries after the id given."""
    ms, seq = id_tuple(entry_id)
    return f"{ms}-{seq - 1}" if seq > 0 else f"{ms - 1}-{2**64 - 1}"


def read_command(keys: Keys, settings: Settings, p: int, backlog: bool,
                 block: bool = True) -> bytes:
    """XREADGROUP of partition ``p``'s next batch, packed: new entries, or with ``backlog``
    the ones its consumer left pending."""
    wait: list[bytes | int] = [b"BLOCK", settings.block_ms] if block and not backlog else []
    return transport.pack(b"XREADGROUP", [
        b"GROUP", GROUP, keys.consumer(p), b"COUNT", settings.batch_size, *wait,
        b"STREAMS", keys.stream(p), b"0" if backlog else b">"])


def entries_of(raw: Any) -> list[Entry]:
    """XREADGROUP's raw reply for one stream as entries (a deleted entry's fields are nil)."""
    if not raw:
        return []
    # RESP3 (redis-py's default here) answers a map stream -> entries, RESP2 a list
    messages = next(iter(raw.values())) if isinstance(raw, dict) else raw[0][1]
    return [Entry(mid.decode(), fields) for mid, fields in messages if fields is not None]
