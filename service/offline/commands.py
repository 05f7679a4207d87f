"""The offline commands, ``sessionrec load``, ``catalog``, ``eval`` and ``tune``: click logs or
catalogue records in, learned state or an accuracy report out. Each that writes to a Redis
says which one first; one with nothing to learn from says so (``Refused``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from service.failures import UNAVAILABLE, Refused, stop_if_cancelled
from service.offline import catalog, clicklog
from service.offline.clicklog import ClickLog
from service.offline.evaluate import (
    Result,
    align_times,
    chart,
    evaluate,
    report,
    static_cases,
    summarise,
)
from service.offline.loader import BULK_TIMEOUT, bulk_store, load, refuse_unless_empty
from service.offline.redisproc import RedisProcess
from service.settings import Settings, from_args
from service.store.backends import MEMORY_URL
from service.store.state import Store

T = TypeVar("T")


def read_log(path: str, args: argparse.Namespace) -> ClickLog:
    return clicklog.read(path, args.format, args.columns, args.delimiter)


def concat(logs: list[ClickLog]) -> ClickLog:
    return ClickLog(np.concatenate([x.sessions for x in logs]),
                    np.concatenate([x.items for x in logs]),
                    np.concatenate([x.times for x in logs]))


def where(settings: Settings, private: bool = False) -> str:
    """Which Redis and namespace a command writes to: its first line."""
    url = settings.redis_url_for_logs()
    return (f"{PRIVATE} at {url}" if private else url) + f", namespace {settings.namespace}"


PRIVATE = "a private redis-server, started for this run and stopped after it,"


def say(command: str, line: str) -> None:
    print(f"sessionrec {command}: {line}", file=sys.stderr, flush=True)


def load_command(args: argparse.Namespace) -> int:
    settings = from_args(args)
    say("load", f"writing to {where(settings)}")

    async def main() -> None:
        store = bulk_store(settings)
        try:
            await store.prepare()
            await refuse_unless_empty(store)  # before minutes of reading, not after
            log = concat([read_log(p, args) for p in args.files])
            if not len(log):
                raise Refused(f"{', '.join(args.files)}: no events in them, nothing to learn")
            done = await load(store, log.events())
        finally:
            await store.close()
        print(f"loaded {done.events} events: {done.sessions} sessions, {done.items} items in "
              f"{done.seconds:.1f}s into {where(settings)}")
    asyncio.run(main())
    return 0


def catalog_command(args: argparse.Namespace) -> int:
    """``sessionrec catalog FILE``: a bad record refuses the file, naming line and field."""
    settings = from_args(args)
    say("catalog", f"writing to {where(settings)}")

    async def main() -> int:
        store = Store(settings.replace(read_cache_mb=0))
        started = time.monotonic()
        try:
            await store.prepare()
            stored = await catalog.import_file(store, args.file, args.format)
        except catalog.BadRecord as exc:
            what = str(exc).rstrip(".")
            raise catalog.BadRecord(f"{args.file}, {what}; nothing stored") from None
        finally:
            await store.close()
        print(f"catalog: {stored} records stored in {time.monotonic() - started:.1f}s into "
              f"{where(settings)}")
        return 0
    return asyncio.run(main())


def eval_command(args: argparse.Namespace) -> int:
    settings = from_args(args)
    # before any work: the charts need matplotlib, an extra; the report does not
    charts = bool(args.out) and plotting_available()
    if args.out and not charts:
        say("eval", f"matplotlib is not installed: {args.out}.md will have no charts "
                    f"({INSTALL_PLOTTING} adds them)")
    train = read_log(args.train, args)
    test = align_times(train, read_log(args.test, args))
    if not len(train):
        raise Refused(f"{args.train}: no events in it, nothing to learn")
    if next(static_cases(test), None) is None:
        raise Refused(f"{args.test}: no session of two events or more, nothing to predict")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    protocols = ("static", "streaming") if args.protocol == "both" else (args.protocol,)
    title = args.title or Path(args.train).parent.name or "evaluation"
    sections = [f"## {title}", "",
                f"- date: {datetime.date.today()}, machine: {platform.machine()} "
                f"{platform.node()}, python {platform.python_version()}",
                f"- train: {len(train)} events, test: {len(test)} events; k = 20; "
                f"served model through {'POST /iid_recommend' if args.http else 'Store'}", ""]
    if args.out and not charts:
        sections[2:2] = [f"- no charts: matplotlib is not installed ({INSTALL_PLOTTING})"]
    for protocol in protocols:
        results = _run(settings, train, test, models, protocol, args)
        summary = summarise(results, train)
        sections.append(report(summary, f"{title}, {protocol} protocol"))
        print(sections[-1])
        if charts:
            png = Path(f"{args.out}-{protocol}.png")
            chart({n: r.curve() for n, r in results.items()}, png, f"{title} ({protocol})")
            sections.append(f"![HR and MRR at k = 1..20]({png.name})\n")
    if args.out:
        Path(f"{args.out}.md").write_text("\n".join(sections) + "\n", encoding="utf-8")
        print(f"report written to {args.out}.md")
    return 0


INSTALL_PLOTTING = "pip install 'sessionrec[eval]'"


def plotting_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _run(settings: Settings, train: ClickLog, test: ClickLog, models: list[str],
         protocol: str, args: argparse.Namespace) -> dict[str, Result]:
    async def main(s: Settings) -> dict[str, Result]:
        return dict(await evaluate(s, train, test, models, protocol, http=args.http,
                                   limit=args.limit, self_tune=args.self_tune))
    return with_redis(settings, args, main)


def with_redis(settings: Settings, args: argparse.Namespace,
               main: Callable[[Settings], Coroutine[Any, Any, T]]) -> T:
    """Run ``main`` on the Redis the user named, or on a private redis-server when none was
    named (offline commands must never write into a Redis they were not pointed at)."""
    if "SESSIONREC_REDIS_URL" not in os.environ and args.redis_url is None:
        with RedisProcess() as url:
            private = settings.replace(redis_url=url)
            say(args.command, f"writing to {where(private, private=True)} (and namespaces "
                              f"beginning {settings.namespace}-)")
            return asyncio.run(main(private))
    say(args.command, f"writing to {where(settings)} (and namespaces beginning "
                      f"{settings.namespace}-)")
    return asyncio.run(main(settings))


def renewal_period(settings: Settings) -> float:
    """Seconds between a run's lease renewals (a third of the lease), and what each last step
    of a run gets (its tasks to end once told to, the lease's release, the store's close, then
    the process' exit): a task that swallows its cancellation (redis-py can turn one into a
    connection error) is not waited on longer, and the process is gone before its lease could
    lapse."""
    return settings.tune_lease_ms / 3000


def live_tune_command(args: argparse.Namespace) -> int:
    """``sessionrec tune --apply``: one run on the live state, under the tuning lease, at a
    lowered priority (serving and learning keep the CPU they need). Whatever the run waits
    for, it ends by ``tune_deadline``: the lease released, the process gone."""
    settings = from_args(args)
    if settings.redis_url.startswith(MEMORY_URL):
        print("tune --apply needs a Redis (the embedded default lives in one process)",
              file=sys.stderr)
        return 2
    with contextlib.suppress(OSError):
        os.nice(10)
    import uuid
    run_id = args.run_id or uuid.uuid4().hex[:12]
    code = [1]
    # the last resort, should even the event loop never come back: the process ends, and
    # its lease lapses within tune_lease_ms
    exits = [exit_after(settings.tune_deadline + 6 * renewal_period(settings), code)]
    try:
        code[0] = asyncio.run(run_under_lease(settings, run_id, args.trigger, code, exits))
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


async def run_under_lease(settings: Settings, run_id: str, trigger: str, code: list[int],
                          exits: list[threading.Timer]) -> int:
    """The run (``tune_live``) as a task beside the keeper of its lease, both stopped by the
    deadline; then the lease released and the store closed, each bounded. Once this returns
    (or raises), the event loop has a ``renewal_period`` to shut down (a task that swallows
    its cancellation would hold ``asyncio.run`` for good) before ``exits`` ends the
    process."""
    import json

    from service.core.scoring import Params
    from service.offline.livetune import tune_live

    # an offline process: a slow reply on a busy Redis is waited for, not a failed run
    store = Store(settings.replace(redis_timeout=max(settings.redis_timeout, BULK_TIMEOUT)))
    lease = store.keys.tune_lease()
    stop = asyncio.Event()
    tasks: list[asyncio.Task[Any]] = []
    try:
        # an API process that started this run took the lease in its name already
        if not await asyncio.wait_for(store.scripts.lease(lease, run_id, settings.tune_lease_ms,
                                                          "take"), settings.tune_deadline):
            print(f"a tuning run is running already: {await store.redis.get(lease)!r}",
                  file=sys.stderr)
            return 1
        work = asyncio.create_task(tune_live(store, Params.from_settings(settings),
                                             trigger=trigger, run_id=run_id,
                                             say=lambda line: print(line, file=sys.stderr)))
        keeper = asyncio.create_task(keep_lease(store, run_id, settings, stop, work))
        tasks = [work, keeper]
        # the keeper ends first only when the lease is no longer the run's
        await asyncio.wait(tasks, timeout=settings.tune_deadline,
                           return_when=asyncio.FIRST_COMPLETED)
        if not work.done() or work.cancelled():
            why = "the tuning lease is no longer its own" if keeper.done() else \
                f"past its deadline ({settings.tune_deadline:g} s)"
            print(f"run {run_id}: {why}: stopped, nothing promoted", file=sys.stderr)
            code[0] = 3
            return 3
        print(json.dumps(work.result()))
        code[0] = 0
        return 0
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=renewal_period(settings))
        with contextlib.suppress(*UNAVAILABLE):
            await asyncio.wait_for(store.scripts.lease(lease, run_id, settings.tune_lease_ms,
                                                       "release"), renewal_period(settings))
        with contextlib.suppress(*UNAVAILABLE):
            await asyncio.wait_for(store.close(), renewal_period(settings))
        sys.stdout.flush()  # the record printed reaches its reader even if the exit is forced
        exits.append(exit_after(renewal_period(settings), code))


async def keep_lease(store: Store, run_id: str, settings: Settings, stop: asyncio.Event,
                     work: asyncio.Task[Any]) -> None:
    """Renew the run's lease every third of it until ``stop`` is set. A renewal that finds
    the lease no longer the run's (a worker took it back, or it lapsed and another run took
    it) stops the run. ``stop`` ends the loop even if a cancellation was lost in a Redis call
    (redis-py can turn one into a connection error, which the loop outlives)."""
    every = renewal_period(settings)
    lease = store.keys.tune_lease()
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
            print(f"tuning lease not renewed: {exc}", file=sys.stderr)
            continue
        if not held:
            work.cancel()
            return


async def _holdout_candidates(settings: Settings, enough: int = 2) -> int:
    """Learned sessions of two events or more (what a run holds out, half of them to search
    on, half to judge on), counted up to ``enough``: a scan that stops as soon as it is sure."""
    from service.core.layout import ENTRY_BYTES

    store = Store(settings.replace(read_cache_mb=0))
    found = 0
    try:
        for prefix in store.keys.history_prefixes():
            batch: list[str] = []
            async for key in store.redis.scan_iter(match=prefix + "*", count=1000):
                batch.append(key.decode() if isinstance(key, bytes) else key)
                if len(batch) >= 200:
                    found += sum(len(b or b"") >= 2 * ENTRY_BYTES
                                 for b in await store.reads.mget(batch))
                    batch = []
                    if found >= enough:
                        return found
            if batch:
                blobs = await store.reads.mget(batch)
                found += sum(len(b or b"") >= 2 * ENTRY_BYTES for b in blobs)
            if found >= enough:
                return found
        return found
    finally:
        await store.close()


def tune_command(args: argparse.Namespace) -> int:
    from service.offline.tune import env_file, split_validation, tune

    if args.apply:  # (--apply with --train or a flag of --train: refused by the parser)
        settings = from_args(args)
        say("tune", f"tuning on {where(settings)}")
        if args.trigger == "cli" and not settings.redis_url.startswith(MEMORY_URL) \
                and asyncio.run(_holdout_candidates(settings)) < 2:
            raise Refused(f"namespace {settings.namespace!r} at "
                          f"{settings.redis_url_for_logs()} has learned fewer than two "
                          "sessions of two events or more: nothing to tune on (a run predicts "
                          "held-out sessions' next items). Name the namespace serving your "
                          "shop (--redis-url, --namespace), or learn events first (workers, "
                          "sessionrec load)")
        return live_tune_command(args)
    settings = from_args(args)
    train = read_log(args.train, args)
    fit, valid = split_validation(train, args.valid_fraction) if len(train) else (train, train)
    if not len(fit) or next(static_cases(valid), None) is None:
        raise Refused(f"{args.train}: too few sessions to tune on (its last "
                      f"{args.valid_fraction:g} of sessions, the validation split, must hold a "
                      "session of two events or more, and the rest some events)")
    params = [p.strip() for p in args.params.split(",")] if args.params else None

    async def main(s: Settings) -> Settings:
        best, _ = await tune(s, train, valid_fraction=args.valid_fraction, limit=args.limit,
                             params=params)
        return best
    best = with_redis(settings, args, main)
    Path(args.out).write_text(env_file(best), encoding="utf-8")
    print(f"best setting written to {args.out}:\n{env_file(best)}")
    return 0
