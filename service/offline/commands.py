"""The offline commands, ``sessionrec load``, ``catalog``, ``eval`` and ``tune``: click logs or
catalogue records in, learned state or an accuracy report out. Each that writes to a Redis
says which one first; one with nothing to learn from says so (``Refused``)."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from service.failures import Refused
from service.offline import catalog, clicklog
from service.offline.clicklog import ClickLog
from service.offline.evalreport import chart, report
from service.offline.evaluate import (
    Result,
    align_times,
    evaluate,
    static_cases,
    summarise,
)
from service.offline.leased import run_leased
from service.offline.loader import bulk_store, load, refuse_unless_empty
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


def live_tune_command(args: argparse.Namespace) -> int:
    """``sessionrec tune --apply``: one run on the live state, under the tuning lease
    (``leased.run_leased``)."""
    from service.core.scoring import Params
    from service.offline.livetune import tune_live

    settings = from_args(args)

    def work(store: Store, run_id: str) -> Coroutine[Any, Any, dict[str, Any]]:
        return tune_live(store, Params.from_settings(settings), trigger=args.trigger,
                         run_id=run_id, say=lambda line: print(line, file=sys.stderr))
    return run_leased(settings, args.run_id, "tune", work)


def sequence_command(args: argparse.Namespace) -> int:
    """``sessionrec sequence --apply``: one sequence model run on the live state, under its
    lease (``leased.run_leased``)."""
    from service.offline.sequencerun import fit_live

    settings = from_args(args)
    say("sequence", f"training on {where(settings)}")

    def work(store: Store, run_id: str) -> Coroutine[Any, Any, dict[str, Any]]:
        return fit_live(store, run_id, say=lambda line: print(line, file=sys.stderr))
    return run_leased(settings, args.run_id, "sequence", work)


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
