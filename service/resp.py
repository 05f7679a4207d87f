"""A small RESP writer for the hot paths: the request's MGET of a couple of hundred keys and
the worker's commit script with thousands of arguments.

redis-py encodes and length-prefixes every argument in Python (about 2 us each); here the
command is assembled with one join and sent on a pooled connection. Replies are still parsed by
redis-py's hiredis reader.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis


def pack(command: bytes, args: Sequence[bytes | str | int | float]) -> bytes:
    """``command args...`` as a RESP array of bulk strings (arguments encoded as ``arg``)."""
    out = [b"*%d\r\n$%d\r\n%s\r\n" % (len(args) + 1, len(command), command)]
    append = out.append
    for a in args:
        raw = a if type(a) is bytes else arg(a)
        append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


def arg(value: bytes | str | int | float) -> bytes:
    """One argument as Redis receives it (floats as repr, like redis-py)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    if isinstance(value, float):
        return repr(value).encode()
    return str(value).encode()


class Lane:
    """Pooled connections for the hot path, kept out of redis-py's pool between calls (its
    get/release cost more than a small MGET). A connection that fails is disconnected and
    handed back to the pool, so errors and reconnects stay redis-py's business."""

    def __init__(self, client: aioredis.Redis, keep: int = 64) -> None:
        self.client = client
        self.keep = keep
        self._idle: list[Any] = []

    async def execute(self, packed: bytes, replies: int = 1) -> Any:
        """Send one write holding ``replies`` commands; return the reply (or the list of them
        when ``replies`` > 1). An error reply is raised, as redis-py would."""
        pool = self.client.connection_pool
        conn = self._idle.pop() if self._idle else await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await conn.send_packed_command(packed, check_health=False)
            out = [await conn.read_response() for _ in range(replies)]
        except BaseException:
            # the others are likely just as dead (Redis restarted): drop them all, so the
            # requests after an outage reconnect instead of failing one idle socket each
            for dead in [conn, *self._idle]:
                await dead.disconnect()
                await pool.release(dead)
            self._idle.clear()
            raise
        if len(self._idle) < self.keep:
            self._idle.append(conn)
        else:
            await pool.release(conn)
        for reply in out:
            if isinstance(reply, Exception):
                raise reply
        return out[0] if replies == 1 else out

    async def close(self) -> None:
        pool = self.client.connection_pool
        while self._idle:
            await pool.release(self._idle.pop())


async def execute(client: aioredis.Redis, packed: bytes) -> Any:
    """Send a packed command on one of the client's pooled connections and read the reply;
    an error reply is raised, as redis-py would."""
    pool = client.connection_pool
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        await conn.send_packed_command(packed, check_health=False)
        reply = await conn.read_response()
    except BaseException:
        await conn.disconnect()
        raise
    finally:
        await pool.release(conn)
    if isinstance(reply, Exception):
        raise reply
    return reply
