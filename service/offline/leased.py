"""A background run in a process of its own under a lease (one at a time per namespace): a
tuning run (``sessionrec tune --apply``) or a sequence model run (``sessionrec sequence
--apply``). The process lowers its priority and computes on one thread (serving and learning
keep the CPU they need, whether a worker started the run or an operator did by hand), renews
its lease every third of it while the work runs, and ends by ``tune_deadline`` whatever the
work waits for: the lease released, the process gone.

Offline tool: the serving path never imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import threading
import uuid
from collections.abc import Callable, Coroutine
from typing import Any, Literal

from threadpoolctl import threadpool_limits

from service.failures import UNAVAILABLE, stop_if_cancelled
from service.offline.loader import BULK_TIMEOUT
from service.settings import Settings
from service.store.backends import MEMORY_URL
from service.store.keyspace import Keys
from service.store.state import Store

Kind = Literal["tune", "sequence"]
ONE_THREAD = 1
"""Threads a run's matrix products use (BLAS, OpenMP): a run takes at most one core beside
serving and learning."""
Work = Callable[[Store, str], Coroutine[Any, Any, dict[str, Any]]]


def lease_key(keys: Keys, kind: Kind) -> str:
    return keys.tune_lease() if kind == "tune" else keys.sequence_lease()


def renewal_period(settings: Settings) -> float:
    """Seconds between a run's lease renewals (a third of the lease), and what each last step
    of a run gets (its tasks to end once told to, the lease's release, the store's close, then
    the process' exit): a task that swallows its cancellation (redis-py can turn one into a
    connection error) is not waited on longer, and the process is gone before its lease could
    lapse."""
    return settings.tune_lease_ms / 3000


def run_leased(settings: Settings, run_id: str | None, kind: Kind, work: Work) -> int:
    """One run of ``work`` under the ``kind`` lease, at a lowered priority and on
    ``ONE_THREAD`` (the matrix products' own threads would each take a core from serving, at
    whatever priority); its exit code (0: done, its record printed; 1: another run holds the
    lease; 2: no Redis to run on; 3: stopped by its deadline or the loss of its lease)."""
    if settings.redis_url.startswith(MEMORY_URL):
        print(f"{kind} --apply needs a Redis (the embedded default lives in one process)",
              file=sys.stderr)
        return 2
    with contextlib.suppress(OSError):
        os.nice(10)
    run_id = run_id or uuid.uuid4().hex[:12]
    code = [1]
    # the last resort, should even the event loop never come back: the process ends, and
    # its lease lapses within tune_lease_ms
    exits = [exit_after(settings.tune_deadline + 6 * renewal_period(settings), code)]
    try:
        with threadpool_limits(limits=ONE_THREAD):
            code[0] = asyncio.run(run_under_lease(settings, run_id, kind, work, code, exits))
        return code[0]
    finally:
        for timer in exits:  # the event loop came back: the caller ends the process
            timer.cancel()


def exit_after(seconds: float, code: list[int]) -> threading.Timer:
    """A daemon timer that ends the process with ``code[0]`` after ``seconds``."""
    timer = threading.Timer(seconds, lambda: os._exit(code[0]))
    timer.daemon = True
    timer.start()
    return timer


async def run_under_lease(settings: Settings, run_id: str, kind: Kind, work: Work,
                          code: list[int], exits: list[threading.Timer]) -> int:
    """The work as a task beside the keeper of its lease, both stopped by the deadline; then
    the lease released and the store closed, each bounded. Once this returns (or raises), the
    event loop has a ``renewal_period`` to shut down (a task that swallows its cancellation
    would hold ``asyncio.run`` for good) before ``exits`` ends the process."""
    # an offline process: a slow reply on a busy Redis is waited for, not a failed run
    store = Store(settings.replace(redis_timeout=max(settings.redis_timeout, BULK_TIMEOUT)))
    lease = lease_key(store.keys, kind)
    stop = asyncio.Event()
    tasks: list[asyncio.Task[Any]] = []
    try:
        # an API process or a worker that started this run took the lease in its name already
        if not await asyncio.wait_for(store.scripts.lease(lease, run_id, settings.tune_lease_ms,
                                                          "take"), settings.tune_deadline):
            print(f"a {kind} run is running already: {await store.redis.get(lease)!r}",
                  file=sys.stderr)
            return 1
        task = asyncio.create_task(work(store, run_id))
        keeper = asyncio.create_task(keep_lease(store, lease, run_id, settings, stop, task))
        tasks = [task, keeper]
        # the keeper ends first only when the lease is no longer the run's
        await asyncio.wait(tasks, timeout=settings.tune_deadline,
                           return_when=asyncio.FIRST_COMPLETED)
        if not task.done() or task.cancelled():
            why = f"the {kind} lease is no longer its own" if keeper.done() else \
                f"past its deadline ({settings.tune_deadline:g} s)"
            print(f"run {run_id}: {why}: stopped, nothing stored", file=sys.stderr)
            code[0] = 3
            return 3
        print(json.dumps(task.result()))
        code[0] = 0
        return 0
    finally:
        stop.set()
        for each in tasks:
            each.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=renewal_period(settings))
        with contextlib.suppress(*UNAVAILABLE):
            await asyncio.wait_for(store.scripts.lease(lease, run_id, settings.tune_lease_ms,
                                                       "release"), renewal_period(settings))
        with contextlib.suppress(*UNAVAILABLE):
            await asyncio.wait_for(store.close(), renewal_period(settings))
        sys.stdout.flush()  # the record printed reaches its reader even if the exit is forced
        exits.append(exit_after(renewal_period(settings), code))


async def keep_lease(store: Store, lease: str, run_id: str, settings: Settings,
                     stop: asyncio.Event, work: asyncio.Task[Any]) -> None:
    """Renew the run's lease every third of it until ``stop`` is set. A renewal that finds
    the lease no longer the run's (a worker took it back, or it lapsed and another run took
    it) stops the run. ``stop`` ends the loop even if a cancellation was lost in a Redis call
    (redis-py can turn one into a connection error, which the loop outlives)."""
    every = renewal_period(settings)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
        if stop.is_set():
            return
        try:
            held = await asyncio.wait_for(store.scripts.lease(
                lease, run_id, settings.tune_lease_ms, "renew"), every)
        except UNAVAILABLE as exc:  # the next renewal, a third later, may do
            stop_if_cancelled()
            print(f"{lease}: not renewed: {exc}", file=sys.stderr)
            continue
        if not held:
            work.cancel()
            return
