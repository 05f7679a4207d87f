"""The crafted-session attack on self-tuning (issue 23, point 4), on a real click log's state.

A state is learned from a log (``sessionrec load``), one honest tuning run is recorded, and
HR@20 / MRR@20 are measured on the log's test sessions. Then, through ``POST /events`` with
the publishable key, an attacker sends sessions crafted so that the parameters a run would
find best on them are the worst for real traffic: pairs of sessions dated a day back (Q then
P, P then D) and as many new sessions (P then Q), for distinct random items. A worker applies
them, automatic runs are on (``--tune-min-interval 0``, checked every second): whatever run
starts is waited for; then a run is started by hand (``POST /admin/tune``), as an operator
would. Accuracy on the test sessions is measured again with the parameters in force.

    python scripts/tune_attack.py --data ../shared/datasets/diginetica-srgnn \\
        [--train-sessions 12000] [--attack-events 6000] [--limit 20000] [--log-ends-now]

Starts its own redis-server. Prints the runs' records and the figures before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# the tuning runs are processes of their own: they must run this checkout's code too
os.environ["PYTHONPATH"] = str(ROOT)
os.chdir(ROOT)

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402

from service.answers.recommender import Recommender  # noqa: E402
from service.api.app import create_app  # noqa: E402
from service.offline import clicklog  # noqa: E402
from service.offline.clicklog import ClickLog  # noqa: E402
from service.offline.evaluate import align_times, static_cases  # noqa: E402
from service.offline.loader import bulk_store, load  # noqa: E402
from service.offline.redisproc import RedisProcess, free_port  # noqa: E402
from service.settings import Settings  # noqa: E402
from service.store.state import Store  # noqa: E402
from workers.consumer import Worker  # noqa: E402

SECRET, PUBLIC = "sk_attack_check", "pk_attack_check"
DAY = 86_400.0


def last_sessions(log: ClickLog, n: int | None) -> ClickLog:
    if n is None:
        return log
    bounds = log.session_bounds()
    start = int(bounds[max(0, len(bounds) - 1 - n)])
    return ClickLog(log.sessions[start:], log.items[start:], log.times[start:])


def crafted(items: list[str], events: int, now: float, seed: int) -> list[dict[str, Any]]:
    """``events`` events of the pattern: per triple of distinct items (Q, P, D), a session Q
    then P and a session P then D dated a day back, then a new session P then Q (all pairs
    first, then the new sessions, as sent in the issue)."""
    rng = np.random.default_rng(seed)
    triples = events // 6
    chosen = rng.choice(len(items), size=(triples, 3), replace=3 * triples > len(items))
    old: list[dict[str, Any]] = []
    new: list[dict[str, Any]] = []
    for n, (q, p, d) in enumerate(chosen.tolist()):
        for sid, first, second, t in ((f"atk-qp{n}", q, p, now - DAY + n),
                                      (f"atk-pd{n}", p, d, now - DAY + n + 0.5)):
            old += [{"session_id": sid, "item_id": items[first], "timestamp": t},
                    {"session_id": sid, "item_id": items[second], "timestamp": t + 1}]
        new += [{"session_id": f"atk-new{n}", "item_id": items[p], "timestamp": now + n / 1000},
                {"session_id": f"atk-new{n}", "item_id": items[q], "timestamp": now + n / 1000
                 + 1}]
    return old + new


async def accuracy(store: Store, settings: Settings, test: ClickLog, limit: int | None
                   ) -> tuple[float, float]:
    """HR@20 and MRR@20 on the test prefixes (static protocol, seen items allowed), with the
    parameters of the shared record."""
    recommender = Recommender(store, settings)
    record = await store.model.record()
    recommender.use(record)
    ranks = []
    for case in static_cases(test, limit):
        got = await recommender.recommend([(i, t, 1.0) for i, t in zip(case.prefix, case.times,
                                                                        strict=True)], 20, True)
        ids = [r["id"] for r in got.rows()]
        ranks.append(ids.index(case.target) + 1 if case.target in ids else 0)
    r = np.asarray(ranks)
    hit = r > 0
    return float(hit.mean()), float(np.where(hit, 1.0 / np.maximum(r, 1), 0.0).mean())


def cli_run(settings: Settings) -> dict[str, Any]:
    import subprocess
    out = subprocess.run([sys.executable, "-m", "service.cli", "--log-level", "WARNING", "tune",
                          "--apply"], env={**os.environ, **settings.to_env()}, check=True,
                         capture_output=True, text=True)
    return dict(json.loads(out.stdout))


def brief(run: dict[str, Any] | None) -> str:
    if run is None:
        return "none"
    keys = ("id", "trigger", "holdout_sessions", "predictions", "promoted")
    out = {k: run.get(k) for k in keys}
    out["seconds"] = round(run["finished_at"] - run["started_at"], 1) if run.get(
        "finished_at") else None
    out["current"] = run.get("current")
    out["best"] = {k: v for k, v in (run.get("best") or {}).items() if k != "params"}
    out["gain"] = run.get("gain")
    out["slices"] = run.get("slices")
    out["held_back"] = run.get("held_back")
    return json.dumps(out)


async def wait_run(client: aiohttp.ClientSession, base: str, after: str | None,
                   seconds: float) -> dict[str, Any] | None:
    """The first run other than ``after`` to finish within ``seconds`` (None if none did)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        async with client.get(base + "/model") as resp:
            model = await resp.json()
        last = model["tuning"]["last_run"]
        if last is not None and last["id"] != after and last["finished_at"] is not None:
            return dict(last)
        await asyncio.sleep(1.0)
    return None


async def main(args: argparse.Namespace, url: str) -> None:
    settings = Settings(redis_url=url, namespace="attack", secret_keys=SECRET,
                        publishable_keys=PUBLIC, tune_min_interval=0.0)
    data = Path(args.data)
    train = last_sessions(clicklog.read(data / "train.tsv"), args.train_sessions)
    if args.log_ends_now:  # a live shop's traffic: its newest sessions an hour old
        train = clicklog.ClickLog(train.sessions, train.items,
                                  train.times + (time.time() - 3600 - train.times.max()))
    test = align_times(train, clicklog.read(data / "test.tsv"))
    store = bulk_store(settings)
    await store.prepare()
    started = time.perf_counter()
    done = await load(store, train.events())
    print(f"state: {done.sessions} sessions, {done.events} events loaded in "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    honest = cli_run(settings)
    print(f"honest run: {brief(honest)}", flush=True)
    hr0, mrr0 = await accuracy(store, settings, test, args.limit)
    print(f"before the attack: HR@20 {hr0:.4f} MRR@20 {mrr0:.4f}", flush=True)

    port = free_port()
    runner = web.AppRunner(create_app(settings, Store(settings)), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    base = f"http://127.0.0.1:{port}"
    worker = Worker(settings, worker_id="attack-check")
    worker.auto_tune_every = 1.0
    working = asyncio.create_task(worker.run())
    items = sorted(set(train.items.tolist()))
    events = crafted(items, args.attack_events, time.time(), args.seed)
    async with aiohttp.ClientSession(headers={"X-API-Key": PUBLIC}) as public, \
            aiohttp.ClientSession(headers={"X-API-Key": SECRET}) as admin:
        for at in range(0, len(events), settings.max_batch):
            async with public.post(base + "/events",
                                   json={"events": events[at:at + settings.max_batch]}) as resp:
                assert resp.status == 202, await resp.text()
        print(f"sent {len(events)} crafted events with the publishable key", flush=True)
        automatic = await wait_run(admin, base, honest["id"], args.wait)
        print(f"automatic run within {args.wait:g} s of the attack: {brief(automatic)}",
              flush=True)
        async with admin.post(base + "/admin/tune") as resp:
            run_id = (await resp.json())["run"]
        forced = await wait_run(admin, base, (automatic or honest)["id"], 1800)
        assert forced is not None and forced["id"] == run_id, forced
        print(f"run started by hand after the attack: {brief(forced)}", flush=True)
    worker.stop()
    await working
    await worker.redis.aclose()
    await runner.cleanup()
    record = await store.model.record()
    hr1, mrr1 = await accuracy(store, settings, test, args.limit)
    print(f"parameters in force: {dict(record.values)}")
    print(f"after the attack: HR@20 {hr1:.4f} MRR@20 {mrr1:.4f} "
          f"(before: {hr0:.4f} / {mrr0:.4f})")
    await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a directory with train.tsv, test.tsv")
    parser.add_argument("--train-sessions", type=int, default=None,
                        help="learn only the log's last N training sessions (default: all)")
    parser.add_argument("--attack-events", type=int, default=6000)
    parser.add_argument("--limit", type=int, default=None, help="test predictions (default all)")
    parser.add_argument("--wait", type=float, default=90.0,
                        help="seconds to wait for an automatic run after the attack")
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--log-ends-now", action="store_true",
                        help="move the log's clock so that its last session is an hour old, as "
                             "a live shop's traffic is (by default it keeps its own, years "
                             "before the crafted sessions, which neighbour recency then favours)")
    arguments = parser.parse_args()
    with RedisProcess() as redis_url:
        asyncio.run(main(arguments, redis_url))
