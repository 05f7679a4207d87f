"""A click log generated with long sessions and slowly drifting interests, unlike the logs the
defaults were chosen on (DIGINETICA and YOOCHOOSE: short sessions whose next click follows the
last one closely).

Items belong to topics on a ring. A visitor holds a few topics at once and clicks items of
them, popular ones more often, in no particular order; now and then one of the topics moves to
a neighbour on the ring. So the next click is predicted by the whole session's mix of topics,
not by the last click and what followed it elsewhere: far-back items count (a low position
decay), and "what followed this item in other sessions" is noise (sequence weights near 0).

    python scripts/drifting_log.py --out /tmp/drifting
    sessionrec eval --train /tmp/drifting/train.tsv --test /tmp/drifting/test.tsv \
        --models sessionrec [--self-tune]

Writes session-rec's format (SessionId, ItemId, Time), the last ``--test-days`` of sessions as
the test split. Deterministic for a given ``--seed``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.offline import clicklog  # noqa: E402

DAY = 86_400.0


def generate(rng: np.random.Generator, *, sessions: int, topics: int, items_per_topic: int,
             topics_held: int, drift: float, mean_length: float, days: float
             ) -> list[tuple[str, str, float]]:
    """Rows (session, item, time) in time order."""
    # popularity within a topic: Zipf-like, so some items are far likelier than others
    ranks = np.arange(1, items_per_topic + 1, dtype=np.float64)
    within = ranks ** -1.0
    within /= within.sum()
    starts = np.sort(rng.uniform(0.0, days * DAY, sessions))
    rows: list[tuple[str, str, float]] = []
    for n, start in enumerate(starts):
        length = 2 + int(rng.geometric(1.0 / (mean_length - 1)))
        held = rng.choice(topics, size=topics_held, replace=False)
        weights = rng.dirichlet(np.ones(topics_held))
        t = float(start)
        for _ in range(length):
            if rng.random() < drift:  # one held topic moves to a neighbour on the ring
                k = int(rng.integers(topics_held))
                held[k] = (held[k] + (1 if rng.random() < 0.5 else -1)) % topics
            topic = int(held[rng.choice(topics_held, p=weights)])
            item = topic * items_per_topic + int(rng.choice(items_per_topic, p=within))
            rows.append((f"d{n}", f"i{item}", t))
            t += float(rng.exponential(40.0)) + 1.0
    rows.sort(key=lambda row: row[2])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sessions", type=int, default=24_000)
    parser.add_argument("--topics", type=int, default=300)
    parser.add_argument("--items-per-topic", type=int, default=60)
    parser.add_argument("--topics-held", type=int, default=3,
                        help="topics a visitor holds at once")
    parser.add_argument("--drift", type=float, default=0.03,
                        help="per click, the chance that one held topic moves")
    parser.add_argument("--mean-length", type=float, default=24.0)
    parser.add_argument("--days", type=float, default=60.0)
    parser.add_argument("--test-days", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=17)
    args = parser.parse_args()
    rows = generate(np.random.default_rng(args.seed), sessions=args.sessions,
                    topics=args.topics, items_per_topic=args.items_per_topic,
                    topics_held=args.topics_held, drift=args.drift,
                    mean_length=args.mean_length, days=args.days)
    # a session belongs to the split its first click falls in, as session-rec splits
    first: dict[str, float] = {}
    for session, _, t in rows:
        first.setdefault(session, t)
    cut = (args.days - args.test_days) * DAY
    args.out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train.tsv", [r for r in rows if first[r[0]] < cut]),
                       ("test.tsv", [r for r in rows if first[r[0]] >= cut])):
        clicklog.write_sessionrec(part, args.out / name)
        print(f"{args.out / name}: {len(part)} events, {len({r[0] for r in part})} sessions")


if __name__ == "__main__":
    main()
