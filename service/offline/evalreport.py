"""An evaluation's report: its Markdown table and, with matplotlib, its HR@k and MRR@k
charts (``sessionrec eval --out``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from service.offline.evaluate import CUTOFFS


def report(results: dict[str, dict[str, float]], title: str) -> str:
    names = list(next(iter(results.values())))
    lines = [f"### {title}", "", "| model | " + " | ".join(names) + " |",
             "|---|" + "---|" * len(names)]
    for model, values in results.items():
        cells = [f"{values[n]:.4f}" if "ms" not in n else f"{values[n]:.2f}" for n in names]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def chart(curves: dict[str, tuple[Any, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, (hr, mrr) in curves.items():
        left.plot(CUTOFFS, hr, marker=".", label=name)
        right.plot(CUTOFFS, mrr, marker=".", label=name)
    left.set(title="HR@k", xlabel="k", xticks=range(0, 21, 5))
    right.set(title="MRR@k", xlabel="k", xticks=range(0, 21, 5))
    for ax in (left, right):
        ax.grid(alpha=0.3)
    right.legend(loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
