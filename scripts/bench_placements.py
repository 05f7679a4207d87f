"""Placements' costs (issue 26's budgets), in one sitting on DIGINETICA's training log:

* a request naming a placement against the same request without one (SDK bodies with session
  ids; the placement is a ``session`` one with nothing but its name, so the difference is the
  placement's own work: its lookup, its rules' overlay, its count), rounds alternating;
* ``POST /rerank`` of 200 items (a category page) per process: each body a test prefix and
  200 items drawn from the training log, seeded; with a session id per body (the SDK's: its
  answer's record is written for feedback) and without; with ``--against`` a checkout of
  earlier code (its compiled kernel built in it), its ``POST /rerank`` with session ids too,
  each of its rounds between two of this code's.

    python scripts/bench_placements.py --data ../shared/datasets/diginetica-srgnn \\
        [--rounds 5] [--seconds 8] [--against /tmp/before]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import random
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench import (  # noqa: E402
    _admin,
    _with_sessions,
    bodies,
    build_model,
    median,
    sessionrec_server,
    wrk,
    wrk_script,
)

from service.offline import clicklog  # noqa: E402
from service.offline.redisproc import RedisProcess  # noqa: E402
from service.settings import Settings  # noqa: E402

SECRET = "sk_bench_experiment"  # bench._admin's


def placed(payloads: list[bytes], name: str) -> list[bytes]:
    out = []
    for raw in payloads:
        body = json.loads(raw)
        body["placement"] = name
        out.append(json.dumps(body).encode())
    return out


def rerank_bodies(payloads: list[bytes], catalogue: list[str], items: int, seed: int
                  ) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for raw in payloads[:500]:
        body = json.loads(raw)
        body.pop("recommend_seen", None)
        body.pop("k", None)
        body["items"] = rng.sample(catalogue, items)
        out.append(json.dumps(body).encode())
    return out


def run(settings: Settings, data: Path, seconds: int, rounds: int, items: int,
        against: Path | None = None) -> dict[str, Any]:
    sdk = _with_sessions(bodies(data))
    plain_script = wrk_script(sdk, "/iid_recommend", SECRET)
    placed_script = wrk_script(placed(sdk, "bench"), "/iid_recommend", SECRET)
    catalogue = sorted(set(clicklog.read(data / "train.tsv").items.tolist()))
    rerank_script = wrk_script(rerank_bodies(sdk, catalogue, items, 7), "/rerank", SECRET)
    anonymous_script = wrk_script(rerank_bodies(bodies(data), catalogue, items, 7), "/rerank",
                                  SECRET)
    plain: list[float] = []
    named: list[float] = []
    reranks: list[float] = []
    anonymous: list[float] = []
    earlier: list[float] = []
    with ExitStack() as servers:
        api = servers.enter_context(sessionrec_server(
            settings, extra={"SESSIONREC_SECRET_KEYS": SECRET}))
        # the earlier code's server idles beside (it polls the model twice a second) while
        # this code's is measured, and the other way round
        before = servers.enter_context(sessionrec_server(
            settings, extra={"SESSIONREC_SECRET_KEYS": SECRET}, code=against)) if against \
            else None
        _admin(api, "PUT", "/admin/placements/bench", {"strategy": "session"})
        for script in (plain_script, placed_script, rerank_script, anonymous_script):
            wrk(api, script, 2)  # warm the caches
        if before is not None:
            wrk(before, rerank_script, 2)
        for n in range(rounds):
            pair = [(plain, plain_script), (named, placed_script)]
            for figures, script in (pair if n % 2 == 0 else pair[::-1]):
                figures.append(wrk(api, script, seconds)["rps"])
            reranks.append(wrk(api, rerank_script, seconds)["rps"])
            if before is not None:
                earlier.append(wrk(before, rerank_script, seconds)["rps"])
            anonymous.append(wrk(api, anonymous_script, seconds)["rps"])
    ratios = [p / q for p, q in zip(named, plain, strict=True)]
    return {"req/s without a placement (SDK bodies)": median(plain),
            "req/s naming a placement": median(named),
            "ratio (placement / none), median of the rounds' ratios": median(ratios),
            "the rounds' ratios": " ".join(f"{r:.3f}" for r in ratios),
            f"POST /rerank of {items} items with session ids (the SDK's: each answer "
            "recorded for feedback), req/s (1 process)": median(reranks),
            "rerank rounds": " ".join(f"{r:.0f}" for r in reranks),
            f"POST /rerank of {items} items without session ids, req/s (1 process)":
                median(anonymous),
            "rounds without session ids": " ".join(f"{r:.0f}" for r in anonymous),
            **({f"POST /rerank with session ids, the code at {against}, req/s": median(earlier),
                "its rounds": " ".join(f"{r:.0f}" for r in earlier)} if against else {}),
            "rounds": rounds, "seconds per round": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--against", type=Path, default=None,
                        help="a checkout of earlier code, its kernel built: its POST /rerank too")
    args = parser.parse_args()
    with RedisProcess() as url:
        settings = Settings(redis_url=url, namespace="bench")
        asyncio.run(build_model(settings, args.data))
        figures = run(settings, args.data, args.seconds, args.rounds, args.items,
                      args.against)
    print(f"# {datetime.date.today()}: python scripts/bench_placements.py "
          + " ".join(sys.argv[1:]))
    for name, value in figures.items():
        print(f"{name}: {value:.3f}" if isinstance(value, float) else f"{name}: {value}")


if __name__ == "__main__":
    main()
