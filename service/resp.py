"""A small RESP writer for the hot path: one MGET of a couple of hundred keys per request.

redis-py encodes and length-prefixes every argument in Python (about 2 us per key); here the
command is assembled with one join. Replies are still parsed by redis-py's hiredis reader.
"""

from __future__ import annotations

from collections.abc import Sequence


def pack(command: bytes, args: Sequence[bytes]) -> bytes:
    """``command args...`` as a RESP array of bulk strings."""
    head = b"*%d\r\n$%d\r\n%s\r\n" % (len(args) + 1, len(command), command)
    return head + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
