"""A click log unlike the ones the defaults were chosen on: every two consecutive sessions of a
log joined into one (the second's clicks follow the first's), so sessions are twice as long
and end on an interest unrelated to how they began. Tuning has something to find there that
it does not on DIGINETICA or YOOCHOOSE themselves.

    python scripts/paired_log.py --data ../shared/datasets/diginetica-srgnn --out /tmp/paired
    sessionrec eval --train /tmp/paired/train.tsv --test /tmp/paired/test.tsv \
        --models sessionrec [--self-tune]

Writes session-rec's format (SessionId, ItemId, Time). The datasets stay where they are: the
output goes wherever ``--out`` says, never into the repository.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.offline import clicklog  # noqa: E402
from service.offline.clicklog import ClickLog  # noqa: E402


def paired(log: ClickLog, prefix: str) -> list[tuple[str, str, float]]:
    """Sessions 2k and 2k + 1 (in file order, which is time order) as one session."""
    bounds = log.session_bounds().tolist()
    rows: list[tuple[str, str, float]] = []
    for k, (start, end) in enumerate(itertools.pairwise(bounds)):
        joined = f"{prefix}{k // 2}"
        times = log.times[start:end]
        if k % 2 == 0:
            last = float(times[-1])
            shift = 0.0
        else:  # the second session's clicks follow the first's, one second apart at least
            shift = last + 1.0 - float(times[0])
        for item, t in zip(log.items[start:end].tolist(), times.tolist(), strict=True):
            rows.append((joined, item, t + shift))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True,
                        help="folder with train.tsv and test.tsv (SR-GNN or session-rec format)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in ("train.tsv", "test.tsv"):
        rows = paired(clicklog.read(args.data / name), name.split(".")[0] + "-")
        clicklog.write_sessionrec(rows, args.out / name)
        print(f"{args.out / name}: {len(rows)} events, {len({r[0] for r in rows})} sessions")


if __name__ == "__main__":
    main()
