"""The long crash test: SIGKILL workers at random moments while a click log is applied, and
check that the learned state equals one clean pass over the same events.

    python scripts/crash_test.py --events 50000 --workers 3 --kill-every 0.3
    python scripts/crash_test.py --data ../shared/datasets/diginetica-srgnn/train.tsv \\
        --events 100000

Starts its own redis-server. Prints events, kills, restarts and mismatching keys (the test
passes with zero); the CI suite runs a shortened version (tests/test_worker.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.core.model import Event  # noqa: E402
from service.offline import clicklog  # noqa: E402
from service.offline.redisproc import RedisProcess  # noqa: E402
from service.offline.statecheck import differences, learned_state  # noqa: E402
from service.settings import Settings  # noqa: E402
from service.store.state import Store  # noqa: E402
from workers.consumer import Worker  # noqa: E402


def generated(n: int, seed: int) -> list[Event]:
    rnd = random.Random(seed)
    events: list[Event] = []
    t, s = 1_700_000_000.0, 0
    while len(events) < n:
        s += 1
        for _ in range(rnd.randint(2, 9)):
            t += rnd.random() * 3
            item = str(int(rnd.paretovariate(1.1) * 10) % 3000)
            events.append(Event(f"s{s}", item, round(t, 3),
                                rnd.choice(["view", "view", "click", "purchase"])))
    return events[:n]


def spawn(settings: Settings) -> subprocess.Popen[bytes]:
    env = dict(os.environ, SESSIONREC_REDIS_URL=settings.redis_url,
               SESSIONREC_NAMESPACE=settings.namespace,
               SESSIONREC_PARTITIONS=str(settings.partitions), SESSIONREC_LEASE_MS="1000",
               SESSIONREC_BATCH_SIZE=str(settings.batch_size), SESSIONREC_BLOCK_MS="20")
    return subprocess.Popen([sys.executable, "-m", "service.cli", "--log-level", "ERROR",
                             "worker"], env=env, cwd=ROOT)


async def ingest(settings: Settings, events: list[Event]) -> None:
    store = Store(settings)
    await store.prepare()
    for start in range(0, len(events), 500):
        await store.ingestion.ingest(events[start:start + 500])
    await store.close()


async def clean_pass(settings: Settings, events: list[Event]) -> None:
    await ingest(settings, events)
    store = Store(settings)
    worker = Worker(settings, worker_id="clean")
    task = asyncio.create_task(worker.run())
    while (await store.stats.read())["pending"]:
        await asyncio.sleep(0.1)
    worker.stop()
    await task
    await worker.redis.aclose()
    await store.close()


async def diagnose(store: Store) -> None:
    """Why a partition is not draining: its group, pending entries, watermark and lease."""
    from service.store.keyspace import GROUP

    r: Any = store.redis
    print("workers:", await r.zrange(store.keys.workers(), 0, -1, withscores=True))
    for p in range(store.settings.partitions):
        stream = store.keys.stream(p)
        groups = await r.xinfo_groups(stream)
        pending = await r.xpending_range(stream, GROUP, min="-", max="+", count=3)
        print(f"partition {p}: lease={await r.get(store.keys.lease(p))!r} "
              f"watermark={await r.get(store.keys.watermark(p))!r} len={await r.xlen(stream)} "
              f"groups={[(g['name'], g['pending'], g['last-delivered-id'], g.get('lag')) for g in groups]} "  # noqa: E501
              f"first pending={pending}", flush=True)


async def run(args: argparse.Namespace) -> int:
    events = (list(clicklog.read(args.data).events())[:args.events] if args.data
              else generated(args.events, args.seed))
    rnd = random.Random(args.seed)
    with RedisProcess() as url:
        base = Settings(redis_url=url, partitions=args.partitions, batch_size=args.batch_size)
        clean = base.replace(namespace="clean")
        crashed = base.replace(namespace="crashed")
        started = time.monotonic()
        await clean_pass(clean, events)
        print(f"clean pass: {len(events)} events in {time.monotonic() - started:.1f}s",
              flush=True)
        await ingest(crashed, events)
        store = Store(crashed)
        procs = [spawn(crashed) for _ in range(args.workers)]
        kills = 0
        started = time.monotonic()
        while (await store.stats.read())["pending"] > 0:
            await asyncio.sleep(rnd.uniform(0.2, 2.0) * args.kill_every)
            victim = rnd.randrange(len(procs))
            procs[victim].send_signal(signal.SIGKILL)
            procs[victim].wait()
            kills += 1
            procs[victim] = spawn(crashed)
            if time.monotonic() - started > args.timeout:
                print(f"kill phase ended after {args.timeout:.0f}s; draining", flush=True)
                break
        # whatever is left is applied by the surviving workers before states are compared
        drain_deadline = time.monotonic() + args.drain
        while (await store.stats.read())["pending"] > 0 and time.monotonic() < drain_deadline:
            await asyncio.sleep(0.2)
        if (await store.stats.read())["pending"] > 0:
            await diagnose(store)
        await asyncio.sleep(1.5)
        for p in procs:
            p.send_signal(signal.SIGTERM)
        codes = [p.wait(20) for p in procs]
        stats = await store.stats.read()
        cap = Settings().index_cap  # the workers' (spawn passes no other)
        diff = differences(await learned_state(store.redis, "crashed", cap),
                           await learned_state(store.redis, "clean", cap), limit=1000)
        await store.close()
    print(f"crashed pass: {stats['events_processed']}/{stats['events_accepted']} events "
          f"applied in {time.monotonic() - started:.1f}s with {args.workers} workers, "
          f"{kills} SIGKILLs; exit codes after SIGTERM {codes}")
    print(f"mismatching keys: {len(diff)}" + ("" if not diff else f" e.g. {diff[:5]}"))
    ok = not diff and stats["events_processed"] == stats["events_accepted"] == len(events)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50000)
    parser.add_argument("--data", type=Path, default=None, help="a click log instead of "
                        "generated events")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--kill-every", type=float, default=0.5,
                        help="mean seconds between kills")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--drain", type=float, default=300,
                        help="seconds the surviving workers get to apply the rest")
    sys.exit(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
