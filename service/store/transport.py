"""The hot paths' transport, a small RESP layer: the request's MGETs of a couple of hundred
keys and the worker's commit script with thousands of arguments.

redis-py encodes and length-prefixes every argument in Python; here a command is packed in one
pass (``kernel.pack``). A request's reads go over a ``SharedConnection``: one connection that
every concurrent request writes to, replies matched in order and parsed by hiredis, cheaper
than a round trip through redis-py's connection objects (their per-call timeout task, retry
wrapper and pool cost more than a small MGET). Where it cannot go (TLS), ``PooledConnections``
keeps a few of redis-py's connections out of its pool between calls.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import hiredis
import redis.asyncio as aioredis
from redis._parsers.base import BaseParser
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service import kernel

pack = kernel.pack
"""``pack(command, args)``: the command as a RESP array of bulk strings, arguments encoded as
redis-py does (bytes as they are, str as UTF-8, int as ``str``, float as ``repr``), in one
compiled pass: the worker's commit has thousands of arguments."""


class Transport(Protocol):
    async def execute(self, packed: bytes, replies: int = 1) -> Any: ...
    async def close(self) -> None: ...


def open_transport(client: aioredis.Redis, timeout: float) -> Transport:
    """A ``SharedConnection`` to the client's server (TCP or unix socket), or
    ``PooledConnections`` over the client's pool where it cannot speak (TLS)."""
    return shared_connection(client, timeout) or PooledConnections(client)


def shared_connection(client: aioredis.Redis, timeout: float, tracking: Tracking | None = None
            ) -> SharedConnection | None:
    """A ``SharedConnection`` to the client's server, or None where it cannot speak (TLS)."""
    pool = client.connection_pool
    kwargs = pool.connection_kwargs
    common: dict[str, Any] = {"db": kwargs.get("db", 0), "username": kwargs.get("username"),
                              "password": kwargs.get("password"), "tracking": tracking}
    if pool.connection_class is aioredis.Connection:
        return SharedConnection(timeout, host=kwargs.get("host", "localhost"),
                                port=kwargs.get("port", 6379), **common)
    if pool.connection_class is aioredis.UnixDomainSocketConnection:
        return SharedConnection(timeout, path=kwargs["path"], **common)
    return None


class Tracking(Protocol):
    """Who hears a tracking link's invalidations (see ``service.store.readcache``)."""

    def on_push(self, message: list[Any]) -> None: ...
    def reset(self) -> None: ...


class _Waiter:
    __slots__ = ("deadline", "future", "replies", "wanted")

    def __init__(self, future: asyncio.Future[Any], wanted: int, deadline: float) -> None:
        self.future = future
        self.wanted = wanted
        self.replies: list[Any] = []
        self.deadline = deadline


class _Connection(asyncio.Protocol):
    """One socket and the callers waiting on it, in the order they wrote."""

    def __init__(self, link: SharedConnection) -> None:
        self.link = link
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader(protocolError=InvalidResponse, replyError=ResponseError)
        self.waiters: collections.deque[_Waiter] = collections.deque()
        self.failure: Exception = RedisConnectionError("Connection to Redis lost")
        self.outbox: list[bytes] = []

    def flush(self) -> None:
        """Write what the callers of one event-loop turn queued, in one system call."""
        if self.transport is not None and self.outbox:
            self.transport.write(b"".join(self.outbox) if len(self.outbox) > 1
                                 else self.outbox[0])
        self.outbox.clear()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        waiters = self.waiters
        while True:
            reply = reader.gets()
            if reply is False:
                return
            if isinstance(reply, ResponseError):  # redis-py's class for it (NoScriptError...)
                reply = BaseParser.parse_error(str(reply))  # type: ignore[no-untyped-call]
            elif type(reply) is hiredis.PushNotification:  # RESP3: not an answer to anyone
                if self.link.tracking is not None:
                    self.link.tracking.on_push(reply)
                continue
            waiter = waiters[0]
            if waiter.wanted == 1:
                waiters.popleft()
                if not waiter.future.done():  # a cancelled caller's reply is dropped
                    waiter.future.set_result(reply)
                continue
            waiter.replies.append(reply)
            if len(waiter.replies) == waiter.wanted:
                waiters.popleft()
                if not waiter.future.done():
                    waiter.future.set_result(waiter.replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(self.failure)

    def fail(self, failure: Exception) -> None:
        """Take this connection out of service and fail everyone waiting on it."""
        if self.link.connection is self:
            self.link.connection = None
        if self.link.tracking is not None:
            self.link.tracking.reset()  # what changed while nobody listened is unknown
        if self.transport is not None:
            self.transport.abort()
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.future.done():
                waiter.future.set_exception(failure)


class SharedConnection:
    """One pipelined connection shared by every concurrent caller of a process.

    Each ``execute`` writes its packed commands and waits for as many replies; Redis answers
    a connection's commands in order, so replies go to the waiters first come, first served.
    Failures follow redis-py's types: a lost connection fails every waiter with
    ``ConnectionError`` and the next call reconnects; a server silent for ``timeout`` seconds
    fails them with ``TimeoutError`` (checked by one timer, not a timeout task per call);
    error replies are raised as redis-py's exception classes. A failed connect makes every
    call for the next ``timeout`` seconds fail at once with it rather than try again: a caller
    arriving just after a failed attempt would otherwise wait a whole new one, answering after
    two timeouts, and a Redis that is down would take a connect per request.

    With ``tracking``, the connection speaks RESP3 with ``CLIENT TRACKING`` on: Redis pushes an
    invalidation for every key this link read once the key changes, and ``tracking`` hears them
    (and of every lost connection, which loses the tracking with it)."""

    def __init__(self, timeout: float, *, host: str = "localhost", port: int = 6379,
                 path: str | None = None, db: int = 0, username: str | None = None,
                 password: str | None = None, tracking: Tracking | None = None) -> None:
        self.timeout = timeout
        self.address = (host, port, path)
        self.handshake: list[bytes] = []
        if password is not None:
            self.handshake.append(pack(b"AUTH", [username, password] if username
                                       else [password]))
        if db:
            self.handshake.append(pack(b"SELECT", [db]))
        self.tracking = tracking
        if tracking is not None:
            self.handshake += [pack(b"HELLO", [3]), pack(b"CLIENT", [b"TRACKING", b"ON"])]
        self.connection: _Connection | None = None
        self.timer: asyncio.TimerHandle | None = None
        self._opening: asyncio.Future[_Connection] | None = None
        self._failed: tuple[float, BaseException] | None = None  # (until, why) after a failed open

    async def execute(self, packed: bytes, replies: int = 1) -> Any:
        conn = self.connection
        if conn is None:
            conn = await self._connect()
        out = await self._send(conn, packed, replies)
        if replies == 1:
            if isinstance(out, Exception):
                raise out
            return out
        for reply in out:
            if isinstance(reply, Exception):
                raise reply
        return out

    def _send(self, conn: _Connection, packed: bytes, replies: int) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop.create_future(), replies, time.monotonic() + self.timeout)
        conn.waiters.append(waiter)
        if not conn.outbox:
            loop.call_soon(conn.flush)
        conn.outbox.append(packed)
        if self.timer is None:
            self.timer = loop.call_later(self.timeout / 4, self._check)
        return waiter.future

    async def _connect(self) -> _Connection:
        """The connection, opened by one attempt that every caller arriving meanwhile shares:
        with a Redis that drops packets or never answers the handshake, the callers queued
        behind a connect then all fail when it does, within ``timeout``, instead of each
        trying again in turn (the k-th would answer after k timeouts)."""
        if self.connection is not None:
            return self.connection
        if self._opening is None:
            failed = self._failed
            if failed is not None:
                until, why = failed
                if time.monotonic() < until:
                    raise RedisConnectionError(f"{why} (not retried for {self.timeout} s)")
                self._failed = None
            opening = self._opening = asyncio.ensure_future(self._open())
            opening.add_done_callback(self._opened)
        return await asyncio.shield(self._opening)

    def _opened(self, attempt: asyncio.Future[_Connection]) -> None:
        self._opening = None
        if not attempt.cancelled():
            failure = attempt.exception()  # retrieved: the callers that shared it were told
            if failure is not None:
                self._failed = (time.monotonic() + self.timeout, failure)

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        host, port, path = self.address
        conn = _Connection(self)
        try:
            # one deadline for the connect and the handshake together
            async with asyncio.timeout(self.timeout):
                if path is not None:
                    await loop.create_unix_connection(lambda: conn, path)
                else:
                    await loop.create_connection(lambda: conn, host, port)
                if self.handshake:
                    replies = await self._send(conn, b"".join(self.handshake),
                                               len(self.handshake))
                    for reply in replies if len(self.handshake) > 1 else [replies]:
                        if isinstance(reply, Exception):
                            raise reply
        except (OSError, TimeoutError) as exc:
            conn.fail(RedisConnectionError("Redis refused the handshake"))
            raise RedisConnectionError(
                f"Error connecting to {path or f'{host}:{port}'}: {exc!r}") from exc
        except BaseException:
            conn.fail(RedisConnectionError("Redis refused the handshake"))
            raise
        self.connection = conn
        return conn

    def _check(self) -> None:
        """The watchdog: fail the connection whose oldest waiter is overdue."""
        self.timer = None
        conn = self.connection
        if conn is None or not conn.waiters:
            return
        if conn.waiters[0].deadline < time.monotonic():
            conn.fail(RedisTimeoutError(f"Redis did not answer within {self.timeout} s"))
            return
        self.timer = asyncio.get_running_loop().call_later(self.timeout / 4, self._check)

    async def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.connection is not None:
            self.connection.fail(RedisConnectionError("The link was closed"))


class PooledConnections:
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
    (reply,) = await _replies(client, packed, 1)
    if isinstance(reply, Exception):
        raise reply
    return reply


async def execute_then(client: aioredis.Redis, packed: bytes, then: bytes) -> tuple[Any, Any]:
    """``execute`` with a second command written behind the first in the same write: both
    replies as they came, errors as exception objects (the second command ran whatever the
    first's fate: its effects must not be lost with the first one's error)."""
    first, second = await _replies(client, packed + then, 2)
    return first, second


async def _replies(client: aioredis.Redis, packed: bytes, n: int) -> list[Any]:
    """Write ``packed`` on a pooled connection and read ``n`` replies, error replies as
    exception objects (redis-py raises them: every reply is read regardless, so the connection
    stays in step); a connection that fails is dropped."""
    pool = client.connection_pool
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]
    replies: list[Any] = []
    try:
        await conn.send_packed_command(packed, check_health=False)
        for _ in range(n):
            try:
                replies.append(await conn.read_response())
            except ResponseError as exc:
                replies.append(exc)
    except BaseException:
        await conn.disconnect()
        raise
    finally:
        await pool.release(conn)
    return replies


async def run_script(send: Callable[[bytes], Awaitable[Any]], script: AsyncScript,
                     keys: Sequence[Any], args: Sequence[Any]) -> Any:
    """EVALSHA through ``send`` with the arguments packed in one pass (redis-py encodes the
    thousands of a worker commit or an ingest batch one by one: most of their CPU); a Redis
    that lost its script cache gets the script through the client, which loads it."""
    try:
        return await send(pack(b"EVALSHA", [script.sha, len(keys), *keys, *args]))
    except NoScriptError:
        return await script(keys=keys, args=args)
