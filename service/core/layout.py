"""The one definition of how ids become hashes and how learned state is packed into bytes.

Ids are opaque: item and session ids are hashed (BLAKE2b, 8 bytes, one personalisation per
kind), so any Unicode id has a fixed-size key and a fixed-size entry.

Learned state is packed into 16-byte entries that Redis stores as plain strings and the kernel
reads without decoding:

* a session's **history** entry: ``item hash (8, little-endian) | time key (8, big-endian)``;
* an item's **neighbour index** entry: ``time key (8, big-endian) | session hash (8)``, kept
  sorted, so the newest entries are the blob's tail and byte order is time order.

The **trim rule** (``index_limit``) is here too: an index keeps its newest ``index_cap``
entries, and may hold up to ``index_limit(index_cap)`` between lazy trims. The Lua scripts
receive the limit as an argument; the compiled kernel's ``ENTRY`` is held equal to
``ENTRY_BYTES`` by the tests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

HASH_BYTES = 8
ENTRY_BYTES = 16

ITEM_SHARDS = 64
"""Item keys are spread over this many hash tags. Fixed: changing it would move every item key."""

MAX_TIME_KEY = (1 << 63) - 1

INDEX_DTYPE = np.dtype([("t", ">i8"), ("s", "<u8")])
HISTORY_DTYPE = np.dtype([("i", "<u8"), ("t", ">i8")])
assert INDEX_DTYPE.itemsize == HISTORY_DTYPE.itemsize == ENTRY_BYTES


# cached: a worker batch or a request hashes the same ids several times (partition, history
# key, update rule), and popular ids recur across batches
ITEM_PERSON = b"sessionrec-item"
SESSION_PERSON = b"sessionrec-sess"
"""BLAKE2b personalisations: an item and a session with the same id hash apart."""


@lru_cache(maxsize=1 << 16)
def item_hash(item_id: str) -> bytes:
    return hashlib.blake2b(item_id.encode("utf-8", "surrogatepass"), digest_size=HASH_BYTES,
                           person=ITEM_PERSON).digest()


@lru_cache(maxsize=1 << 16)
def session_hash(session_id: str) -> bytes:
    return hashlib.blake2b(session_id.encode("utf-8", "surrogatepass"), digest_size=HASH_BYTES,
                           person=SESSION_PERSON).digest()


def hash_number(h: bytes) -> int:
    return int.from_bytes(h, "little")


def partition_of(session: bytes, partitions: int) -> int:
    """The stream partition of a session hash: producers writing to Redis directly use this."""
    return hash_number(session) % partitions


def shard_of(item: bytes) -> int:
    return hash_number(item) % ITEM_SHARDS


def time_key(ts: float) -> int:
    """Microseconds, clamped to a non-negative int64 so big-endian bytes sort like times."""
    key = round(ts * 1_000_000)
    # the worker calls this per event: the common case without min/max calls
    return key if 0 <= key <= MAX_TIME_KEY else min(max(key, 0), MAX_TIME_KEY)


def index_limit(cap: int) -> int:
    """Most entries a stored index holds: its cap plus the slack the worker's in-place appends
    may add before a trim (the scripts are given this number, never the rule)."""
    return cap + max(16, cap // 4)


def entries_of(blob: bytes | None, dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """A blob's whole entries as ``dtype``'s records (``INDEX_DTYPE`` or ``HISTORY_DTYPE``),
    without copying; a torn last entry left out, none for no blob."""
    blob = blob or b""
    return np.frombuffer(blob[:len(blob) - len(blob) % ENTRY_BYTES], dtype)


def newest_entries(blob: bytes, cap: int) -> bytes:
    """What an index blob holds that counts: its newest ``cap`` entries."""
    return blob[max(0, len(blob) - cap * ENTRY_BYTES):]


def history_blob(entries: Iterable[tuple[bytes, int]]) -> bytes:
    """A whole history from ``(item hash, time key)`` pairs, oldest first (one call per
    session, not per entry: the worker re-packs every history a batch touches)."""
    return b"".join([item + tkey.to_bytes(8, "big") for item, tkey in entries])


def index_entry(tkey: int, session: bytes) -> bytes:
    return tkey.to_bytes(8, "big") + session


def index_sessions(blob: bytes) -> list[bytes]:
    """Index blob -> the session hashes it lists, oldest first."""
    return [blob[o + ENTRY_BYTES - HASH_BYTES:o + ENTRY_BYTES]
            for o in range(0, len(blob) - len(blob) % ENTRY_BYTES, ENTRY_BYTES)]


def split_entries(blob: bytes) -> list[tuple[bytes, int]]:
    """History blob -> [(item hash, time key)], oldest first."""
    return [(blob[o:o + HASH_BYTES], int.from_bytes(blob[o + HASH_BYTES:o + ENTRY_BYTES], "big"))
            for o in range(0, len(blob) - len(blob) % ENTRY_BYTES, ENTRY_BYTES)]
