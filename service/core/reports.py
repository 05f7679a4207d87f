"""An experiment's and a placement's report, free of I/O (README, "Feedback and
experiments"): CTRs with their intervals, and each variant against the first. A report never
fails whatever the counts: counts read from several partitions at slightly different moments
need not be consistent, and a CTR lies within [0, 1] whatever arrives."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from service.core.feedback import CLICKED_IMPRESSION

Z95 = 1.959963984540054


def proportion(successes: int, trials: int) -> float:
    """``successes / trials`` within [0, 1] whatever the counts (a report never fails: counts
    read from several partitions at slightly different moments need not be consistent)."""
    return min(max(successes, 0), trials) / trials if trials > 0 else 0.0


def wilson(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """The 95 % Wilson score interval of a proportion: sound at a handful of impressions and
    at rates near 0, where the normal approximation is not."""
    if trials <= 0:
        return 0.0, 1.0
    p = proportion(successes, trials)
    z2 = z * z
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / (1 + z2 / trials)
    # the interval holds p exactly, whatever the rounding (at p = 0 it came out 5e-17 above)
    return max(0.0, min(centre - half, p)), min(1.0, max(centre + half, p))


def two_proportion_p(c1: int, n1: int, c2: int, n2: int) -> float | None:
    """The two-sided p-value that two CTRs differ (pooled two-proportion z-test); None
    without impressions on both sides."""
    if n1 <= 0 or n2 <= 0:
        return None
    p1, p2 = proportion(c1, n1), proportion(c2, n2)
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    variance = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    if variance <= 0:
        return 1.0
    z = (p2 - p1) / math.sqrt(variance)
    return min(1.0, math.erfc(abs(z) / math.sqrt(2)))


def variant_report(counts: Mapping[str, int], sessions: int) -> dict[str, Any]:
    """One variant's figures. ``ctr`` is the share of impressions whose item was then clicked
    in the same answer (``clicked_impressions / impressions``); ``clicks`` counts every
    attributed click, those on items whose impression never came included."""
    impressions, shown = counts.get("impression", 0), counts.get(CLICKED_IMPRESSION, 0)
    low, high = wilson(shown, impressions)
    return {"sessions": sessions, "answers": counts.get("answers", 0),
            "impressions": impressions, "clicks": counts.get("click", 0),
            "clicked_impressions": min(shown, impressions),
            "ctr": proportion(shown, impressions) if impressions else None,
            "ctr_interval": [low, high] if impressions else None,
            "add_to_cart": counts.get("add_to_cart", 0),
            "purchases": counts.get("purchase", 0)}


def placement_report(counts: Mapping[str, int]) -> dict[str, Any]:
    """A placement's figures: as a variant's, without sessions (a placement's answers are
    counted whoever asks)."""
    report = variant_report(counts, 0)
    del report["sessions"]
    return report


def comparisons(names: Sequence[str], reports: Sequence[Mapping[str, Any]]
                ) -> dict[str, dict[str, Any]]:
    """Each variant after the first against the first: the CTR difference and its p-value."""
    first = reports[0]
    out: dict[str, dict[str, Any]] = {}
    for name, report in zip(names[1:], reports[1:], strict=True):
        p = two_proportion_p(first["clicked_impressions"], first["impressions"],
                             report["clicked_impressions"], report["impressions"])
        diff = (report["ctr"] - first["ctr"]
                if report["ctr"] is not None and first["ctr"] is not None else None)
        out[name] = {"against": names[0], "ctr_difference": diff, "p_value": p}
    return out
