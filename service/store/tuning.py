"""Tuning runs seen from outside their process. Starting one: the tuning lease taken in the
new run's name, then ``sessionrec tune --apply`` as a process of its own (it renews the lease,
lowers its own priority, stops by its deadline and releases the lease), importing the installed
package only. The API (``POST /admin/tune``) and the workers (automatic runs) start runs so;
neither imports the tuning code, which is an offline tool. The workers' check: a lease left
by a run that finished is taken back, and an automatic run starts when one is due. And what
both read of the sessions' arrivals (``service/core/model.py``): the windows, newest first,
and their sessions."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import redis.asyncio as aioredis

from service.core.layout import partition_of
from service.core.modelparams import (
    ARRIVAL_WINDOW,
    HOLDOUT_SLICES,
    ModelRecord,
    latest_run,
    tuning_due,
    tuning_may_be_due,
    tuning_target,
    window_of,
)
from service.settings import Settings
from service.store.keyspace import Keys
from service.store.scripts import Scripts

RUN_COMMAND = (sys.executable, "-P", "-m", "service.cli")
"""How a run's process starts: ``-m`` alone would put the working directory first on the
import path, so a ``service/cli.py`` planted where a serve process or a worker runs would run
in its place. ``-P`` leaves it out: only the installed package is imported (a normal install,
an editable one through its finder, a user install; ``PYTHONPATH`` is the operator's and
still counts; ``-I`` would lose user installs)."""

ARRIVALS_CHUNK = 5000
"""Sessions whose arrivals one round trip asks for."""

_REAPERS: set[asyncio.Task[int]] = set()
"""One task per started process, waiting for it to end (no zombies)."""


async def running(client: aioredis.Redis, keys: Keys) -> str | None:
    """The id of the run holding the tuning lease, if one does."""
    return await holder_of(client, keys.tune_lease())


async def holder_of(client: aioredis.Redis, lease: str) -> str | None:
    """The id of the run holding ``lease``, if one does."""
    holder = await client.get(lease)
    return holder.decode() if isinstance(holder, bytes) else holder


async def start_run(client: aioredis.Redis, scripts: Scripts, keys: Keys, settings: Settings,
                    trigger: str) -> tuple[str | None, bool]:
    """The run's id and True when this call started it; the running run's id (None if it
    ended meanwhile) and False when one holds the lease."""
    return await start_process(client, scripts, keys.tune_lease(), settings,
                               ("tune", "--apply", "--trigger", trigger))


async def start_process(client: aioredis.Redis, scripts: Scripts, lease: str,
                        settings: Settings, command: tuple[str, ...]
                        ) -> tuple[str | None, bool]:
    """``sessionrec COMMAND --run-id ID`` started under ``lease`` in the new run's name: its
    id and True; or the holder's id (None if it ended meanwhile) and False."""
    run_id = uuid.uuid4().hex[:12]
    # in the run's name before its process starts: callers meanwhile see it running
    if not await scripts.lease(lease, run_id, settings.tune_lease_ms, "take"):
        return await holder_of(client, lease), False
    try:
        process = await asyncio.create_subprocess_exec(
            *RUN_COMMAND, "--log-level", "WARNING", *command, "--run-id", run_id,
            env={**os.environ, **settings.to_env()},
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    except OSError:
        await scripts.lease(lease, run_id, settings.tune_lease_ms, "release")
        raise
    reaper = asyncio.create_task(process.wait())
    _REAPERS.add(reaper)
    reaper.add_done_callback(_REAPERS.discard)
    return run_id, True


async def last_finished(client: aioredis.Redis, keys: Keys) -> dict[str, Any] | None:
    """The last finished run's record (the model record's ``last_run``)."""
    record = ModelRecord.from_fields(cast(dict[bytes, bytes],
                                          await client.hgetall(keys.model())))
    return json.loads(record.last_run) if record.last_run else None


async def reclaim_lease(client: aioredis.Redis, scripts: Scripts, keys: Keys,
                        settings: Settings) -> str | None:
    """Take the tuning lease back from a run whose record says it finished (its process, with
    nothing left to do, still renews it: it would hold every later run off for good); the
    lease goes only if it is still that run's (compare and delete), and the process, told by
    its next renewal that the lease is no longer its own, exits. The run's id, if taken."""
    finished = await last_finished(client, keys)
    if finished is None or finished.get("finished_at") is None:
        return None
    holder = await running(client, keys)
    if holder is None or holder != finished.get("id"):
        return None
    await scripts.lease(keys.tune_lease(), holder, settings.tune_lease_ms, "release")
    return holder


async def start_if_due(client: aioredis.Redis, scripts: Scripts, keys: Keys,
                       settings: Settings) -> str | None:
    """Start an automatic run when one is due (``core.modelparams.tuning_due``: counted from
    the sessions' arrivals) and none is running: whichever worker checks first takes the
    lease. The new run's id, if this call started one."""
    sessions = int(await client.hget(keys.meta(), "sessions") or 0)
    marker = await client.get(keys.tune_started())
    last = latest_run(await last_finished(client, keys), json.loads(marker) if marker else None)
    now = time.time()
    least, every = settings.tune_min_sessions, settings.tune_min_interval
    # two numbers first: the arrivals are read only when the learned count could be enough
    if not tuning_may_be_due(sessions, last, now, min_sessions=least, min_interval=every):
        return None
    target = tuning_target(last, least)
    arrived = await arrived_since(client, keys,
                                  float(last["started_at"]) * 1000 if last else None, target,
                                  -(-target // HOLDOUT_SLICES))
    if not tuning_due(arrived, last, now, min_sessions=least, min_interval=every):
        return None
    run_id, started = await start_run(client, scripts, keys, settings, "auto")
    return run_id if started else None


def _pairs(reply: Any) -> list[tuple[bytes, float]]:
    """A WITHSCORES reply as (member, score) pairs: flat as RESP2 sends it, or paired."""
    if reply and isinstance(reply[0], list | tuple):
        return [(member, float(score)) for member, score in reply]
    return [(member, float(score)) for member, score in zip(reply[::2], reply[1::2],
                                                                strict=True)]


async def _each_partition(client: aioredis.Redis, keys: Keys, command: str,
                          *args: str | int) -> list[Any]:
    """``command`` on every partition's arrivals, in one round trip (a node each, clustered)."""
    async with client.pipeline(transaction=False) as pipe:
        for p in range(keys.partitions):
            pipe.execute_command(command, keys.arrivals(p), *args)
        return list(await pipe.execute())


async def arrival_windows(client: aioredis.Redis, keys: Keys, since_ms: float | None = None
                          ) -> AsyncIterator[tuple[int, str, str]]:
    """The arrival windows that hold sessions, newest first, each as (window, lowest score,
    highest score) bounds for ZCOUNT or ZRANGEBYSCORE; only arrivals after ``since_ms``."""
    floor = "-inf" if since_ms is None else f"({since_ms!r}"
    ceiling = "+inf"
    while True:
        newest = [score for reply in await _each_partition(
            client, keys, "ZREVRANGEBYSCORE", ceiling, floor, "WITHSCORES", "LIMIT", 0, 1)
            for _, score in _pairs(reply)]
        if not newest:
            return
        window = window_of(max(newest))
        start = window * ARRIVAL_WINDOW * 1000
        low = floor if since_ms is not None and since_ms >= start else str(start)
        yield window, low, ceiling
        ceiling = f"({start}"


async def newest_arrival(client: aioredis.Redis, keys: Keys) -> float | None:
    """When the newest session arrived (ms), over every partition; None: none did."""
    newest = [score for reply in await _each_partition(
        client, keys, "ZREVRANGEBYSCORE", "+inf", "-inf", "WITHSCORES", "LIMIT", 0, 1)
        for _, score in _pairs(reply)]
    return max(newest) if newest else None


async def arrived_in(client: aioredis.Redis, keys: Keys, low: str, high: str
                     ) -> list[tuple[bytes, float]]:
    """The sessions (hash, arrival ms) of every partition that arrived within the bounds."""
    out: list[tuple[bytes, float]] = []
    for reply in await _each_partition(client, keys, "ZRANGEBYSCORE", low, high, "WITHSCORES"):
        out += _pairs(reply)
    return out


async def arrived_since(client: aioredis.Redis, keys: Keys, since_ms: float | None,
                        enough: int, per_window: int) -> dict[int, int]:
    """Sessions that arrived after ``since_ms``, per window, newest windows first, until their
    sum counting at most ``per_window`` a window reaches ``enough`` (what ``tuning_due``
    weighs: reading further back would not change its answer)."""
    out: dict[int, int] = {}
    async for window, low, high in arrival_windows(client, keys, since_ms):
        counts = await _each_partition(client, keys, "ZCOUNT", low, high)
        out[window] = sum(int(n) for n in counts)
        if sum(min(n, per_window) for n in out.values()) >= enough:
            break
    return out


async def arrivals_of(client: aioredis.Redis, keys: Keys, sessions: Sequence[bytes]
                      ) -> list[float | None]:
    """When each session (hash) arrived (ms); None for one whose arrival is not kept (it
    arrived before every kept one). One ZMSCORE per partition and chunk, in one round trip
    per chunk."""
    out: list[float | None] = []
    for at in range(0, len(sessions), ARRIVALS_CHUNK):
        chunk = sessions[at:at + ARRIVALS_CHUNK]
        by_partition: dict[int, list[int]] = {}
        for n, session in enumerate(chunk):
            by_partition.setdefault(partition_of(session, keys.partitions), []).append(n)
        found: list[float | None] = [None] * len(chunk)
        async with client.pipeline(transaction=False) as pipe:
            for p, members in by_partition.items():
                pipe.execute_command("ZMSCORE", keys.arrivals(p), *[chunk[n] for n in members])
            replies = await pipe.execute()
        for members, scores in zip(by_partition.values(), replies, strict=True):
            for n, score in zip(members, scores, strict=True):
                found[n] = None if score is None else float(score)
        out += found
    return out
