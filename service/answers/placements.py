"""What a placement adds to an answer (README, "Placements"): its boosts, which multiply the
scores of the items their filters match, and its promotion, which fills up to its slots with
the best items its filter matches. Both act after the request's rules: the rules decide what
may be answered, boosts and promotions only its order."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from service.core.catalogueindex import CatalogueIndex
from service.core.placements import Boost, Promote
from service.core.rules import Rules, conjunction
from service.core.scoring import F64, U64


def factors(catalogue: CatalogueIndex, boosts: tuple[Boost, ...], items: U64) -> F64:
    """Each item's factor: the product of those of the boosts whose filters it matches (one
    test per item and boost: what the answer holds, not what the catalogue does)."""
    total = np.ones(len(items))
    for boost in boosts:
        total[catalogue.admits(boost.filter, items)] *= boost.factor
    return total


def mark_boosts(rows: list[dict[str, Any]], found: F64) -> None:
    """``explain``: each boosted row says by how much."""
    for row, factor in zip(rows, found.tolist(), strict=True):
        if factor != 1.0:
            row["boost"] = factor


def reorder(rows: list[dict[str, Any]], hashes: list[int], found: F64, k: int
            ) -> tuple[list[dict[str, Any]], list[int]]:
    """Rows (and their hashes) rescored by their boost factors, the ``k`` best first (stable:
    equal scores keep their order), scaled back under the highest score they had (a score
    stays within (0, 1], the first of an answer at most)."""
    before = np.array([row["score"] for row in rows], np.float64)
    scores = within(before * found, float(before.max()) if len(before) else 1.0)
    order = np.argsort(-scores, kind="stable")[:k].tolist()
    out = []
    for n in order:
        row = rows[n]
        row["score"] = round(float(scores[n]) * 1e6) / 1e6
        out.append(row)
    return out, [hashes[n] for n in order]


def within(scores: F64, ceiling: float) -> F64:
    """``scores`` scaled so that none passes ``ceiling`` (unchanged when none does)."""
    top = float(scores.max()) if len(scores) else 0.0
    return scores * (ceiling / top) if top > ceiling else scores


Produce = Callable[[int, Rules, bytes], Awaitable[Any]]
"""An answer's producer: (k, the rules, the hashes already listed ahead of it: what its
category cap counts first) -> an ``Answer``."""


async def promoted(produce: Produce, k: int, rules: Rules, promote: Promote) -> Any:
    """The answer with up to ``promote.slots`` of its first places taken by the best items the
    promotion's filter matches within the rules (the model's, then trending ones), the rest of
    the ``k`` answered as without it. ``explain`` marks the promoted rows."""
    first = await produce(min(promote.slots, k), dataclasses.replace(
        rules, filter=conjunction(rules.filter, promote.filter)), b"")
    promoted_rows = first.rows()
    taken = [row["id"] for row in promoted_rows]
    if rules.explain:
        for row in promoted_rows:
            row["promoted"] = True
    if len(taken) >= k:
        return dataclasses.replace(first, recommendations=promoted_rows, encoded=None)
    rest = await produce(k - len(taken), dataclasses.replace(
        rules, exclude=rules.exclude + tuple(taken)), first.listed)
    return dataclasses.replace(rest, recommendations=promoted_rows + rest.rows(),
                               listed=first.listed + rest.listed, encoded=None)
