"""Cold start on a shop whose items keep arriving: what share of new items are shown, and
clicked, in their first day, with today's behaviour against exploration and ``similar`` from
the record.

    python scripts/bench_coldstart.py [--days 3] [--sessions-per-hour 40] [--new-per-hour 4] \
        [--click 0.3] [--seed 1]

A generated shop: ``--categories`` categories of ``--items-per-category`` items each (a
category, a tag of the category's, a colour, a price around the category's), first seen a
month before the run; every simulated hour ``--new-per-hour`` new items with records arrive
(a category at random, put with the hour's time as their first-seen time). Each hour brings
``--sessions-per-hour`` visitors, each interested in one category (categories by a Zipf law)
for 2-8 steps. At each step the visitor is on an item's page, which shows two lists of
``--k``: ``similar`` for that item and the session's recommendations (``recommend`` with the
session's items so far). With probability ``--click`` the visitor clicks a shown item of its
category (the first shown likelier: weight 1/position; both lists' rows in turn); otherwise it
goes to an item of its category chosen by popularity (old items by a Zipf law of their rank,
a new item with the weight of the category's least popular one: the category page lists
what sells). Every page is a view event; the hour's events are applied (a worker in process)
before the next hour: the model lags at most an hour.

Two arms, the same visitors (the same seed) on a private redis-server, one namespace each:

- **today**: no exploration, ``similar`` from behaviour only (the answer before cold start);
- **cold start**: the session list explores (share ``--share``, ``--max-age-days``; through
  ``explore`` on the ``recommend`` answer) and ``similar`` completes from the record.

A warm-up day over the old items only (not measured) comes first. Reported, over the new items
that arrived with a whole day left in the run: the share shown at least once in their first
day, the share clicked at least once, and the mean clicks; and over every visitor, clicks per
session (what exploration costs the rest of the answer, if anything).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.answers import explore as explore_answers  # noqa: E402
from service.answers import recommender as recommender_module  # noqa: E402
from service.answers.recommender import Recommender  # noqa: E402
from service.core.catalog import Record  # noqa: E402
from service.core.model import Event  # noqa: E402
from service.core.rules import NO_RULES  # noqa: E402
from service.offline.redisproc import RedisProcess  # noqa: E402
from service.settings import Settings  # noqa: E402
from service.store.state import Store  # noqa: E402
from workers.consumer import Worker  # noqa: E402

HOUR, DAY = 3600.0, 86_400.0
COLOURS = ("black", "white", "red", "blue", "green")


@dataclass
class Shop:
    """The catalogue as the simulation knows it: items by category, their popularity weight,
    when new ones arrived."""

    by_category: dict[str, list[str]] = field(default_factory=dict)
    weight: dict[str, float] = field(default_factory=dict)
    category_of: dict[str, str] = field(default_factory=dict)
    arrived: dict[str, float] = field(default_factory=dict)  # new items: first seen

    def record(self, item: str, category: str, rng: random.Random) -> Record:
        base = 10.0 * (1 + int(category[1:]))
        return Record(item, None, (category,), True, round(base * rng.lognormvariate(0, 0.3), 2),
                      (f"{category}-t{rng.randrange(3)}",),
                      {"colour": COLOURS[rng.randrange(len(COLOURS))]})


@dataclass
class Tally:
    shown: dict[str, float] = field(default_factory=dict)  # new item -> first shown
    clicks: dict[str, int] = field(default_factory=dict)  # new item -> clicks, first day
    sessions: int = 0
    all_clicks: int = 0
    explored_rows: int = 0
    completed: int = 0  # similar answers completed from the record
    arrived: dict[str, float] = field(default_factory=dict)
    end: float = 0.0


async def applied(store: Store) -> None:
    while (await store.stats.read())["pending"]:
        await asyncio.sleep(0.02)


async def run_arm(url: str, name: str, cold: bool, args: argparse.Namespace) -> Tally:
    settings = Settings(redis_url=url, namespace=f"bench-{name}", partitions=4, block_ms=20,
                        read_cache_mb=0)  # what the worker applied, read at once
    store = Store(settings)
    await store.prepare()
    recommender = Recommender(store, settings)
    worker = Worker(settings, worker_id=f"bench-{name}")
    task = asyncio.create_task(worker.run())
    names = vars(recommender_module)  # what Recommender.similar calls
    original = names["from_record"]
    if not cold:  # today's similar: behaviour only
        async def no_record(*_: Any) -> None:
            return None
        names["from_record"] = no_record
    rng = random.Random(args.seed)  # the shop: the same items in both arms
    visitors = random.Random(args.seed + 1)  # the visitors: the same until answers differ
    ties = random.Random(args.seed + 2)  # explore's tie-breaks
    shop = Shop()
    tally = Tally(arrived=shop.arrived)
    start = time.time() - (args.days + 2) * DAY
    try:
        categories = [f"c{n}" for n in range(args.categories)]
        records = []
        for c in categories:
            shop.by_category[c] = []
            for rank in range(args.items_per_category):
                item = f"{c}-old{rank}"
                shop.by_category[c].append(item)
                shop.weight[item] = 1.0 / (1 + rank) ** 0.9
                shop.category_of[item] = c
                records.append(shop.record(item, c, rng))
        await store.items.put(records, now=start - 30 * DAY)
        interest = [1.0 / (1 + n) ** 0.7 for n in range(len(categories))]
        serial = 0
        hours = int((args.days + 1) * 24)
        tally.end = start + hours * HOUR
        for hour in range(hours):
            now = start + hour * HOUR
            measured = hour >= 24
            if measured:
                fresh = []
                for _ in range(args.new_per_hour):
                    c = rng.choice(categories)
                    serial += 1
                    item = f"{c}-new{serial}"
                    shop.weight[item] = min(shop.weight[i] for i in shop.by_category[c])
                    shop.by_category[c].append(item)
                    shop.category_of[item] = c
                    shop.arrived[item] = now
                    fresh.append(shop.record(item, c, rng))
                await store.items.put(fresh, now=now)
            events: list[Event] = []
            for visitor in range(args.sessions_per_hour):
                c = visitors.choices(categories, interest)[0]
                session = f"h{hour}-v{visitor}"
                t = now + visitors.uniform(0, HOUR - 600)
                await visit(recommender, shop, tally if measured else None, session, c, t,
                            cold, args, visitors, events, ties)
            await store.ingestion.ingest(events)
            await applied(store)
            store.reads.frequencies.clear()  # the hour's frequencies (the cache lives 5 min)
            # the hour's trending snapshot (a serve process re-reads it every 10 s of its own
            # clock, which here is a few simulated hours)
            await store.reads._read_trending_now()
    finally:
        names["from_record"] = original
        worker.stop()
        await task
        await worker.redis.aclose()
        await store.close()
    return tally


async def visit(recommender: Recommender, shop: Shop, tally: Tally | None, session: str,
                category: str, t: float, cold: bool, args: argparse.Namespace,
                rng: random.Random, events: list[Event], ties: random.Random) -> None:
    items = shop.by_category[category]
    current = rng.choices(items, [shop.weight[i] for i in items])[0]
    seen: list[tuple[str, float, float]] = []
    if tally is not None:
        tally.sessions += 1
    for _ in range(rng.randint(2, 8)):
        seen.append((current, t, 1.0))
        events.append(Event(session, current, t))
        similar = await recommender.similar(current, args.k)
        listed = await recommender.recommend(seen, args.k, False)
        if cold:
            listed = await explore_answers.explore(
                recommender, listed, [i for i, _, _ in seen], args.k, args.share,
                args.max_age_days, NO_RULES, now=t, rng=ties)
        similar_rows, listed_rows = similar.rows(), listed.rows()
        rows = [r for pair in zip(similar_rows, listed_rows, strict=False) for r in pair]
        longer = similar_rows if len(similar_rows) > len(listed_rows) else listed_rows
        rows += longer[len(rows) // 2:]
        if tally is not None:
            for r in rows:
                first = shop.arrived.get(r["id"])
                if first is not None and t < first + DAY:
                    tally.shown.setdefault(r["id"], t)
                if r.get("source") == "new":
                    tally.explored_rows += 1
            tally.completed += "record" in similar.message
        clickable = [(n, r["id"]) for n, r in enumerate(rows)
                     if shop.category_of.get(r["id"]) == category and r["id"] != current]
        if clickable and rng.random() < args.click:
            current = rng.choices([i for _, i in clickable],
                                  [1.0 / (1 + n) for n, _ in clickable])[0]
            if tally is not None:
                tally.all_clicks += 1
                first = shop.arrived.get(current)
                if first is not None and t < first + DAY:
                    tally.clicks[current] = tally.clicks.get(current, 0) + 1
        else:
            current = rng.choices(items, [shop.weight[i] for i in items])[0]
        t += rng.uniform(20, 90)


def report(name: str, tally: Tally) -> str:
    eligible = [i for i, first in tally.arrived.items() if first + DAY <= tally.end]
    shown = sum(1 for i in eligible if i in tally.shown)
    clicked = sum(1 for i in eligible if tally.clicks.get(i))
    clicks = sum(tally.clicks.get(i, 0) for i in eligible)
    n = max(len(eligible), 1)
    return (f"| {name} | {len(eligible)} | {shown / n:.1%} | {clicked / n:.1%} | "
            f"{clicks / n:.2f} | {tally.all_clicks / max(tally.sessions, 1):.3f} | "
            f"{tally.explored_rows} | {tally.completed} |")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=float, default=3)
    parser.add_argument("--sessions-per-hour", type=int, default=40)
    parser.add_argument("--new-per-hour", type=int, default=4)
    parser.add_argument("--categories", type=int, default=8)
    parser.add_argument("--items-per-category", type=int, default=50)
    parser.add_argument("--click", type=float, default=0.3)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--share", type=float, default=0.1)
    parser.add_argument("--max-age-days", type=float, default=7.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    lines = ["| arm | new items (a whole first day in the run) | shown in their first day | "
             "clicked in their first day | clicks per new item, first day | clicks per "
             "session (every item) | explore rows shown | similar answers completed from "
             "the record |", "|---|---|---|---|---|---|---|---|"]
    with RedisProcess() as url:
        for name, cold in (("today", False), ("cold start", True)):
            began = time.monotonic()
            tally = await run_arm(url, name.replace(" ", "-"), cold, args)
            lines.append(report(name, tally))
            print(f"{name}: {time.monotonic() - began:.0f} s", file=sys.stderr)
    print(" ".join(sys.argv))
    print("\n".join(lines))


if __name__ == "__main__":
    asyncio.run(main())
