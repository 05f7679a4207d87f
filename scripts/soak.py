"""Soak: mixed load for a while, sampling Redis memory, to show that memory levels off.

    python scripts/soak.py --minutes 10 --rate 400 --png docs/soak.png

Starts its own redis-server, one API process and one worker, then sends events from an
endless stream of new sessions over a finite catalogue plus recommendation requests, at a fixed
rate, and samples ``used_memory`` every few seconds. Memory is bounded by the caps and TTLs:
per-item indexes hold at most ``index_limit(index_cap)`` entries (the cap plus a trim's
slack), histories and live sessions expire, the stream is trimmed below what the workers
acknowledged. The plateau is about
rate x history_ttl x bytes per history: the soak shortens the TTLs so the plateau is reached
within minutes; production TTLs raise the plateau, not the slope.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.offline.redisproc import RedisProcess, free_port  # noqa: E402


def start(cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "service.cli", "--log-level", "WARNING",
                             *cmd], env={**os.environ, **env}, cwd=ROOT)


async def load(base: str, rate: float, seconds: float, catalogue: int, stop_at: float) -> int:
    rnd = random.Random(7)
    sent = 0
    session = 0
    async with aiohttp.ClientSession() as http:
        start_t = time.perf_counter()
        while time.perf_counter() - start_t < seconds and time.monotonic() < stop_at:
            session += 1
            items = [str(int(rnd.paretovariate(1.1) * 50) % catalogue)
                     for _ in range(rnd.randint(2, 8))]
            events = [{"session_id": f"soak-{session}", "item_id": i} for i in items]
            async with http.post(base + "/events", json={"events": events}) as resp:
                assert resp.status == 202, await resp.text()
            body = {"user_interactions": {i: {} for i in items[:3]}, "k": 10}
            async with http.post(base + "/iid_recommend", json=body) as resp:
                assert resp.status == 200
            sent += len(events) + 1
            due = start_t + sent / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
    return sent


async def sample(url: str, every: float, until: float, out: list[tuple[float, int, int]]
                 ) -> None:
    client = aioredis.Redis.from_url(url)
    t0 = time.monotonic()
    while time.monotonic() < until:
        info = await client.info("memory")
        keys = await client.dbsize()
        out.append((time.monotonic() - t0, int(info["used_memory"]), int(keys)))
        await asyncio.sleep(every)
    await client.aclose()


def plot(rows: list[tuple[float, int, int]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.plot([r[0] / 60 for r in rows], [r[1] / 2**20 for r in rows], color="#3f7cac")
    ax.set(xlabel="minutes", ylabel="Redis used_memory (MiB)", title=title)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    keys = ax.twinx()
    keys.plot([r[0] / 60 for r in rows], [r[2] for r in rows], color="#c0563b", alpha=0.6)
    keys.set_ylabel("keys", color="#c0563b")
    keys.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


async def main(args: argparse.Namespace) -> None:
    port = free_port()
    with RedisProcess() as url:
        env = {"SESSIONREC_REDIS_URL": url, "SESSIONREC_PORT": str(port),
               "SESSIONREC_LIVE_TTL": str(args.live_ttl),
               "SESSIONREC_HISTORY_TTL": str(args.history_ttl)}
        procs = [start(["serve"], env), start(["worker"], env)]
        await asyncio.sleep(2.0)
        rows: list[tuple[float, int, int]] = []
        until = time.monotonic() + args.minutes * 60
        try:
            sampler = asyncio.create_task(sample(url, args.every, until, rows))
            sent = await load(f"http://127.0.0.1:{port}", args.rate, args.minutes * 60,
                              args.catalogue, until)
            await sampler
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
                p.wait(20)
    with open(args.csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["seconds", "used_memory", "keys"])
        w.writerows(rows)
    title = (f"soak: {args.rate:.0f} req/s for {args.minutes:g} min, history TTL "
             f"{args.history_ttl}s, live TTL {args.live_ttl}s")
    plot(rows, args.png, title)
    half = len(rows) // 2
    first, last = rows[half][1], rows[-1][1]
    print(f"{sent} requests; used_memory at the half-way mark {first / 2**20:.1f} MiB, at the "
          f"end {last / 2**20:.1f} MiB ({(last - first) / max(first, 1):+.1%} over the second "
          f"half); peak {max(r[1] for r in rows) / 2**20:.1f} MiB; chart {args.png}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--rate", type=float, default=400, help="requests per second")
    parser.add_argument("--catalogue", type=int, default=20000)
    parser.add_argument("--history-ttl", type=int, default=120)
    parser.add_argument("--live-ttl", type=int, default=60)
    parser.add_argument("--every", type=float, default=5.0)
    parser.add_argument("--png", type=Path, default=Path("docs/soak.png"))
    parser.add_argument("--csv", type=Path, default=Path("/tmp/sessionrec-soak.csv"))
    asyncio.run(main(parser.parse_args()))
