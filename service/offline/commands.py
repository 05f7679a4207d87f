"""The offline commands, ``sessionrec load`` and ``sessionrec eval``: click logs in, learned
state or an accuracy report out."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import platform
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from service.offline import catalog, clicklog
from service.offline.clicklog import ClickLog
from service.offline.evaluate import Result, align_times, chart, evaluate, report, summarise
from service.offline.loader import BULK_TIMEOUT, bulk_store, load
from service.offline.redisproc import RedisProcess
from service.settings import Settings, from_args
from service.store.backends import MEMORY_URL, REDIS_FAILURES
from service.store.state import Store

T = TypeVar("T")


def read_log(path: str, args: argparse.Namespace) -> ClickLog:
    return clicklog.read(path, args.format, args.columns, args.delimiter)


def concat(logs: list[ClickLog]) -> ClickLog:
    return ClickLog(np.concatenate([x.sessions for x in logs]),
                    np.concatenate([x.items for x in logs]),
                    np.concatenate([x.times for x in logs]))


def load_command(args: argparse.Namespace) -> int:
    settings = from_args(args)
    log = concat([read_log(p, args) for p in args.files])

    async def main() -> None:
        store = bulk_store(settings)
        try:
            await store.prepare()
            done = await load(store, log.events())
        finally:
            await store.close()
        print(f"loaded {done.events} events: {done.sessions} sessions, {done.items} items in "
              f"{done.seconds:.1f}s into {settings.redis_url} (namespace {settings.namespace})")
    asyncio.run(main())
    return 0


def catalog_command(args: argparse.Namespace) -> int:
    """``sessionrec catalog FILE``: exit 1 with the line and field when a record is bad."""
    settings = from_args(args)

    async def main() -> int:
        store = Store(settings.replace(read_cache_mb=0))
        started = time.monotonic()
        try:
            await store.prepare()
            stored = await catalog.import_file(store, args.file, args.format,
                                               catalog.progress_printer(args.file))
        except catalog.BadRecord as exc:
            print(f"sessionrec catalog: {args.file}, {exc}; nothing stored", file=sys.stderr)
            return 1
        finally:
            await store.close()
        print(f"catalog: {stored} records stored in {time.monotonic() - started:.1f}s into "
              f"{settings.redis_url_for_logs()} (namespace {settings.namespace})")
        return 0
    return asyncio.run(main())


def eval_command(args: argparse.Namespace) -> int:
    settings = from_args(args)
    train = read_log(args.train, args)
    test = align_times(train, read_log(args.test, args))
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    protocols = ("static", "streaming") if args.protocol == "both" else (args.protocol,)
    title = args.title or Path(args.train).parent.name or "evaluation"
    sections = [f"## {title}", "",
                f"- date: {datetime.date.today()}, machine: {platform.machine()} "
                f"{platform.node()}, python {platform.python_version()}",
                f"- train: {len(train)} events, test: {len(test)} events; k = 20; "
                f"served model through {'POST /iid_recommend' if args.http else 'Store'}", ""]
    for protocol in protocols:
        results = _run(settings, train, test, models, protocol, args)
        summary = summarise(results, train)
        sections.append(report(summary, f"{title}, {protocol} protocol"))
        print(sections[-1])
        if args.out:
            png = Path(f"{args.out}-{protocol}.png")
            chart({n: r.curve() for n, r in results.items()}, png, f"{title} ({protocol})")
            sections.append(f"![HR and MRR at k = 1..20]({png.name})\n")
    if args.out:
        Path(f"{args.out}.md").write_text("\n".join(sections) + "\n", encoding="utf-8")
        print(f"report written to {args.out}.md")
    return 0


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
            return asyncio.run(main(settings.replace(redis_url=url)))
    return asyncio.run(main(settings))


def live_tune_command(args: argparse.Namespace) -> int:
    """``sessionrec tune --apply``: one run on the live state, under the tuning lease, at a
    lowered priority (serving and learning keep the CPU they need)."""
    import json
    import uuid

    from service.core.scoring import Params
    from service.offline.livetune import tune_live

    settings = from_args(args)
    if settings.redis_url.startswith(MEMORY_URL):
        print("tune --apply needs a Redis (the embedded default lives in one process)",
              file=sys.stderr)
        return 2
    with contextlib.suppress(OSError):
        os.nice(10)
    run_id = args.run_id or uuid.uuid4().hex[:12]

    async def main() -> int:
        # an offline process: a slow reply on a busy Redis is waited for, not a failed run
        store = Store(settings.replace(redis_timeout=max(settings.redis_timeout, BULK_TIMEOUT)))
        lease = store.keys.tune_lease()
        try:
            # an API process that started this run took the lease in its name already
            if not await store.scripts.lease(lease, run_id, settings.tune_lease_ms, "take"):
                holder = await store.redis.get(lease)
                print(f"a tuning run is running already: {holder!r}", file=sys.stderr)
                return 1

            async def renew() -> None:
                while True:
                    await asyncio.sleep(settings.tune_lease_ms / 3000)
                    try:
                        await store.scripts.lease(lease, run_id, settings.tune_lease_ms, "renew")
                    except REDIS_FAILURES as exc:  # the next renewal, a third later, may do
                        print(f"tuning lease not renewed: {exc}", file=sys.stderr)
            renewing = asyncio.create_task(renew())
            try:
                run = await tune_live(store, Params.from_settings(settings),
                                      trigger=args.trigger, run_id=run_id,
                                      say=lambda line: print(line, file=sys.stderr))
            finally:
                renewing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewing
                await store.scripts.lease(lease, run_id, settings.tune_lease_ms, "release")
            print(json.dumps(run))
            return 0
        finally:
            await store.close()
    return asyncio.run(main())


def tune_command(args: argparse.Namespace) -> int:
    from service.offline.tune import env_file, tune

    if args.apply:
        return live_tune_command(args)
    if not args.train:
        print("sessionrec tune: --train FILE is required (or --apply, to tune on the live "
              "state)", file=sys.stderr)
        return 2
    settings = from_args(args)
    train = read_log(args.train, args)
    params = [p.strip() for p in args.params.split(",")] if args.params else None

    async def main(s: Settings) -> Settings:
        best, _ = await tune(s, train, valid_fraction=args.valid_fraction, limit=args.limit,
                             params=params)
        return best
    best = with_redis(settings, args, main)
    Path(args.out).write_text(env_file(best), encoding="utf-8")
    print(f"best setting written to {args.out}:\n{env_file(best)}")
    return 0
