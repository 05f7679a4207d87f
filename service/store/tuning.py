"""Starting a tuning run: the tuning lease taken in the new run's name, then ``sessionrec tune
--apply`` as a process of its own (it renews the lease, lowers its own priority and releases
the lease when done). The API (``POST /admin/tune``) and the workers (automatic runs) start
runs so; neither imports the tuning code, which is an offline tool."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid

import redis.asyncio as aioredis

from service.settings import Settings
from service.store.keyspace import Keys
from service.store.scripts import Scripts

RUN_COMMAND = (sys.executable, "-P", "-m", "service.cli")
"""How a run's process starts: ``-m`` alone would put the working directory first on the
import path, so a ``service/cli.py`` planted where a serve process or a worker runs would run
in its place. ``-P`` leaves it out: only the installed package is imported (a normal install,
an editable one through its finder, a user install; ``PYTHONPATH`` is the operator's and
still counts; ``-I`` would lose user installs)."""

_REAPERS: set[asyncio.Task[int]] = set()
"""One task per started process, waiting for it to end (no zombies)."""


async def running(client: aioredis.Redis, keys: Keys) -> str | None:
    """The id of the run holding the tuning lease, if one does."""
    holder = await client.get(keys.tune_lease())
    return holder.decode() if isinstance(holder, bytes) else holder


async def start_run(client: aioredis.Redis, scripts: Scripts, keys: Keys, settings: Settings,
                    trigger: str) -> tuple[str | None, bool]:
    """The run's id and True when this call started it; the running run's id (None if it
    ended meanwhile) and False when one holds the lease."""
    run_id = uuid.uuid4().hex[:12]
    lease = keys.tune_lease()
    # in the run's name before its process starts: callers meanwhile see it running
    if not await scripts.lease(lease, run_id, settings.tune_lease_ms, "take"):
        return await running(client, keys), False
    try:
        process = await asyncio.create_subprocess_exec(
            *RUN_COMMAND, "--log-level", "WARNING", "tune", "--apply",
            "--run-id", run_id, "--trigger", trigger,
            env={**os.environ, **settings.to_env()},
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    except OSError:
        await scripts.lease(lease, run_id, settings.tune_lease_ms, "release")
        raise
    reaper = asyncio.create_task(process.wait())
    _REAPERS.add(reaper)
    reaper.add_done_callback(_REAPERS.discard)
    return run_id, True
