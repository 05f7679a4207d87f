"""The pure reference of the compiled RESP packing (``native/resp.c``): the commands the
request path writes to Redis as bytes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from service.kernel.reference_tables import Buffer

# --- RESP packing ----------------------------------------------------------------------------

def _bulk(arg: bytes | str | int | float) -> bytes:
    if isinstance(arg, bytes):
        data = arg
    elif isinstance(arg, str):
        data = arg.encode("utf-8", "surrogatepass")
    elif isinstance(arg, float):
        data = repr(arg).encode()
    elif isinstance(arg, int):
        data = str(arg).encode()
    else:
        raise TypeError(f"cannot send a {type(arg).__name__} to Redis")
    return b"$%d\r\n%s\r\n" % (len(data), data)


def pack(command: bytes, args: Sequence[bytes | str | int | float]) -> bytes:
    """The command as a RESP array of bulk strings: bytes as they are, str as UTF-8 (lone
    surrogates kept), int as str(), float as repr()."""
    return b"*%d\r\n" % (len(args) + 1) + _bulk(command) + b"".join(map(_bulk, args))


def mget(hashes: Buffer, prefixes: list[bytes]) -> bytes:
    """MGET of ``prefixes[h % len(prefixes)] + hex(h)`` for each little-endian u64 hash h."""
    if not prefixes:
        raise ValueError("no prefixes")
    if any(not isinstance(p, bytes) for p in prefixes):
        raise TypeError("prefixes must be bytes")
    raw = np.ascontiguousarray(np.frombuffer(hashes, dtype="<u8")).tobytes() \
        if not isinstance(hashes, bytes) else hashes
    keys = [prefixes[int.from_bytes(raw[o:o + 8], "little") % len(prefixes)]
            + raw[o:o + 8].hex().encode() for o in range(0, len(raw) - len(raw) % 8, 8)]
    return pack(b"MGET", keys)
