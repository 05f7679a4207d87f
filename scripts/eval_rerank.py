"""Rerank against the session's own answer: for test prefixes of DIGINETICA (SR-GNN split),
is the true next item in the top 10 of ``POST /rerank`` of a list holding it among 99 random
items of the training log more often than in the top 10 of ``POST /iid_recommend``?

The training log is loaded into a private Redis and served by ``sessionrec serve``; both calls
go through HTTP with the prefix as ``user_interactions`` (``recommend_seen`` true, as
``sessionrec eval`` asks). The 99 items are drawn uniformly from the training log's distinct
items, seeded, and the list shuffled, so its given order says nothing.

    python scripts/eval_rerank.py --data ../shared/datasets/diginetica-srgnn [--cases 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench import build_model, sessionrec_server  # noqa: E402

from service.offline import clicklog  # noqa: E402
from service.offline.evaluate import Case, static_cases  # noqa: E402
from service.offline.redisproc import RedisProcess  # noqa: E402
from service.settings import Settings  # noqa: E402

TOP = 10
DISTRACTORS = 99


async def measure(api: str, cases: list[Case], catalogue: list[str], seed: int,
                  concurrency: int) -> tuple[int, int, int]:
    rng = random.Random(seed)
    lists = []
    for case in cases:
        chosen = set(rng.sample(catalogue, DISTRACTORS + 1)) - {case.target}
        items = [case.target, *sorted(chosen)[:DISTRACTORS]]
        rng.shuffle(items)
        lists.append(items)
    hits = {"rerank": 0, "recommend": 0}
    gate = asyncio.Semaphore(concurrency)

    async def one(http: aiohttp.ClientSession, case: Case, items: list[str]) -> None:
        seed_body: dict[str, Any] = {"user_interactions": {
            item: {"timestamp": ts} for item, ts in zip(case.prefix, case.times, strict=True)}}
        async with gate:
            async with http.post(api + "/rerank", json={**seed_body, "items": items,
                                                        "k": TOP}) as resp:
                answer = await resp.json()
                assert resp.status == 200, answer
                hits["rerank"] += case.target in [r["id"] for r in answer["recommendations"]]
            async with http.post(api + "/iid_recommend", json={
                    **seed_body, "k": TOP, "recommend_seen": True}) as resp:
                answer = await resp.json()
                assert resp.status == 200, answer
                hits["recommend"] += case.target in [r["id"]
                                                     for r in answer["recommendations"]]

    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(one(http, c, items) for c, items in zip(cases, lists,
                                                                        strict=True)))
    return hits["rerank"], hits["recommend"], len(cases)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True,
                        help="folder with the SR-GNN DIGINETICA train.tsv and test.tsv")
    parser.add_argument("--cases", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    train = clicklog.read(args.data / "train.tsv")
    test = clicklog.read(args.data / "test.tsv")
    catalogue = sorted(set(train.items.tolist()))
    every = list(static_cases(test))
    cases = random.Random(args.seed).sample(every, min(args.cases, len(every)))
    started = time.monotonic()
    with RedisProcess() as url:
        settings = Settings(redis_url=url, namespace="rerank")
        asyncio.run(build_model(settings, args.data))
        with sessionrec_server(settings) as api:
            rerank, recommend, n = asyncio.run(measure(api, cases, catalogue, args.seed,
                                                       args.concurrency))
    print(f"{n} test prefixes of {len(every)} ({time.monotonic() - started:.0f} s): true next "
          f"item in the top {TOP} of POST /rerank (among {DISTRACTORS} random items) "
          f"{rerank / n:.4f}; of POST /iid_recommend {recommend / n:.4f}")
    print("command: python scripts/eval_rerank.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
