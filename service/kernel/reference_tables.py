"""The pure reference of the compiled tables (``native/tables.c``): the frequency table (u64
keys, f64 values, NaN marks an empty slot) and the object tables (u64 keys, 0 marks an empty
slot, a list of objects), open addressing with a salted slot hash. Plain loops: correct, and
much slower per request than the compiled versions."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import numpy.typing as npt

Buffer = bytes | npt.NDArray[Any]
U64 = npt.NDArray[np.uint64]
F64 = npt.NDArray[np.float64]

_MASK = (1 << 64) - 1
_salt = 0


def reseed() -> None:
    """A new salt for the tables' slot hashing (a forked process's own, not its parent's)."""
    global _salt
    _salt = int.from_bytes(os.urandom(8), "little") or 1


reseed()


def _mix(key: int) -> int:
    """The tables' slot hash: the salt, then murmur3's fmix64 (no id can be chosen to collide)."""
    key ^= _salt
    key ^= key >> 33
    key = (key * 0xFF51AFD7ED558CCD) & _MASK
    key ^= key >> 33
    key = (key * 0xC4CEB9FE1A85EC53) & _MASK
    return key ^ (key >> 33)


def _u64(buffer: Buffer) -> U64:
    return np.frombuffer(buffer, dtype="<u8").astype(np.uint64)


def _f64(buffer: Buffer) -> F64:
    return np.frombuffer(buffer, dtype=np.float64)


# --- the frequency table: u64 keys, f64 values, NaN marks an empty slot ----------------------

def _table_mask(table_keys: Buffer, table_values: Buffer) -> int:
    n = len(table_keys)
    if n == 0 or n & (n - 1) or len(table_values) != n:
        raise ValueError("a table is two arrays of the same power-of-2 size")
    return n - 1


def lookup(table_keys: Buffer, table_values: Buffer, items: Buffer) -> tuple[bytes, bytes]:
    """Each item's value (0 when absent) and the absent items."""
    keys, values = np.asarray(table_keys), np.asarray(table_values)
    mask = _table_mask(keys, values)
    found = []
    absent = []
    for item in _u64(items).tolist():
        at = _mix(item) & mask
        while not math.isnan(values[at]) and int(keys[at]) != item:
            at = (at + 1) & mask
        if math.isnan(values[at]):
            found.append(0.0)
            absent.append(item)
        else:
            found.append(float(values[at]))
    return (np.array(found, np.float64).tobytes(), np.array(absent, np.uint64).tobytes())


def insert(table_keys: Buffer, table_values: Buffer, items: Buffer, values: Buffer) -> int:
    """Set each item's value in place; returns how many were new."""
    keys, slots = np.asarray(table_keys), np.asarray(table_values)
    mask = _table_mask(keys, slots)
    new_items, new_values = _u64(items), _f64(values)
    if len(new_values) != len(new_items):
        raise ValueError("one value per item")
    used = int(np.count_nonzero(~np.isnan(slots)))
    added = 0
    for item, value in zip(new_items.tolist(), new_values.tolist(), strict=True):
        if math.isnan(value):
            raise ValueError("values must not be NaN")
        at = _mix(item) & mask
        while not math.isnan(slots[at]) and int(keys[at]) != item:
            at = (at + 1) & mask
        if math.isnan(slots[at]):
            if used + 1 > mask:  # keep one slot empty, or probes would never end
                raise ValueError("the table is full")
            used += 1
            added += 1
            keys[at] = item
        slots[at] = value
    return added


def select(table_keys: Buffer, table_values: Buffer, items: Buffer, values: Buffer,
           inside: bool) -> tuple[bytes, bytes]:
    """The items (with their values, one per item) that are in the table when ``inside``, or
    that are not otherwise, in their order."""
    keys, slots = np.asarray(table_keys), np.asarray(table_values)
    mask = _table_mask(keys, slots)
    wanted, their_values = _u64(items), _f64(values)
    if len(their_values) != len(wanted):
        raise ValueError("one value per item")
    kept: list[int] = []
    kept_values: list[float] = []
    for item, value in zip(wanted.tolist(), their_values.tolist(), strict=True):
        at = _mix(item) & mask
        while not math.isnan(slots[at]) and int(keys[at]) != item:
            at = (at + 1) & mask
        if (not math.isnan(slots[at])) == inside:
            kept.append(item)
            kept_values.append(value)
    return (np.array(kept, np.uint64).tobytes(), np.array(kept_values, np.float64).tobytes())


def first_absent(items: Buffer, taken: Buffer, k: int) -> bytes:
    """The positions (u32) of the first ``k`` items (fewer when the items run out) that are not
    among ``taken``."""
    skip = set(_u64(taken).tolist())
    out: list[int] = []
    for position, item in enumerate(_u64(items).tolist()):
        if len(out) >= k:
            break
        if item not in skip:
            out.append(position)
    return np.array(out, np.uint32).tobytes()


# --- object tables: u64 keys (0 marks an empty slot), a list of objects ----------------------

def _objects_mask(table_keys: Buffer, table_slots: list[Any]) -> int:
    n = len(table_keys)
    if n == 0 or n & (n - 1) or len(table_slots) != n:
        raise ValueError("an object table is a u64 buffer and a list of the same power-of-2 size")
    return n - 1


def _objects_find(keys: U64, mask: int, key: int) -> int:
    """The slot holding key, else the empty slot ending its probe run; -1 when full."""
    at = _mix(key) & mask
    for _ in range(mask + 1):
        here = int(keys[at])
        if here == 0 or here == key:
            return at
        at = (at + 1) & mask
    return -1


def _objects_at(keys: U64, mask: int, key: int) -> int:
    if key == 0:
        return -1
    at = _objects_find(keys, mask, key)
    return at if at >= 0 and int(keys[at]) == key else -1


def objects_get(table_keys: Buffer, table_slots: list[Any], hashes: Buffer) -> list[Any]:
    """Each hash's object, None where absent (hash 0 is never present)."""
    keys = np.asarray(table_keys)
    mask = _objects_mask(keys, table_slots)
    out = []
    for h in _u64(hashes).tolist():
        at = _objects_at(keys, mask, h)
        out.append(table_slots[at] if at >= 0 else None)
    return out


def objects_put(table_keys: Buffer, table_slots: list[Any], hash: int, value: Any) -> Any:
    """The value replaced, or None if the hash is new."""
    keys = np.asarray(table_keys)
    mask = _objects_mask(keys, table_slots)
    if hash == 0:
        raise ValueError("hash 0 marks an empty slot")
    at = _objects_find(keys, mask, hash)
    if at < 0:
        raise ValueError("the table is full")
    old = None
    if int(keys[at]) == 0:
        keys[at] = hash
    else:
        old = table_slots[at]
    table_slots[at] = value
    return old


def objects_pop(table_keys: Buffer, table_slots: list[Any], hash: int) -> Any:
    """The value removed, or None if absent; later entries of the probe run shift back into
    the hole, so no tombstone is needed."""
    keys = np.asarray(table_keys)
    mask = _objects_mask(keys, table_slots)
    at = _objects_at(keys, mask, hash)
    if at < 0:
        return None
    old = table_slots[at]
    hole = j = at
    while True:
        j = (j + 1) & mask
        if int(keys[j]) == 0:
            break
        home = _mix(int(keys[j])) & mask
        # the entry at j may move to the hole unless its home lies cyclically in (hole, j]
        stays = (hole < home <= j) if hole <= j else (home > hole or home <= j)
        if stays:
            continue
        keys[hole] = keys[j]
        table_slots[hole] = table_slots[j]
        hole = j
    keys[hole] = 0
    table_slots[hole] = None
    return old
