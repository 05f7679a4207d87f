"""Benchmarks: sessionrec against the physical limits of this machine, measured in the same run.

    python scripts/bench.py all --data ../shared/datasets/diginetica-srgnn \
        --append /tmp/bench-run.md
    python scripts/bench.py api|live|latency|session20|worker|load|ingest|freshness|scaling|memory\
        |flood|silent|rules|catalog|tune|tuneload|experiment|order --data DIR
    python scripts/bench.py versus --baseline ../old-checkout --data DIR

Every figure starts its own redis-server and servers on loopback ports. Request bodies are
prefixes (1-20 items) of real DIGINETICA test sessions in the seed's format, scored against a
model loaded from the training log. References run in the same script, alternating rounds with
the measured system, and medians are quoted:

* a bare aiohttp handler (uvloop) that parses the same bodies with orjson and returns a fixed
  answer: the HTTP limit of one Python process here;
* redis-benchmark, pipelined HINCRBY: the Redis limit here.

Latency at a fixed rate is measured open-loop: each request's latency runs from the moment it
was due, so queueing is counted, not hidden.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import zlib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.core.layout import ENTRY_BYTES  # noqa: E402
from service.core.model import Event  # noqa: E402
from service.core.modelparams import MODEL_POLL  # noqa: E402
from service.core.reorder import SEQUENCE_WEIGHTS  # noqa: E402
from service.offline import clicklog  # noqa: E402
from service.offline.evaluate import align_times, static_cases  # noqa: E402
from service.offline.loader import bulk_store, load  # noqa: E402
from service.offline.redisproc import RedisProcess, free_port  # noqa: E402
from service.runtime import tune_gc  # noqa: E402
from service.settings import Settings  # noqa: E402
from service.store.state import Store  # noqa: E402
from workers.consumer import Worker  # noqa: E402

BARE = ROOT / "scripts" / "bare_server.py"


# --- fixtures ---------------------------------------------------------------------------------
def bodies(data: Path, n: int = 2000, max_items: int = 20, min_items: int = 1) -> list[bytes]:
    train = clicklog.read(data / "train.tsv")
    test = align_times(train, clicklog.read(data / "test.tsv"))
    out = []
    for case in static_cases(test):
        if not min_items <= len(set(case.prefix)) <= max_items:
            continue
        inter = {item: {"timestamp": int(ts)} for item, ts in zip(case.prefix, case.times,
                                                                  strict=True)}
        out.append(json.dumps({"user_interactions": inter, "k": 20,
                               "recommend_seen": True}).encode())
        if len(out) >= n:
            break
    return out


async def build_model(settings: Settings, data: Path) -> float:
    train = clicklog.read(data / "train.tsv")
    store = bulk_store(settings)
    try:
        await store.prepare()
        return (await load(store, train.events())).seconds
    finally:
        await store.close()


@contextmanager
def process(cmd: list[str], env: dict[str, str], port: int, cwd: Path | None = None
            ) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=cwd)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), 0.2):
                    break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError(f"{cmd} did not listen on {port}")
        time.sleep(0.3)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def sessionrec_server(settings: Settings, processes: int = 1,
                      extra: dict[str, str] | None = None, code: Path = ROOT) -> Iterator[str]:
    """``sessionrec serve`` on the settings' Redis, running the code of the checkout ``code``
    (another one: the code before a change, compared in the same sitting)."""
    port = free_port()
    env = {"SESSIONREC_REDIS_URL": settings.redis_url, "SESSIONREC_NAMESPACE": settings.namespace,
           "SESSIONREC_PORT": str(port), "SESSIONREC_PROCESSES": str(processes),
           "PYTHONPATH": str(code), **(extra or {})}
    with process([sys.executable, "-m", "service.cli", "--log-level", "WARNING", "serve"], env,
                 port, cwd=code):
        yield f"http://127.0.0.1:{port}"


@contextmanager
def worker_process(settings: Settings) -> Iterator[None]:
    """A `sessionrec worker` on the settings' namespace, stopped with SIGTERM on exit."""
    env = {**os.environ, "SESSIONREC_REDIS_URL": settings.redis_url,
           "SESSIONREC_NAMESPACE": settings.namespace}
    worker = subprocess.Popen([sys.executable, "-m", "service.cli", "--log-level", "WARNING",
                               "worker"], env=env)
    try:
        yield
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(20)


@contextmanager
def bare_server() -> Iterator[str]:
    port = free_port()
    with process([sys.executable, str(BARE), str(port)], {}, port):
        yield f"http://127.0.0.1:{port}"


def wrk_script(payloads: list[bytes], path: str, key: str | None = None) -> str:
    chunks = ",\n".join("[==[" + p.decode() + "]==]" for p in payloads)
    auth = f', ["X-API-Key"] = "{key}"' if key else ""
    lua = f"""local bodies = {{
{chunks}
}}
local i = 0
request = function()
  i = i % #bodies + 1
  return wrk.format("POST", "{path}", {{["Content-Type"] = "application/json"{auth}}}, bodies[i])
end
"""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(lua)
    return f.name


def wrk(url: str, script: str, seconds: int, connections: int = 32) -> dict[str, float]:
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
                          "-s", script, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"wrk saw {errors.group(1)} error answers:\n{out}")
    return {"rps": rps}


def median(values: list[float]) -> float:
    return float(statistics.median(values))


# --- figures ------------------------------------------------------------------------------------
def bench_api(settings: Settings, data: Path, seconds: int, rounds: int) -> dict[str, Any]:
    script = wrk_script(bodies(data), "/iid_recommend")
    ours: list[float] = []
    ref: list[float] = []
    ours2: list[float] = []
    with bare_server() as bare, sessionrec_server(settings) as api, \
            sessionrec_server(settings, processes=2) as api2:
        wrk(api, script, 2)  # warm the name, frequency and read caches
        wrk(api2, script, 2)
        for _ in range(rounds):
            ref.append(wrk(bare, script, seconds)["rps"])
            ours.append(wrk(api, script, seconds)["rps"])
            ours2.append(wrk(api2, script, seconds)["rps"])
        cache = read_cache(api)
    return {"bare aiohttp req/s": median(ref), "sessionrec req/s (1 process)": median(ours),
            "ratio to bare": median(ours) / median(ref),
            "sessionrec req/s (--processes 2)": median(ours2),
            "2 processes / 1 process": median(ours2) / median(ours),
            "read cache hit ratio (1 process, no writes)": cache["hit ratio"],
            "read cache MB (1 process)": cache["bytes"] / 2**20,
            "rounds": rounds, "seconds per round": seconds}


def bench_versus(settings: Settings, data: Path, seconds: int, rounds: int, baseline: Path,
                 order: bool = False) -> dict[str, Any]:
    """This checkout's request path against another checkout's (``--baseline``, the code
    before a change, its kernel built in place), in one sitting: the same Redis state and
    bodies, rounds alternating. Each body twice: as the seed sends it, and as the SDK does,
    with a session id of its own (its answer then records what it listed). ``order``: this
    checkout serves with ``ORDER`` and its sequence model in force, as a shop that tuning
    has tuned does (the record's values; a baseline from before the learned order ignores
    names it does not know)."""
    out: dict[str, Any] = {}
    if order:
        train_sequence(settings)
        asyncio.run(set_record(settings, ORDER))
    for label, payloads in (("seed bodies", bodies(data)),
                            ("SDK bodies (session ids)", _with_sessions(bodies(data)))):
        script = wrk_script(payloads, "/iid_recommend")
        ours: list[float] = []
        theirs: list[float] = []
        with sessionrec_server(settings) as api, \
                sessionrec_server(settings, code=baseline) as base:
            wrk(api, script, 2)
            wrk(base, script, 2)
            for n in range(rounds):
                pair = [(ours, api), (theirs, base)]
                for figures, url in (pair if n % 2 == 0 else pair[::-1]):
                    figures.append(wrk(url, script, seconds)["rps"])
        out[f"{label}: req/s, this checkout"] = median(ours)
        out[f"{label}: req/s, baseline"] = median(theirs)
        ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
        out[f"{label}: ratio, median of the rounds' ratios"] = median(ratios)
        out[f"{label}: the rounds' ratios"] = " ".join(f"{r:.3f}" for r in ratios)
    if order:
        asyncio.run(set_record(settings, dict.fromkeys(ORDER, 0.0)))
    return {**out, "baseline": str(baseline), "this checkout's order": order,
            "rounds": rounds, "seconds per round": seconds}


async def set_record(settings: Settings, values: dict[str, float]) -> None:
    """The shared model record with ``values`` set (what ``PUT /admin/model`` writes)."""
    store = Store(settings)
    try:
        await store.model.update(lambda record: record.updated(values, None))
    finally:
        await store.close()


def train_sequence(settings: Settings) -> None:
    """The sequence model trained on the state, as a worker's first run does."""
    trained = subprocess.run([sys.executable, "-m", "service.cli", "--log-level", "WARNING",
                              "sequence", "--apply"], capture_output=True, text=True,
                             env={**os.environ, **settings.to_env()}, check=True)
    print(f"sequence model: {trained.stdout.strip()}", file=sys.stderr)


def read_cache(api: str) -> dict[str, float]:
    """The server's read-cache counters, from /metrics."""
    with urllib.request.urlopen(api + "/metrics") as resp:
        text = resp.read().decode()
    got = {line.split()[0].removeprefix("sessionrec_read_cache_").removesuffix("_total"):
           float(line.split()[1]) for line in text.splitlines()
           if line.startswith("sessionrec_read_cache_")}
    looked = got["hits"] + got["misses"]
    return {**got, "hit ratio": got["hits"] / looked if looked else 0.0}


def _feed_child(redis_url: str, namespace: str, train: str, rate: float) -> None:
    """Replay the training log's events under fresh session ids at ``rate`` events/s straight
    into the streams (as the API would append them), until killed."""
    events = list(clicklog.read(Path(train)).events())

    async def feed() -> None:
        store = Store(Settings(redis_url=redis_url, namespace=namespace))
        start, n, at = time.perf_counter(), 0, len(events) // 3
        while True:
            batch = [ev._replace(session_id=f"live-{ev.session_id}", timestamp=time.time())
                     for ev in events[at:at + 50]]
            at = (at + 50) % (len(events) - 50)
            await store.ingestion.append(batch)
            n += len(batch)
            delay = start + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
    asyncio.run(feed())


def bench_live(settings: Settings, data: Path, seconds: int, rounds: int,
               rate: float = 500.0) -> dict[str, Any]:
    """/iid_recommend while the model learns: a worker applies ``rate`` events/s of replayed
    training traffic (popular items, so the indexes requests read keep changing), and the
    read cache is measured against the same server without it, alternating rounds."""
    script = wrk_script(bodies(data), "/iid_recommend")
    cached: list[float] = []
    uncached: list[float] = []
    with worker_process(settings):
        feeder = subprocess.Popen([sys.executable, __file__, "_feed", settings.redis_url,
                                   settings.namespace, str(data / "train.tsv"), str(rate)])
        try:
            with sessionrec_server(settings) as on, \
                    sessionrec_server(settings, extra={"SESSIONREC_READ_CACHE_MB": "0"}) as off:
                wrk(on, script, 2)
                wrk(off, script, 2)
                before = read_cache(on)
                for _ in range(rounds):
                    cached.append(wrk(on, script, seconds)["rps"])
                    uncached.append(wrk(off, script, seconds)["rps"])
                after = read_cache(on)
        finally:
            feeder.send_signal(signal.SIGTERM)
            feeder.wait(20)
    looked = after["hits"] + after["misses"] - before["hits"] - before["misses"]
    return {"events/s applied meanwhile": rate,
            "req/s with the read cache (1 process)": median(cached),
            "req/s without it (read_cache_mb=0)": median(uncached),
            "with / without": median(cached) / median(uncached),
            "hit ratio while learning": (after["hits"] - before["hits"]) / looked,
            "invalidations/s": (after["invalidations"] - before["invalidations"])
            / (rounds * seconds * 2),
            "rounds": rounds, "seconds per round": seconds}


async def open_loop(url: str, payloads: list[bytes], rate: float, seconds: float
                    ) -> list[float]:
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter() + 0.2
        total = int(rate * seconds)

        async def one(n: int) -> None:
            due = start + n / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            async with session.post(url, data=payloads[n % len(payloads)],
                                    headers={"Content-Type": "application/json"}) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"status {resp.status}")
            latencies.append(time.perf_counter() - due)
        await asyncio.gather(*(one(n) for n in range(total)))
    return latencies


def _open_loop_child(url: str, payload_file: str, rate: float, seconds: float,
                     out_file: str) -> None:
    import uvloop

    payloads = [line.encode() for line in Path(payload_file).read_text().splitlines()]
    lat = uvloop.run(open_loop(url, payloads, rate, seconds))
    Path(out_file).write_text(json.dumps(lat))


def open_loop_ms(url: str, payload_file: str, rate: float, seconds: float) -> Any:
    """Each request's latency in ms, ``open_loop`` in a process of its own (so that the
    client's event loop does not share a core's time slices with this one's). Through a file:
    the child's stdout may carry more than its result (a library's warning split one run's
    list)."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([sys.executable, __file__, "_open_loop", url, payload_file, str(rate),
                        str(seconds), out.name], capture_output=True, check=True)
        return np.array(json.loads(Path(out.name).read_text())) * 1000


def bench_latency(settings: Settings, data: Path, rate: float, seconds: float, rounds: int
                  ) -> dict[str, Any]:
    payloads = bodies(data)
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        f.write("\n".join(p.decode() for p in payloads))
    p99s, p50s, p90s = [], [], []
    with sessionrec_server(settings) as api:
        for r in range(rounds + 1):
            lat = open_loop_ms(api + "/iid_recommend", f.name, rate, seconds)
            if r == 0:
                continue  # warm-up round
            p50s.append(float(np.percentile(lat, 50)))
            p90s.append(float(np.percentile(lat, 90)))
            p99s.append(float(np.percentile(lat, 99)))
    return {"rate req/s": rate, "p50 ms": median(p50s), "p90 ms": median(p90s),
            "p99 ms": median(p99s), "rounds": rounds, "seconds per round": seconds}


async def sequential(url: str, payloads: list[bytes], n: int) -> list[float]:
    latencies = []
    async with aiohttp.ClientSession() as session:
        for i in range(n):
            started = time.perf_counter()
            async with session.post(url, data=payloads[i % len(payloads)],
                                    headers={"Content-Type": "application/json"}) as resp:
                await resp.read()
                assert resp.status == 200
            latencies.append(time.perf_counter() - started)
    return latencies


def bench_session20(settings: Settings, data: Path, rounds: int) -> dict[str, Any]:
    """One request at a time, every session exactly 20 distinct items (the longest the
    scorer looks at), end to end through HTTP on one serve process."""
    payloads = bodies(data, n=500, max_items=20, min_items=20)
    p50s, p99s = [], []
    with sessionrec_server(settings) as api:
        asyncio.run(sequential(api + "/iid_recommend", payloads, 200))  # warm-up
        for _ in range(rounds):
            lat = np.array(asyncio.run(sequential(api + "/iid_recommend", payloads, 2000)))
            p50s.append(float(np.percentile(lat * 1000, 50)))
            p99s.append(float(np.percentile(lat * 1000, 99)))
    return {"distinct sessions": len(payloads), "p50 ms": median(p50s), "p99 ms": median(p99s),
            "requests per round": 2000, "rounds": rounds}


def bench_ingest(settings: Settings, seconds: int, rounds: int) -> dict[str, Any]:
    """POST /events with batches of 500 events (wrk, 8 connections); events/s accepted."""
    rnd = np.random.default_rng(3)
    payloads = []
    for b in range(200):
        events = [{"session_id": f"ing-{b}-{n // 5}", "item_id": str(int(rnd.zipf(1.3)) % 40000),
                   "type": "view"} for n in range(500)]
        payloads.append(json.dumps({"events": events}).encode())
    script = wrk_script(payloads, "/events")
    rates = []
    with sessionrec_server(settings.replace(namespace=settings.namespace + "-ingest")) as api:
        for _ in range(rounds):
            out = subprocess.run(["wrk", "-t1", "-c8", f"-d{seconds}s", "-s", script, api],
                                 capture_output=True, text=True, check=True).stdout
            if "Non-2xx" in out:
                raise RuntimeError(out)
            rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
            rates.append(rps * 500)
    return {"events/s accepted (batches of 500)": median(rates), "rounds": rounds}


async def _freshness(api: str, samples: int, background_rate: float) -> list[float]:
    """Post a fresh pair of items in one session, poll /items/{a}/similar until b shows."""
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        async def background() -> None:
            n = 0
            start = time.perf_counter()
            while not stop.is_set():
                batch = [{"session_id": f"bg-{n}-{i // 4}", "item_id": str((n * 7 + i) % 5000)}
                         for i in range(50)]
                async with session.post(api + "/events", json={"events": batch}) as resp:
                    assert resp.status == 202
                n += 1
                delay = start + n * 50 / background_rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
        task = asyncio.create_task(background())
        seen = []
        for s in range(samples):
            a, b = f"fresh-a-{s}", f"fresh-b-{s}"
            started = time.perf_counter()
            async with session.post(api + "/events", json={"events": [
                    {"session_id": f"fresh-{s}", "item_id": a},
                    {"session_id": f"fresh-{s}", "item_id": b}]}) as resp:
                assert resp.status == 202
            while True:
                async with session.get(f"{api}/items/{a}/similar?k=5") as resp:
                    ids = [r["id"] for r in (await resp.json())["recommendations"]]
                if b in ids:
                    break
                await asyncio.sleep(0.001)
            seen.append(time.perf_counter() - started)
            await asyncio.sleep(0.02)
        stop.set()
        await task
    return seen


def bench_freshness(settings: Settings, samples: int) -> dict[str, Any]:
    s = settings.replace(namespace=settings.namespace + "-fresh")
    with worker_process(s), sessionrec_server(s) as api:
        lat = np.array(asyncio.run(_freshness(api, samples, 500.0))) * 1000
    return {"background events/s": 500, "samples": samples,
            "p50 ms": float(np.percentile(lat, 50)), "p99 ms": float(np.percentile(lat, 99))}


def redis_benchmark_hincrby(url_port: int, n: int = 2_000_000) -> float:
    out = subprocess.run(["redis-benchmark", "-p", str(url_port), "-P", "32", "-n", str(n), "-q",
                          "-r", "100000", "hincrby", "bench:h", "__rand_int__", "1"],
                         capture_output=True, text=True, check=True).stdout
    return float(re.findall(r"([\d.]+) requests per second", out)[-1])


async def _redis_cpu(store: Store) -> float:
    """Seconds of CPU the Redis server has used (system and user)."""
    info = await store.redis.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


CART_SHARE = 0.0
"""``--cart-share``: the share of the log's views the worker benchmark sends as add_to_cart
instead (chosen by a hash of session and item, so every run and every checkout sends the same
log): what learning carts costs the worker."""


def carting(events: list[Event], share: float) -> list[Event]:
    """``events`` with ``share`` of them (by a hash of session and item) typed add_to_cart."""
    if share <= 0:
        return events
    bound = share * 2**32
    return [ev._replace(type="add_to_cart")
            if zlib.crc32(f"{ev.session_id}\x00{ev.item_id}".encode()) < bound else ev
            for ev in events]


async def _drain_worker(settings: Settings, data: Path) -> tuple[int, float, float, float]:
    train = clicklog.read(data / "train.tsv")
    # the poll waits behind the worker's commits: a timeout here would only end the benchmark
    store = Store(settings.replace(redis_timeout=30.0))
    await store.prepare()
    events = carting(list(train.events()), CART_SHARE)
    for start in range(0, len(events), 20000):
        await store.ingestion.append(events[start:start + 20000])
    n = len(events)
    # as `sessionrec worker` runs: the log held here must not weigh on the worker's collector
    del events, train
    gc.collect()
    tune_gc()
    worker = Worker(settings, worker_id="bench")
    started, cpu, redis_cpu = time.perf_counter(), time.process_time(), await _redis_cpu(store)
    task = asyncio.create_task(worker.run())
    while (await store.stats.read())["pending"] > 0:
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - started
    # CPU time per event as well: on a machine shared with other work, wall-clock rates
    # follow the neighbours' load more than the code's cost
    cpu, redis_cpu = time.process_time() - cpu, await _redis_cpu(store) - redis_cpu
    worker.stop()
    await task
    await worker.redis.aclose()
    await store.close()
    return n, elapsed, cpu, redis_cpu


def bench_worker(settings: Settings, data: Path, rounds: int) -> dict[str, Any]:
    rates, raw, worker_cpu, redis_cpu = [], [], [], []
    port = int(settings.redis_url.rsplit(":", 1)[1].split("/")[0])
    for r in range(rounds):
        raw.append(redis_benchmark_hincrby(port))
        s = settings.replace(namespace=f"{settings.namespace}-w{r}")
        n, seconds, cpu, server_cpu = asyncio.run(_drain_worker(s, data))
        rates.append(n / seconds)
        worker_cpu.append(cpu / n * 1e6)
        redis_cpu.append(server_cpu / n * 1e6)
    # per event the commit issues about 5 Redis writes (index splice, history, frequency,
    # name, trending) plus its share of the batch's XACK and bookkeeping
    updates = median(rates) * 5
    return {"events": n, "worker events/s": median(rates),
            "worker CPU us/event": median(worker_cpu), "Redis CPU us/event": median(redis_cpu),
            "implied Redis updates/s": updates,
            "redis-benchmark pipelined HINCRBY/s": median(raw),
            "updates / raw Redis limit": updates / median(raw), "rounds": rounds}


async def _fill_streams(settings: Settings, data: Path) -> int:
    store = Store(settings)
    await store.prepare()
    events = list(clicklog.read(data / "train.tsv").events())
    for start in range(0, len(events), 20000):
        await store.ingestion.append(events[start:start + 20000])
    await store.close()
    return len(events)


async def _pending(settings: Settings) -> int:
    store = Store(settings.replace(redis_timeout=30.0))
    try:
        return (await store.stats.read())["pending"]
    finally:
        await store.close()


def worker_pool(settings: Settings, data: Path, workers: int) -> float:
    """Events/s applied by ``workers`` worker processes draining the training log."""
    n = asyncio.run(_fill_streams(settings, data))
    env = {**os.environ, "SESSIONREC_REDIS_URL": settings.redis_url,
           "SESSIONREC_NAMESPACE": settings.namespace}
    started = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "service.cli", "--log-level",
                               os.environ.get("POOL_LOG", "WARNING"), "worker"], env=env)
             for _ in range(workers)]
    try:
        while asyncio.run(_pending(settings)) > 0:
            time.sleep(0.1)
        return n / (time.perf_counter() - started)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(30)


def bench_scaling(settings: Settings, data: Path, seconds: int, rounds: int
                  ) -> list[tuple[str, dict[str, Any]]]:
    """The worker pool (1, 2, 3 processes) and the API (1, 2 processes) on a local 3-master
    Redis Cluster, with standalone Redis in the same run as the reference."""
    from service.offline.redisproc import RedisClusterProcess

    out = []
    with RedisClusterProcess(masters=3) as cluster_url:
        cluster = settings.replace(redis_url=cluster_url)
        pool: dict[str, Any] = {}
        for r in range(rounds):
            for label, base, workers in (("standalone, 1 worker", settings, 1),
                                         ("cluster, 1 worker", cluster, 1),
                                         ("cluster, 2 workers", cluster, 2),
                                         ("cluster, 3 workers", cluster, 3)):
                rate = worker_pool(base.replace(namespace=f"pool{r}-{workers}"), data, workers)
                pool.setdefault(label, []).append(rate)
        figures: dict[str, Any] = {f"{k} (events/s)": median(v) for k, v in pool.items()}
        figures["rounds"] = rounds
        out.append(("worker pool applying the DIGINETICA training log", figures))
        print(table(*out[-1]), flush=True)

        asyncio.run(build_model(cluster, data))
        script = wrk_script(bodies(data), "/iid_recommend")
        api: dict[str, list[float]] = {}
        with sessionrec_server(settings) as s1, sessionrec_server(cluster) as c1, \
                sessionrec_server(cluster, processes=2) as c2:
            for url in (s1, c1, c2):
                wrk(url, script, 2)
            for _ in range(rounds):
                for label, url in (("standalone, 1 process", s1), ("cluster, 1 process", c1),
                                   ("cluster, --processes 2", c2)):
                    api.setdefault(label, []).append(wrk(url, script, seconds)["rps"])
        api_figures: dict[str, Any] = {f"{k} (req/s)": median(v) for k, v in api.items()}
        api_figures["cluster 2 processes / 1 process"] = (
            median(api["cluster, --processes 2"]) / median(api["cluster, 1 process"]))
        api_figures["rounds"] = rounds
        out.append(("POST /iid_recommend on the cluster, wrk -t1 -c32", api_figures))
    return out


async def _memory(settings: Settings, data: Path, live_sessions: int) -> dict[str, Any]:
    """Redis bytes per stored neighbour entry, per learned history and per live session."""
    store = Store(settings)
    r: Any = store.redis
    ns = settings.namespace

    async def used() -> int:
        return int((await r.info("memory"))["used_memory"])

    async def keys_of(kind: str) -> list[bytes]:
        return [k async for k in r.scan_iter(match=f"{ns}:*:{kind}:*", count=5000)]

    async def total_usage(keys: list[bytes]) -> tuple[int, int]:
        usage = length = 0
        for start in range(0, len(keys), 5000):
            async with r.pipeline(transaction=False) as pipe:
                for key in keys[start:start + 5000]:
                    pipe.memory_usage(key, samples=0)
                    pipe.strlen(key)
                replies = await pipe.execute()
            usage += sum(replies[0::2])
            length += sum(replies[1::2])
        return usage, length

    await store.prepare()
    before = await used()
    await load(store, clicklog.read(data / "train.tsv").events())
    after_load = await used()
    index_bytes, index_len = await total_usage(await keys_of("x"))
    history_bytes, history_len = await total_usage(await keys_of("h"))
    entries = index_len // ENTRY_BYTES
    histories = len(await keys_of("h"))

    # live sessions: the test log's sessions, as the API records them (ingest script)
    test = clicklog.read(data / "test.tsv")
    bounds = test.session_bounds()[:live_sessions + 1]
    events = list(test.events())[:int(bounds[-1])]
    events = [ev.__class__(f"live-{ev.session_id}", ev.item_id, time.time(), ev.type)
              for ev in events]
    await r.config_set("maxmemory-policy", "noeviction")
    pre_live = await used()
    for start in range(0, len(events), 500):
        await store.ingestion.append_live(events[start:start + 500], "")
    post_live = await used()
    # the stream entries are a worker's backlog, not the live session: measure them apart
    stream_bytes = sum([await r.memory_usage(store.keys.stream(p), samples=0) or 0
                        for p in range(settings.partitions)])
    live = len(bounds) - 1
    await store.close()
    return {
        "neighbour index entries": entries,
        "bytes per neighbour entry (MEMORY USAGE of index keys / entries)":
            index_bytes / entries,
        "payload bytes per neighbour entry": 16,
        "learned histories": histories,
        "bytes per learned history": history_bytes / histories,
        "bytes per history event": history_bytes / (history_len // ENTRY_BYTES),
        "used_memory after load (MiB)": (after_load - before) / 2**20,
        "live sessions": live,
        "events in them": len(events),
        "bytes per live session (used_memory delta, streams excluded)":
            (post_live - pre_live - stream_bytes) / live,
    }


def bench_memory(settings: Settings, data: Path) -> dict[str, Any]:
    with RedisProcess() as url:  # a Redis of its own: used_memory deltas must be ours alone
        return asyncio.run(_memory(settings.replace(redis_url=url, namespace="mem"), data,
                                   10000))


def bench_load(settings: Settings, data: Path) -> dict[str, Any]:
    seconds = asyncio.run(build_model(settings.replace(namespace=settings.namespace + "-l"),
                                      data))
    return {"events": 906140, "load seconds": seconds}


MACHINE = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


SEED = json.dumps({"user_interactions": {
    "89898": {"timestamp": 1704060026, "rating": 4.5},
    "22898": {"timestamp": 1704060026, "rating": 4.5},
    "21255": {"timestamp": 1704060026, "rating": 4.5}}, "k": 10, "recommend_seen": True}).encode()


async def _probe(url: str, every: float, until: asyncio.Event) -> tuple[list[float], int]:
    """The seed example every ``every`` seconds until ``until``: latencies (a timeout of 10 s
    counts as 10 s) and how many answers were not 200."""
    latencies: list[float] = []
    failed = 0
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while not until.is_set():
            started = time.perf_counter()
            try:
                async with session.post(url + "/iid_recommend", data=SEED,
                                        headers={"Content-Type": "application/json"}) as resp:
                    await resp.read()
                    failed += resp.status != 200
            except TimeoutError:
                failed += 1
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(max(0.0, every - (time.perf_counter() - started)))
    return latencies, failed


async def _flood(url: str, clients: int, requests: int, ids: int) -> dict[str, float]:
    """``clients`` connections sending ``requests`` /iid_recommend bodies in all, each naming
    ``ids`` item ids never seen before."""
    sent = failed = 0
    started = time.perf_counter()
    prefix = f"flood-{os.getpid()}-{time.time_ns()}"
    async with aiohttp.ClientSession() as session:
        async def client(c: int) -> None:
            nonlocal sent, failed
            while sent < requests:
                n = sent
                sent += 1
                body = json.dumps({"user_interactions": {
                    f"{prefix}-{n}-{i}": {} for i in range(ids)}, "k": 10}).encode()
                async with session.post(url + "/iid_recommend", data=body,
                                        headers={"Content-Type": "application/json"}) as resp:
                    await resp.read()
                    failed += resp.status != 200
        await asyncio.gather(*(client(c) for c in range(clients)))
    return {"requests": sent, "failed": failed, "seconds": time.perf_counter() - started}


def _flood_child(url: str, clients: int, requests: int, ids: int) -> None:
    import uvloop

    print(json.dumps(uvloop.run(_flood(url, clients, requests, ids))))


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q)) * 1000


def bench_flood(settings: Settings, data: Path, requests: int = 6000, clients: int = 4,
                ids: int = 200) -> dict[str, Any]:
    """A steady probe (the seed example every 25 ms) while other clients flood
    /iid_recommend with requests naming 200 ids never seen before: more distinct ids than
    the one-million-entry name cache holds. The probe alone first, as the same-run
    reference."""
    with sessionrec_server(settings) as api:
        async def quiet() -> tuple[list[float], int]:
            done = asyncio.Event()
            probe = asyncio.create_task(_probe(api, 0.025, done))
            await asyncio.sleep(10)
            done.set()
            return await probe

        alone, _ = asyncio.run(quiet())

        async def flooded() -> tuple[tuple[list[float], int], dict[str, float]]:
            done = asyncio.Event()
            probe = asyncio.create_task(_probe(api, 0.025, done))
            child = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "_flood", api, str(clients), str(requests), str(ids),
                stdout=asyncio.subprocess.PIPE)
            out, _ = await child.communicate()
            done.set()
            if child.returncode != 0:
                raise RuntimeError("the flood failed")
            return await probe, json.loads(out)

        (during, probe_failed), flood = asyncio.run(flooded())
    return {"flood: requests": int(flood["requests"]),
            "flood: answers not 200": int(flood["failed"]),
            "flood: distinct new ids": int(flood["requests"]) * ids,
            "flood: req/s": flood["requests"] / flood["seconds"],
            "probe alone: p50 ms": _percentile(alone, 50),
            "probe alone: p99 ms": _percentile(alone, 99),
            "probe during the flood: requests": len(during),
            "probe during the flood: answers not 200": probe_failed,
            "probe during the flood: p50 ms": _percentile(during, 50),
            "probe during the flood: p99 ms": _percentile(during, 99),
            "probe during the flood: max ms": max(during) * 1000}


def bench_silent(settings: Settings, rounds: int, concurrent: int = 200) -> dict[str, Any]:
    """``concurrent`` /iid_recommend requests at once against a Redis that accepts
    connections and never answers, read cache on (its link must connect and handshake):
    every answer must be a 503 within a second."""
    async def run() -> tuple[list[int], list[float]]:
        held: list[asyncio.StreamWriter] = []

        async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.append(writer)

        server = await asyncio.start_server(swallow, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        silent = settings.replace(redis_url=f"redis://127.0.0.1:{port}/0")
        statuses: list[int] = []
        seconds: list[float] = []
        try:
            with sessionrec_server(silent) as api:
                connector = aiohttp.TCPConnector(limit=0)
                async with aiohttp.ClientSession(connector=connector) as session:
                    # connections first: a burst of new ones overflows the listen backlog,
                    # and a dropped SYN is retried after a second whatever the server does
                    await asyncio.gather(*(session.get(api + "/healthz")
                                           for _ in range(concurrent)))

                    async def one() -> None:
                        started = time.perf_counter()
                        async with session.post(api + "/iid_recommend", data=SEED, headers={
                                "Content-Type": "application/json"}) as resp:
                            await resp.read()
                            statuses.append(resp.status)
                        seconds.append(time.perf_counter() - started)

                    for _ in range(rounds):
                        await asyncio.gather(*(one() for _ in range(concurrent)))
                        await asyncio.sleep(0.5)
        finally:
            for writer in held:
                writer.close()
            server.close()
        return statuses, seconds

    statuses, seconds = asyncio.run(run())
    return {"requests": len(statuses), "answered 503": statuses.count(503),
            "p50 ms": _percentile(seconds, 50), "p99 ms": _percentile(seconds, 99),
            "max ms": max(seconds) * 1000, "rounds": rounds,
            "concurrent per round": concurrent}


CATEGORIES = 50


def generated_catalogue(data: Path, seed: int = 7) -> dict[str, dict[str, Any]]:
    """A record for every item of the log: one of 50 categories, a price and a tag, drawn at
    random (DIGINETICA's own categories are not in the SR-GNN files)."""
    rng = np.random.default_rng(seed)
    items = sorted(set(clicklog.read(data / "train.tsv").items.tolist())
                   | set(clicklog.read(data / "test.tsv").items.tolist()))
    categories = rng.integers(0, CATEGORIES, len(items))
    prices = np.round(rng.uniform(1, 500, len(items)), 2)
    return {item: {"id": item, "categories": [f"c{c}"], "price": float(price),
                   "tags": ["sale"] if c % 5 == 0 else []}
            for item, c, price in zip(items, categories.tolist(), prices.tolist(), strict=True)}


def rules_bodies(plain: list[bytes], catalogue: dict[str, dict[str, Any]], seed: int = 11
                 ) -> list[bytes]:
    """The same requests with a one-category filter (the category of the session's last item:
    a category page) and 20 excluded ids (a cart)."""
    rng = np.random.default_rng(seed)
    ids = list(catalogue)
    out = []
    for body in plain:
        request = json.loads(body)
        items = list(request["user_interactions"])
        request["filter"] = {"categories": catalogue[items[-1]]["categories"]}
        request["exclude"] = [ids[n] for n in rng.integers(0, len(ids), 20).tolist()]
        out.append(json.dumps(request).encode())
    return out


async def _put_catalogue(settings: Settings, catalogue: dict[str, dict[str, Any]]) -> None:
    from service.core.catalog import Record
    store = Store(settings)
    try:
        records = [Record(r["id"], None, tuple(r["categories"]), True, r["price"],
                          tuple(r["tags"])) for r in catalogue.values()]
        for start in range(0, len(records), 1000):
            await store.items.put(records[start:start + 1000])
    finally:
        await store.close()


def bench_rules(settings: Settings, data: Path, seconds: int, rounds: int, rate: float
                ) -> dict[str, Any]:
    catalogue = generated_catalogue(data)
    asyncio.run(_put_catalogue(settings, catalogue))
    plain = bodies(data)
    ruled = rules_bodies(plain, catalogue)
    plain_script, rules_script = wrk_script(plain, "/iid_recommend"), \
        wrk_script(ruled, "/iid_recommend")
    without: list[float] = []
    with_rules: list[float] = []
    files = {}
    for name, payloads in (("none", plain), ("rules", ruled)):
        with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
            f.write("\n".join(p.decode() for p in payloads))
        files[name] = f.name
    p99s: dict[str, list[float]] = {"none": [], "rules": []}
    with sessionrec_server(settings) as api:
        wrk(api, plain_script, 2)  # warm the caches and the catalogue copy
        wrk(api, rules_script, 2)
        for n in range(rounds):  # alternate which goes first
            pair = [(without, plain_script), (with_rules, rules_script)]
            for figures, script in (pair if n % 2 == 0 else pair[::-1]):
                figures.append(wrk(api, script, seconds)["rps"])
        for r in range(rounds + 1):
            for name in (("none", "rules") if r % 2 == 0 else ("rules", "none")):
                lat = open_loop_ms(api + "/iid_recommend", files[name], rate, seconds)
                if r:  # the first round warms up
                    p99s[name].append(float(np.percentile(lat, 99)))
        stats = json.loads(urllib.request.urlopen(api + "/stats").read())
    return {"catalogue records": len(catalogue), "categories": CATEGORIES,
            "req/s without rules": median(without), "req/s with rules": median(with_rules),
            # each round's two runs are adjacent in time: their ratio cancels the machine's
            # drift, which moves both by more than the difference measured
            "ratio (rules / none), median of the rounds' ratios": median(
                [r / n for r, n in zip(with_rules, without, strict=True)]),
            f"p99 ms without rules at {rate:.0f} req/s": median(p99s["none"]),
            f"p99 ms with rules at {rate:.0f} req/s": median(p99s["rules"]),
            "items learned": stats.get("items", 0), "rounds": rounds,
            "seconds per round": seconds}


EXPERIMENT_SECRET = "sk_bench_experiment"


def _with_sessions(payloads: list[bytes]) -> list[bytes]:
    """The requests as the SDK sends them: each with a session id of its own."""
    out = []
    for n, raw in enumerate(payloads):
        body = json.loads(raw)
        body["session_id"] = f"visitor-{n}"
        out.append(json.dumps(body).encode())
    return out


def _admin(api: str, method: str, path: str, body: Any = None) -> None:
    request = urllib.request.Request(api + path, method=method, headers={
        "X-API-Key": EXPERIMENT_SECRET, "Content-Type": "application/json"},
        data=None if body is None else json.dumps(body).encode())
    urllib.request.urlopen(request).read()


def bench_experiment(settings: Settings, data: Path, seconds: int, rounds: int
                     ) -> dict[str, Any]:
    """The same requests (each with a session id) with an experiment running and without,
    alternating in one run. The variant changes a parameter that costs nothing (position
    decay), so the difference is the experiment's own work: the variant's assignment and
    parameters, the answer's count and the session's in the tally."""
    script = wrk_script(_with_sessions(bodies(data)), "/iid_recommend", EXPERIMENT_SECRET)
    variants = {"variants": {"A": {"weight": 1, "params": {}},
                             "B": {"weight": 1, "params": {"position_decay": 1.0}}}}
    plain: list[float] = []
    running: list[float] = []
    with sessionrec_server(settings, extra={"SESSIONREC_SECRET_KEYS": EXPERIMENT_SECRET}) as api:
        wrk(api, script, 2)  # warm the caches
        for n in range(rounds):
            pair = [(plain, False), (running, True)]
            for figures, experiment in (pair if n % 2 == 0 else pair[::-1]):
                if experiment:
                    _admin(api, "PUT", "/admin/experiments/bench", variants)
                figures.append(wrk(api, script, seconds)["rps"])
                if experiment:
                    _admin(api, "DELETE", "/admin/experiments/bench")
    return {"req/s without an experiment": median(plain),
            "req/s with an experiment (2 variants)": median(running),
            "ratio (experiment / none), median of the rounds' ratios": median(
                [r / p for r, p in zip(running, plain, strict=True)]),
            "rounds": rounds, "seconds per round": seconds}


ORDER = {"order_score": 0.375129, "order_idf": 0.046144, "order_sessions": 0.056786,
         "order_session_weight": -0.172023, "order_last": -1.116378, "order_age": 0.003272,
         "order_sequence": 0.019781, "order_seen": -0.367578, "order_score_x_score": -0.052169,
         "order_score_x_idf": 0.045665, "order_score_x_sessions": -0.009249,
         "order_score_x_session_weight": 2.442924, "order_score_x_last": -4.594225,
         "order_score_x_age": 0.033701, "order_score_x_sequence": -0.004248,
         "order_score_x_seen": -0.865787, "order_score_x_length": -0.01119,
         "order_idf_x_idf": 0.006371, "order_idf_x_sessions": -0.003712,
         "order_idf_x_session_weight": 0.153168, "order_idf_x_last": -0.004688,
         "order_idf_x_age": 0.006256, "order_idf_x_sequence": 0.000301,
         "order_idf_x_seen": -0.041663, "order_idf_x_length": 0.027528,
         "order_sessions_x_sessions": 0.015029, "order_sessions_x_session_weight": -0.246202,
         "order_sessions_x_last": 0.112401, "order_sessions_x_age": -0.031949,
         "order_sessions_x_sequence": 0.014844, "order_sessions_x_seen": 0.098992,
         "order_sessions_x_length": -0.134089,
         "order_session_weight_x_session_weight": 1.160357,
         "order_session_weight_x_last": -1.116378, "order_session_weight_x_age": 0.162162,
         "order_session_weight_x_sequence": -0.016417,
         "order_session_weight_x_length": 0.598675, "order_last_x_age": -0.20526,
         "order_last_x_sequence": -0.046607, "order_last_x_length": -0.400825,
         "order_age_x_age": 0.012739, "order_age_x_sequence": -0.005484,
         "order_age_x_seen": -0.092017, "order_age_x_length": -0.010912,
         "order_sequence_x_sequence": -0.002007, "order_sequence_x_seen": -0.001635,
         "order_sequence_x_length": 0.009841, "order_seen_x_length": -0.473708}
"""A learned order: every weight a tuning run on DIGINETICA's state fitted (the self-tuned
evaluation of 2026-12-06's seventh sitting), for ``bench_order`` and ``versus
--order``. A fit leaves no weight at 0, and the kernel skips only zero weights, so an order
with some at 0 would cost less than a shop's."""


def bench_order(settings: Settings, data: Path, seconds: int, rounds: int, rate: float
                ) -> dict[str, Any]:
    """The same requests with a learned order in force (its sequence model trained first, as
    a worker's first run does) and without, alternating in one run (``PUT /admin/model``
    between rounds), then the open-loop latency at ``rate`` with it and without, alternating
    too."""
    script = wrk_script(bodies(data), "/iid_recommend", EXPERIMENT_SECRET)
    off = dict.fromkeys(ORDER, 0.0)
    train_sequence(settings)
    plain: list[float] = []
    ordered: list[float] = []
    unsequenced: list[float] = []  # the order without the sequence model's weights
    with sessionrec_server(settings, extra={"SESSIONREC_SECRET_KEYS": EXPERIMENT_SECRET}) as api:
        wrk(api, script, 2)  # warm the caches
        for n in range(rounds):
            arms = [(plain, off), (ordered, ORDER),
                    (unsequenced, {**ORDER, **dict.fromkeys(SEQUENCE_WEIGHTS, 0.0)})]
            for figures, weights in (arms if n % 2 == 0 else arms[::-1]):
                _admin(api, "PUT", "/admin/model", {"params": weights})
                figures.append(wrk(api, script, seconds)["rps"])
        # open loop, with the order and without, alternating: the served order's p99 in the
        # same sitting says how much of the order's is the machine's that day (a server
        # started now reads the parameters from the record)
        p99s: dict[str, list[float]] = {"served": [], "learned": []}
        p50s: dict[str, list[float]] = {"served": [], "learned": []}
        for n in range(rounds):
            named = [("served", off), ("learned", ORDER)]
            for name, weights in (named if n % 2 == 0 else named[::-1]):
                _admin(api, "PUT", "/admin/model", {"params": weights})
                got = bench_latency(settings, data, rate, seconds, 1)
                p99s[name].append(got["p99 ms"])
                p50s[name].append(got["p50 ms"])
        _admin(api, "PUT", "/admin/model", {"params": off})
    return {"req/s, served order": median(plain), "req/s, learned order": median(ordered),
            "ratio (learned / served), median of the rounds' ratios": median(
                [o / p for o, p in zip(ordered, plain, strict=True)]),
            "req/s, learned order without the sequence model's weights": median(unsequenced),
            "ratio (that / served)": median(
                [o / p for o, p in zip(unsequenced, plain, strict=True)]),
            f"learned order at {rate:.0f} req/s: p50 ms": median(p50s["learned"]),
            f"learned order at {rate:.0f} req/s: p99 ms": median(p99s["learned"]),
            f"served order at {rate:.0f} req/s: p50 ms": median(p50s["served"]),
            f"served order at {rate:.0f} req/s: p99 ms": median(p99s["served"]),
            "rounds": rounds, "seconds per round": seconds}


def bench_catalog(settings: Settings, records: int = 100_000) -> dict[str, Any]:
    """``sessionrec catalog`` on a JSON lines file of ``records`` records, as a user runs it
    (a fresh process: start-up included)."""
    rng = np.random.default_rng(3)
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        for n in range(records):
            f.write(json.dumps({"id": f"sku-{n}", "name": f"Item {n}",
                                "categories": [f"c{int(rng.integers(0, CATEGORIES))}"],
                                "price": round(float(rng.uniform(1, 500)), 2),
                                "tags": ["sale"] if n % 7 == 0 else [],
                                "attributes": {"colour": ["red", "blue", "black"][n % 3]}})
                    + "\n")
    env = {**os.environ, "SESSIONREC_REDIS_URL": settings.redis_url,
           "SESSIONREC_NAMESPACE": settings.namespace + "-catalog"}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "service.cli", "--log-level", "WARNING", "catalog",
                    f.name], env=env, check=True, stdout=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    os.unlink(f.name)
    return {"records": records, "seconds": elapsed, "records/s": records / elapsed}


def _rss_mib(pid: int) -> float:
    """Resident memory of a process and its children (a supervisor's serve processes)."""
    total = 0.0
    todo = [pid]
    while todo:
        each = todo.pop()
        with suppress(OSError):
            status = Path(f"/proc/{each}/status").read_text()
            total += int(status.split("VmRSS:")[1].split()[0]) / 1024
            children = Path(f"/proc/{each}/task/{each}/children").read_text().split()
            todo += [int(c) for c in children]
    return total


def bench_sequence(settings: Settings) -> dict[str, Any]:
    """The sequence model's first run on the DIGINETICA state (``sessionrec sequence --apply``
    as a worker starts it: one BLAS thread), what it adds to Redis, and what it adds to a
    serve process that follows it."""
    async def used() -> tuple[int, int]:
        store = Store(settings)
        r: Any = store.redis
        try:
            return int((await r.info("memory"))["used_memory"]), \
                int(await r.memory_usage(store.keys.sequence(), samples=0) or 0)
        finally:
            await store.close()

    env = {**os.environ, **settings.to_env()}
    before, _ = asyncio.run(used())
    port = free_port()
    serve = {"SESSIONREC_REDIS_URL": settings.redis_url, "SESSIONREC_NAMESPACE": settings.namespace,
             "SESSIONREC_PORT": str(port), "SESSIONREC_PROCESSES": "1", "PYTHONPATH": str(ROOT)}
    with process([sys.executable, "-m", "service.cli", "--log-level", "WARNING", "serve"], serve,
                 port, cwd=ROOT) as server:
        pid = server.pid
        rss_before = _rss_mib(pid)
        started = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "service.cli", "--log-level", "WARNING",
                              "sequence", "--apply"], env=env, check=True, capture_output=True,
                             text=True)
        elapsed = time.perf_counter() - started
        time.sleep(3 * MODEL_POLL)  # the serve process follows the new version
        rss_after = _rss_mib(pid)
    after, stored = asyncio.run(used())
    run = json.loads(out.stdout)
    return {"seconds (process, start to exit)": elapsed,
            "sessions / predictions / items": f"{run['sessions']} / {run['predictions']} / "
                                              f"{run['items']}",
            "Redis used_memory added (MiB)": (after - before) / 2**20,
            "the model's hash (MEMORY USAGE, MiB)": stored / 2**20,
            "serve process RSS before / after it follows the model (MiB)":
                f"{rss_before:.0f} / {rss_after:.0f}"}


def bench_tune(settings: Settings) -> dict[str, Any]:
    """``sessionrec tune --apply`` on the DIGINETICA state, as a user (or a worker) starts it:
    a fresh process, from the default parameters."""
    env = {**os.environ, **settings.to_env()}
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "service.cli", "--log-level", "WARNING", "tune",
                          "--apply"], env=env, check=True, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    run = json.loads(out.stdout)
    return {"seconds": elapsed, "sessions learned": run["sessions_learned"],
            "holdout sessions": run["holdout_sessions"], "predictions": run["predictions"],
            "candidates scored": run["candidates"],
            "HR@20 / MRR@20 in force": f"{run['current']['hr_at_20']:.4f} / "
                                       f"{run['current']['mrr_at_20']:.4f}",
            "HR@20 / MRR@20 best": f"{run['best']['hr_at_20']:.4f} / "
                                   f"{run['best']['mrr_at_20']:.4f}",
            "promoted": run["promoted"]}


def bench_tune_under_load(settings: Settings, data: Path, seconds: float) -> dict[str, Any]:
    """The service while a tuning run is in progress on the DIGINETICA state: freshness with a
    worker applying 500 events/s, then /iid_recommend at a fixed 500 req/s (open loop), both
    measured while the run searches; then the run's own duration."""
    payloads = bodies(data)
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        f.write("\n".join(p.decode() for p in payloads))
    env = {**os.environ, **settings.to_env()}
    with worker_process(settings), sessionrec_server(settings) as api:
        started = time.perf_counter()
        run = subprocess.Popen([sys.executable, "-m", "service.cli", "--log-level", "WARNING",
                                "tune", "--apply"], env=env, stdout=subprocess.PIPE, text=True)
        time.sleep(5)  # past the holdout's reading: the search is what runs for minutes
        fresh = np.array(asyncio.run(_freshness(api, 200, 500.0))) * 1000
        lat = open_loop_ms(api + "/iid_recommend", f.name, 500, seconds)
        in_progress = run.poll() is None
        stdout, _ = run.communicate(timeout=900)
        elapsed = time.perf_counter() - started
    result = json.loads(stdout)
    return {"run still in progress after both measurements": in_progress,
            "freshness p99 ms (worker applying 500 events/s)": float(np.percentile(fresh, 99)),
            "freshness p50 ms": float(np.percentile(fresh, 50)),
            f"/iid_recommend p99 ms at 500 req/s ({seconds:g} s)": float(np.percentile(lat, 99)),
            "/iid_recommend p50 ms": float(np.percentile(lat, 50)),
            "run seconds": elapsed, "promoted": result["promoted"]}


def table(title: str, figures: dict[str, Any]) -> str:
    rows = [f"| {k} | {v:,.3f} |" if isinstance(v, float) else f"| {k} | {v} |"
            for k, v in figures.items()]
    return f"| {title} | |\n|---|---|\n" + "\n".join(rows) + "\n"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_open_loop":
        _open_loop_child(sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5]),
                         sys.argv[6])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_flood":
        _flood_child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_feed":
        _feed_child(sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("api", "live", "latency", "session20", "worker", "load",
                                         "ingest", "freshness", "scaling", "memory", "flood",
                                         "silent", "rules", "catalog", "tune", "tuneload",
                                         "experiment", "order", "versus", "sequence", "all"))
    parser.add_argument("--data", type=Path, required=True,
                        help="folder with the SR-GNN DIGINETICA train.tsv and test.tsv")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--append", type=Path, default=None, help="append results to this file")
    parser.add_argument("--cart-share", type=float, default=0.0,
                        help="worker: this share of the log's views sent as add_to_cart")
    parser.add_argument("--order", action="store_true",
                        help="versus: this checkout serves with a learned order in force")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="versus: another checkout (the code before a change) with its "
                             "kernel built in place (python setup.py build_ext --inplace)")
    args = parser.parse_args()
    global CART_SHARE
    CART_SHARE = args.cart_share
    chosen = ("load", "api", "live", "latency", "session20", "worker", "ingest", "freshness",
              "flood", "silent", "rules", "catalog", "tune", "tuneload", "experiment", "order") \
        if args.what == "all" else (args.what,)
    if args.append:
        command = "python scripts/bench.py " + " ".join(sys.argv[1:])
        with args.append.open("a", encoding="utf-8") as f:
            f.write(f"\n## {datetime.datetime.now():%Y-%m-%d %H:%M} — {MACHINE}\n\n"
                    f"Command: `{command}`\n")
    with RedisProcess() as url:
        settings = Settings(redis_url=url, namespace="bench")
        if set(chosen) & {"api", "live", "latency", "session20", "scaling", "flood", "rules",
                          "tune", "tuneload", "experiment", "order", "versus", "sequence"}:
            asyncio.run(build_model(settings, args.data))
        for what in chosen:
            if what == "scaling":
                for title, figures in bench_scaling(settings, args.data, args.seconds,
                                                    args.rounds):
                    print(table(title, figures), flush=True)
                    if args.append:
                        with args.append.open("a", encoding="utf-8") as f:
                            f.write("\n" + table(title, figures))
                continue
            if what == "api":
                figures = bench_api(settings, args.data, args.seconds, args.rounds)
                title = "POST /iid_recommend, wrk -t1 -c32, closed loop"
            elif what == "live":
                figures = bench_live(settings, args.data, args.seconds, args.rounds)
                title = "POST /iid_recommend while a worker applies 500 events/s, wrk -t1 -c32"
            elif what == "latency":
                figures = bench_latency(settings, args.data, args.rate, args.seconds,
                                        args.rounds)
                title = f"POST /iid_recommend at a fixed {args.rate:.0f} req/s, open loop"
            elif what == "session20":
                figures = bench_session20(settings, args.data, args.rounds)
                title = "POST /iid_recommend, 20-item sessions, one request at a time"
            elif what == "ingest":
                figures = bench_ingest(settings, args.seconds, args.rounds)
                title = "POST /events, batches of 500, wrk -t1 -c8"
            elif what == "freshness":
                figures = bench_freshness(settings, 300)
                title = "accepted event -> visible in /items/{id}/similar, under background load"
            elif what == "memory":
                figures = bench_memory(settings, args.data)
                title = "Redis memory, DIGINETICA training log loaded, default model"
            elif what == "flood":
                figures = bench_flood(settings, args.data)
                title = ("POST /iid_recommend: a probe every 25 ms while 4 clients send 200 "
                         "never-seen ids per request")
            elif what == "silent":
                figures = bench_silent(settings, args.rounds)
                title = "200 concurrent POST /iid_recommend against a silent Redis"
            elif what == "rules":
                figures = bench_rules(settings, args.data, args.seconds, args.rounds, args.rate)
                title = ("POST /iid_recommend with a one-category filter and 20 excluded ids "
                         "against the same requests without rules, wrk -t1 -c32")
            elif what == "experiment":
                figures = bench_experiment(settings, args.data, args.seconds, args.rounds)
                title = ("POST /iid_recommend with a session id, an experiment running against "
                         "none, wrk -t1 -c32")
            elif what == "sequence":
                figures = bench_sequence(settings)
                title = ("The sequence model's first run on DIGINETICA's state, and what it adds "
                         "to Redis and a serve process")
            elif what == "order":
                figures = bench_order(settings, args.data, args.seconds, args.rounds, args.rate)
                title = ("POST /iid_recommend with a learned order in force against none, "
                         "wrk -t1 -c32; then open loop")
            elif what == "versus":
                if args.baseline is None:
                    parser.error("versus needs --baseline DIR")
                figures = bench_versus(settings, args.data, args.seconds, args.rounds,
                                       args.baseline.resolve(), args.order)
                title = ("POST /iid_recommend, this checkout"
                         + (" with the learned order" if args.order else "")
                         + " against the baseline, wrk -t1 -c32")
            elif what == "tuneload":
                figures = bench_tune_under_load(settings, args.data, args.seconds)
                title = "the service while a tuning run is in progress (DIGINETICA state)"
            elif what == "tune":
                figures = bench_tune(settings)
                title = "sessionrec tune --apply on the DIGINETICA state (906,140 events)"
            elif what == "catalog":
                figures = bench_catalog(settings)
                title = "sessionrec catalog, 100,000 JSON lines records"
            elif what == "worker":
                figures = bench_worker(settings, args.data, args.rounds)
                title = "one worker applying the DIGINETICA training log"
            else:
                figures = bench_load(settings, args.data)
                title = "sessionrec load of the DIGINETICA training log"
            print(table(title, figures), flush=True)
            if args.append:  # as soon as measured: a later failure loses nothing
                with args.append.open("a", encoding="utf-8") as f:
                    f.write("\n" + table(title, figures))


if __name__ == "__main__":
    main()
