"""A placement's ``explore``: the last slots of an answer given to new items that fit the
session's categories (``core/coldstart.py``: what is new, how they are found and the bounds),
marked ``"source": "new"``.

``explore_slots(share, k)`` slots at most (share × k rounded half up, at least one from
k = 4), the answer's last: its first ``k - slots`` rows stay as they were, and when fewer new
items fit, fewer slots are taken (the answer's own rows keep the rest). The new items are the
candidates with the best fit (session items sharing a category), ties broken at random, so
that successive answers spread their slots over the new items that fit instead of showing
the same one. They keep the request's rules (filter, exclusions, ``max_per_category``; never
hidden or unavailable), are never an item of the session or already in the answer, and take
the scores of the slots they fill (the scores stay non-increasing). No new item fits: the
answer is returned unchanged.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, TypeVar

import numpy as np

from service import kernel
from service.answers.fill import item_hashes
from service.core import coldstart
from service.core.layout import ITEM_PERSON
from service.core.rules import CategoryCap, Rules
from service.store.state import Store


class Asking(Protocol):
    """What ``explore`` needs of the ``Recommender``: its store. (This module imports no
    ``answers.recommender``, so that the recommender may call it.)"""

    @property
    def store(self) -> Store: ...


class Listing(Protocol):
    """What ``explore`` needs of an ``Answer`` (a dataclass, replaced with its new rows)."""

    __dataclass_fields__: ClassVar[dict[str, Any]]

    @property
    def recommendations(self) -> list[dict[str, Any]]: ...

    def rows(self) -> list[dict[str, Any]]: ...

    @property
    def message(self) -> str: ...

    @property
    def listed(self) -> bytes: ...


A = TypeVar("A", bound=Listing)

SOURCE = "new"
MSG_EXPLORED = "The last {n} shown are new items in the session's categories."
DAY = 86_400.0


async def explore(recommender: Asking, answer: A, session_items: Sequence[str],
                  k: int, share: float, max_age_days: float, rules: Rules, *,
                  now: float | None = None, rng: random.Random | None = None) -> A:
    """``answer`` with up to ``explore_slots(share, k)`` of its last slots given to new items
    that fit the categories of ``session_items`` (ids, oldest first). ``now``: the time new
    items are counted from (default: this process' clock); ``rng``: the tie-breaks' source
    (default: ``random``)."""
    slots = coldstart.explore_slots(share, k)
    if slots == 0 or not session_items:
        return answer
    store = recommender.store
    index = await store.items.index()
    session: list[int] = np.frombuffer(kernel.hashes(list(session_items), ITEM_PERSON),
                                       "<u8").tolist()
    categories = coldstart.session_categories(index, session)
    if not categories:
        return answer
    rows = answer.rows()
    listed: list[int] = (np.frombuffer(answer.listed, "<u8").tolist() if answer.listed else
                         np.frombuffer(kernel.hashes([r["id"] for r in rows], ITEM_PERSON),
                                       "<u8").tolist() if rows else [])
    skip = {*session, *(await store.reads.hidden_items()).tolist(),
            *item_hashes(rules.exclude).tolist(), *listed[:max(0, k - slots)]}
    since = (time.time() if now is None else now) - max_age_days * DAY
    found = coldstart.fresh(index, categories, since, rules.filter, skip)
    if not found:
        return answer
    hashes = np.array([index.hashes[row] for row, _ in found], np.uint64)
    df, _ = await store.reads.doc_freq(hashes)
    draw = (rng or random).random
    ranked = sorted((-fit, draw(), row) for (row, fit), sessions in
                    zip(found, df.tolist(), strict=True)
                    if sessions < coldstart.NEW_ITEM_SESSIONS)
    n = slots
    while n > 0:  # the answer's kept rows count toward max_per_category: fewer may fit
        cap = CategoryCap(rules.max_per_category, index.first_category)
        for h in listed[:k - n]:
            cap.take(h)
        chosen = [row for _, _, row in ranked
                  if index.hashes[row] not in listed[:k - n]
                  and cap.take(index.hashes[row])][:n]
        if len(chosen) == n:
            break
        n = len(chosen)
    if n == 0:
        return answer
    kept = rows[:k - n]
    added: list[dict[str, Any]] = []
    for at, row in enumerate(chosen, start=len(kept)):
        score = rows[min(at, len(rows) - 1)]["score"] if rows else 1.0
        new: dict[str, Any] = {"id": index.ids[row], "score": score}
        if rules.explain:
            new["because"] = []
        new["source"] = SOURCE
        added.append(new)
    taken = listed[:len(kept)] + [index.hashes[row] for row in chosen]
    return dataclasses.replace(
        answer, recommendations=kept + added, encoded=None,
        message=f"{answer.message} {MSG_EXPLORED.format(n=len(added))}",
        listed=np.array(taken, dtype="<u8").tobytes())
