"""Filters at catalogue scale (issue 23, point 7): a probe's latency and the serve process'
memory while clients send filters no request sent before.

    python scripts/bench_filters.py [--records 1000000] [--seconds 30] [--clients 4] \
        [--serve-from ../old-checkout] [--data CLICKLOG] [--seed 1]

A private redis-server gets the records (1-3 of 2,000 categories, 0-3 of 500 tags, a price,
colour, size, mostly a brand of 1,000) and behaviour (synthetic sessions, or --data's click
log); one `sessionrec serve` of --serve-from's code (its .venv's python if it has one) answers a
first filtered request (it reads the catalogue whole: timed). Then --clients processes send
filters never sent before (1 to MAX_FILTER_VALUES values per list) one request at a time,
alternating POST /iid_recommend and GET /popular, while a probe asks GET /popular?k=10 every
20 ms and the serve process' RSS is sampled every 0.5 s (killed past 8 GiB, and reported).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.core.catalog import AttributeValue, Record  # noqa: E402
from service.core.model import Event  # noqa: E402
from service.offline import clicklog  # noqa: E402
from service.offline.loader import bulk_store, load  # noqa: E402
from service.offline.redisproc import RedisProcess, free_port  # noqa: E402
from service.requests.rules import MAX_FILTER_VALUES  # noqa: E402
from service.settings import Settings  # noqa: E402

CATEGORIES, TAGS, COLOURS, SIZES, BRANDS, HOT = 2000, 500, 20, 10, 1000, 5000
RSS_LIMIT = 8 << 30
GET_LIMIT = 7000  # characters of the quoted filter: aiohttp refuses request lines over 8190
JSON = {"Content-Type": "application/json"}


def records(ids: list[str], rng: random.Random) -> Iterator[Record]:
    for item in ids:
        attributes: dict[str, AttributeValue] = {"color": f"col{rng.randrange(COLOURS)}",
                                                 "size": 36 + rng.randrange(SIZES)}
        if rng.random() < 0.7:
            attributes["brand"] = f"b{rng.randrange(BRANDS)}"
        yield Record(item, None, _pick(rng, "c", CATEGORIES, rng.randint(1, 3)), True,
                     round(rng.uniform(1, 1000), 2), _pick(rng, "t", TAGS, rng.randint(0, 3)),
                     attributes)


def _pick(rng: random.Random, prefix: str, space: int, k: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{n}" for n in rng.sample(range(space), k))


def sessions(hot: list[str], rng: random.Random, count: int = 20_000) -> list[Event]:
    """``count`` sessions of 2-6 events, over ``hot`` with a skew toward its start."""
    out = []
    now = time.time()
    for s in range(count):
        t = now - rng.uniform(600, 7200)
        for _ in range(rng.randint(2, 6)):
            t += rng.uniform(5, 60)
            out.append(Event(f"s{s}", hot[int(len(hot) * rng.random() ** 3)], t,
                             "purchase" if rng.random() < 0.1 else "view"))
    return out


async def fill(settings: Settings, ids: list[str], events: list[Event], seed: int
               ) -> tuple[float, float]:
    """The catalogue, in batches of 5,000 through ``Store.put_items``, then the behaviour:
    the seconds each took."""
    store = bulk_store(settings)
    try:
        await store.prepare()
        started = time.perf_counter()
        batch: list[Record] = []
        for record in records(ids, random.Random(seed)):
            batch.append(record)
            if len(batch) == 5000:
                await store.items.put(batch)
                batch = []
        if batch:
            await store.items.put(batch)
        loaded = time.perf_counter() - started
        return loaded, (await load(store, events)).seconds
    finally:
        await store.close()


def a_filter(rng: random.Random) -> dict[str, Any]:
    most = MAX_FILTER_VALUES
    low = rng.uniform(0, 900)
    price = rng.choice(({"min": low}, {"max": low + 5},
                        {"min": low, "max": low + rng.uniform(1, 300)}))
    kind = rng.randrange(8)
    if kind == 0:
        return {"price": price}
    if kind == 1:
        return {"categories": list(_pick(rng, "c", CATEGORIES, rng.randint(1, 5)))}
    if kind == 2:
        return {"tags": list(_pick(rng, "t", TAGS, rng.randint(1, 4)))}
    if kind == 3:
        return {"attributes": {"color": list(_pick(rng, "col", COLOURS, rng.randint(1, 3))),
                               "brand": list(_pick(rng, "b", BRANDS, rng.randint(1, 5)))}}
    if kind == 4:
        return {"categories": list(_pick(rng, "c", CATEGORIES, rng.randint(1, 3))),
                "price": price, "attributes": {"size": rng.sample(range(36, 36 + SIZES), 2)}}
    if kind == 5:  # large: a hundred categories
        return {"categories": list(_pick(rng, "c", CATEGORIES, most)), "price": price}
    if kind == 6:  # large: every colour and size, a hundred brands, a hundred tags
        return {"tags": list(_pick(rng, "t", TAGS, most)), "attributes": {
            "color": list(_pick(rng, "col", COLOURS, COLOURS)),
            "size": list(range(36, 36 + SIZES)), "brand": list(_pick(rng, "b", BRANDS, most))}}
    return {"categories": list(_pick(rng, "c", CATEGORIES, most)),  # every list at its largest
            "tags": list(_pick(rng, "t", TAGS, most)), "price": price,
            "attributes": {"color": list(_pick(rng, "col", COLOURS, rng.randint(10, 20))),
                           "brand": list(_pick(rng, "b", BRANDS, most))}}


def distinct_filter(rng: random.Random, seen: set[str], me: int, clients: int) -> str:
    """A filter no client sent before: its canonical text (lists sorted) is new to this client
    and hashes to it (so to no other client)."""
    while True:
        chosen = a_filter(rng)
        canonical = json.dumps(_canonical(chosen), sort_keys=True)
        if zlib.crc32(canonical.encode()) % clients == me and canonical not in seen:
            seen.add(canonical)
            return json.dumps(chosen, separators=(",", ":"))


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    return sorted(value, key=str) if isinstance(value, list) else value


async def client(api: str, start_at: float, end_at: float, me: int, clients: int, seed: int,
                 hot: list[str]) -> dict[str, Any]:
    rng = random.Random(seed * 1000 + me)
    seen: set[str] = set()
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    errors: dict[str, str] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        while time.time() < end_at:
            text = distinct_filter(rng, seen, me, clients)
            post = len(latencies) % 2 == 0 or len(quote(text)) > GET_LIMIT
            interactions: dict[str, Any] = {item: {} for item in rng.sample(hot, 3)}
            started = time.perf_counter()
            try:
                if post:
                    body = json.dumps({"user_interactions": interactions, "k": 20})
                    request = session.post(api + "/iid_recommend", headers=JSON,
                                           data=body[:-1] + ',"filter":' + text + "}")
                else:
                    request = session.get(api + "/popular", params={"k": "20", "filter": text})
                async with request as resp:
                    answer = await resp.read()
                    key = f"{'POST /iid_recommend' if post else 'GET /popular'} {resp.status}"
                    if resp.status != 200:
                        errors.setdefault(key, answer[:300].decode(errors="replace"))
            except (aiohttp.ClientError, TimeoutError) as exc:
                key = type(exc).__name__
                await asyncio.sleep(0.05)  # a dead server: no busy loop
            statuses[key] += 1
            latencies.append(time.perf_counter() - started)
    return {"latencies": latencies, "statuses": statuses, "errors": errors}


def rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Watch:
    """The serve process' RSS every 0.5 s: its peak, and a kill past ``RSS_LIMIT``."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc, self.started, self.peak = proc, time.monotonic(), 0
        self.exceeded: float | None = None  # seconds after the serve process started

    async def run(self) -> None:
        while self.proc.poll() is None:
            now = rss(self.proc.pid)
            self.peak = max(self.peak, now)
            if now > RSS_LIMIT:
                self.exceeded = time.monotonic() - self.started
                self.proc.kill()
            await asyncio.sleep(0.5)


async def warm_up(api: str, watch: Watch, body: bytes, limit: float = 3600) -> float:
    started = time.perf_counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=limit)) as session:
        while watch.proc.poll() is None and time.perf_counter() - started < limit:
            try:
                async with session.post(api + "/iid_recommend", data=body, headers=JSON) as resp:
                    await resp.read()
                    if resp.status == 200:
                        return time.perf_counter() - started
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.5)
    raise RuntimeError("no filtered answer: the serve process "
                       + ("was killed" if watch.exceeded else "died or timed out"))


async def probe(api: str, start_at: float, end_at: float, watch: Watch
                ) -> tuple[list[float], int]:
    latencies: list[float] = []
    failed = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        while time.time() < end_at and watch.proc.poll() is None:
            started = time.perf_counter()
            try:
                async with session.get(api + "/popular?k=10") as resp:
                    await resp.read()
                    failed += resp.status != 200
            except (aiohttp.ClientError, TimeoutError):
                failed += 1
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(max(0.0, 0.02 - (time.perf_counter() - started)))
    return latencies, failed


def ms(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.array(values), q)) * 1000, 2) if values else 0.0


async def measure(api: str, proc: subprocess.Popen[bytes], args: argparse.Namespace,
                  hot: list[str]) -> dict[str, Any]:
    watch = Watch(proc)
    watching = asyncio.create_task(watch.run())
    out: dict[str, Any] = {}
    try:
        body = json.dumps({"user_interactions": {hot[0]: {}}, "k": 20,
                           "filter": {"price": {"min": 0}}}).encode()
        out["warm-up s (first filtered answer)"] = round(await warm_up(api, watch, body), 2)
        out["serve RSS MiB after warm-up"] = round(rss(proc.pid) / 2**20, 1)
        start_at = time.time() + 3  # the clients' start-up (imports) is not measured
        end_at = start_at + args.seconds
        children = [await asyncio.create_subprocess_exec(
            sys.executable, __file__, "_client", api, str(start_at), str(end_at), str(c),
            str(args.clients), str(args.seed), json.dumps(hot[:500]),
            stdout=asyncio.subprocess.PIPE) for c in range(args.clients)]
        watch.peak = 0
        probed, probe_failed = await probe(api, start_at, end_at, watch)
        results = [json.loads((await child.communicate())[0]) for child in children]
        out["serve RSS MiB max during load"] = round(watch.peak / 2**20, 1)
    except RuntimeError as exc:
        out["failed"] = str(exc)
        probed, probe_failed, results = [], 0, []
    finally:
        watching.cancel()
    if watch.exceeded is not None:
        out["exceeded 8 GiB after s (from serve start)"] = round(watch.exceeded, 1)
    latencies = [x for r in results for x in r["latencies"]]
    statuses: Counter[str] = sum((Counter(r["statuses"]) for r in results), Counter())
    return {**out, "probe requests": len(probed), "probe not 200": probe_failed,
            "probe p50 ms": ms(probed, 50), "probe p99 ms": ms(probed, 99),
            "probe max ms": round(max(probed, default=0.0) * 1000, 2),
            "filtered requests": len(latencies),
            "filtered req/s": round(len(latencies) / args.seconds, 1),
            "filtered p50 ms": ms(latencies, 50), "filtered p99 ms": ms(latencies, 99),
            "statuses": dict(sorted(statuses.items())),
            "error samples": {k: v for r in results for k, v in r["errors"].items()}}


@contextmanager
def serve(settings: Settings, code: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    own = code / ".venv" / "bin" / "python"
    env = {**os.environ, "SESSIONREC_REDIS_URL": settings.redis_url, "SESSIONREC_PORT": str(port),
           "SESSIONREC_NAMESPACE": settings.namespace, "SESSIONREC_PROCESSES": "1",
           "PYTHONPATH": str(code)}
    proc = subprocess.Popen([str(own) if own.exists() else sys.executable, "-m", "service.cli",
                             "--log-level", "WARNING", "serve"], env=env, cwd=code)
    try:
        deadline = time.monotonic() + 60
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"serve from {code} did not listen on {port}")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}", proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_client":
        api, start_at, end_at, me, clients, seed, items = sys.argv[2:9]
        print(json.dumps(asyncio.run(client(api, float(start_at), float(end_at), int(me),
                                            int(clients), int(seed), json.loads(items)))))
        return
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--serve-from", type=Path, default=ROOT,
                        help="the checkout whose code serves (default: this one)")
    parser.add_argument("--data", type=Path, default=None, help="a click log to learn from")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    log = clicklog.read(args.data) if args.data else None
    logged = list(dict.fromkeys(log.items.tolist())) if log is not None else []
    ids = (logged + [f"i{n}" for n in range(args.records)])[:max(args.records, len(logged))]
    hot = ids[:HOT]
    events = list(log.events()) if log is not None else sessions(hot, rng)
    with RedisProcess() as url:
        settings = Settings(redis_url=url, namespace="benchfilters")
        loaded, learned = asyncio.run(fill(settings, ids, events, args.seed))
        figures: dict[str, Any] = {
            "serve code": str(args.serve_from.resolve()), "records": len(ids),
            "catalogue load s": round(loaded, 1), "events learned": len(events),
            "behaviour load s": round(learned, 1), "clients": args.clients,
            "seconds": args.seconds}
        with serve(settings, args.serve_from.resolve()) as (api, proc):
            figures.update(asyncio.run(measure(api, proc, args, hot)))
    print("| figure | value |\n|---|---|")
    for key, value in figures.items():
        print(f"| {key} | {value} |")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
