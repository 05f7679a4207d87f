"""Bought together against plain co-occurrence, on a click log with carts generated from it.

    python scripts/eval_bought_together.py \
        --data ../shared/datasets/yoochoose-clicks-100k-sessionrec

YOOCHOOSE's clicks carry no carts, so carts are generated from each session, deterministically:
a session **carts** an item it clicked at least twice (a revisit), and any other item it clicked
whose hash of (session, item) falls in ``--cart-share`` of the range; the cart event is an extra
``add_to_cart`` at the item's last click (its clicks stay views: carts are a subset of views).

The model learns the training file (``*_train_full.txt``) through ``sessionrec load`` (the same
update rule as the workers) into a private redis-server. Each test session (``*_test.txt``)
with at least two carted items is one case per carted item after the first: the items carted
before it are the cart, it is held out. Figures: the hit rate of the held-out item in the top 10
and 20 of

* **bought_together** (``answers/together.py``: carts, completed from similar when thin);
* its rows from carts only (what the carts alone found, the completion left out);
* **similar** of the cart's newest item: plain co-occurrence, the existing answer;
* **session**: ``/iid_recommend`` with the cart's items as the interactions.

Never copies the data set anywhere; the Redis is a temporary one, gone at exit.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.answers import together  # noqa: E402
from service.answers.recommender import Recommender  # noqa: E402
from service.core import carts as core_carts  # noqa: E402
from service.core.model import Event  # noqa: E402
from service.core.rules import Rules  # noqa: E402
from service.offline import clicklog  # noqa: E402
from service.offline.loader import load  # noqa: E402
from service.offline.redisproc import RedisProcess  # noqa: E402
from service.settings import Settings  # noqa: E402
from service.store.state import Store  # noqa: E402

KS = (10, 20)


def carted(session: str, item: str, clicks: int, share: float) -> bool:
    if clicks >= 2:
        return True
    digest = hashlib.blake2b(f"{session}\x00{item}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") < share * 2**64


def with_carts(log: clicklog.ClickLog, share: float) -> list[Event]:
    """The log's clicks as views, each session's carted items added as add_to_cart events at
    their last click (events in time order within a session)."""
    out: list[Event] = []
    bounds = log.session_bounds()
    sessions, items, times = log.sessions.tolist(), log.items.tolist(), log.times.tolist()
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        session = sessions[a]
        clicks = Counter(items[a:b])
        last = {items[n]: n for n in range(a, b)}
        for n in range(a, b):
            out.append(Event(session, items[n], times[n], "view"))
            if last[items[n]] == n and carted(session, items[n], clicks[items[n]], share):
                out.append(Event(session, items[n], times[n], "add_to_cart"))
    return out


def cases(events: list[Event]) -> list[tuple[list[str], str]]:
    """(cart so far, next carted item) for every test session carting two items or more."""
    by_session: dict[str, list[str]] = {}
    for ev in events:
        if ev.type == "add_to_cart":
            by_session.setdefault(ev.session_id, []).append(ev.item_id)
    return [(cart[:n], cart[n]) for cart in by_session.values() for n in range(1, len(cart))]


async def evaluate(data: Path, share: float, limit: int, spread: bool) -> dict[str, Any]:
    train_file = next(data.glob("*_train_full.txt"))
    test_file = next(data.glob("*_test.txt"))
    train = with_carts(clicklog.read(train_file), share)
    test = with_carts(clicklog.read(test_file), share)
    if not spread:
        original = core_carts.co_carted

        def unspread(*args: Any, **kwargs: Any) -> Any:
            return original(*args, **{**kwargs, "spread": False})
        together.carts.co_carted = unspread  # type: ignore[attr-defined]
    with RedisProcess() as url:
        settings = Settings(redis_url=url, namespace="eval-together")
        store = Store(settings)
        await store.prepare()
        report = await load(store, train)
        recommender = Recommender(store, settings)
        explain = Rules(explain=True)
        tests = cases(test)[:limit] if limit else cases(test)
        hits: dict[str, Counter[int]] = {name: Counter() for name in (
            "bought_together", "bought_together (carts only)", "similar (co-occurrence)",
            "session (iid_recommend)")}
        completed = 0
        started = time.perf_counter()
        for cart, held in tests:
            answered = await together.answer(recommender, cart, max(KS), explain)
            rows = answered.recommendations
            from_carts = [r["id"] for r in rows if r["source"] == "bought_together"]
            completed += len(from_carts) < max(KS)
            similar = [r["id"] for r in (await recommender.similar(cart[-1], max(KS))).rows()]
            session = [r["id"] for r in (await recommender.recommend(
                [(item, 1_500_000_000.0 + n, 4.0) for n, item in enumerate(cart)], max(KS),
                False)).rows()]
            for name, listed in (("bought_together", [r["id"] for r in rows]),
                                 ("bought_together (carts only)", from_carts),
                                 ("similar (co-occurrence)", similar),
                                 ("session (iid_recommend)", session)):
                record(hits[name], listed, held)
        seconds = time.perf_counter() - started
        await store.close()
    n = len(tests)
    return {"train events (with generated carts)": report.events,
            "train cart events": sum(ev.type == "add_to_cart" for ev in train),
            "cases": n, "answers completed from similar": completed / n if n else 0.0,
            "spread": spread, "cart share": share,
            **{f"{name} HR@{k}": hits[name][k] / n if n else 0.0 for name in hits for k in KS},
            "seconds": seconds}


def record(counter: Counter[int], listed: list[str], held: str) -> None:
    for k in KS:
        counter[k] += held in listed[:k]


def main(argv: list[str] | None = None, out: Callable[[str], Any] = print) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True,
                        help="a folder with *_train_full.txt and *_test.txt (SessionId, "
                             "ItemId, Time; tab-separated)")
    parser.add_argument("--cart-share", type=float, default=0.25,
                        help="share of the items clicked once that a session carts")
    parser.add_argument("--limit", type=int, default=0, help="at most this many cases")
    parser.add_argument("--no-spread", action="store_true",
                        help="count each session whole for every item it carted")
    args = parser.parse_args(argv)
    figures = asyncio.run(evaluate(args.data, args.cart_share, args.limit, not args.no_spread))
    for name, value in figures.items():
        out(f"{name:45} {value:.4f}" if isinstance(value, float) else f"{name:45} {value}")


if __name__ == "__main__":
    main()
