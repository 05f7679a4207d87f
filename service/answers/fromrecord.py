"""``similar`` completed from the item's catalogue record: when behaviour gives fewer than k
items (an item no session has visited with another one yet, or too few), the rest are the
items most like its record (``core/coldstart.py`` ``alike``: shared categories, tags,
attribute values, price band), within the request's rules, after the co-visited ones."""

from __future__ import annotations

from typing import Any

import numpy as np

from service.answers.fill import item_hashes, six_decimals, worded
from service.core import coldstart
from service.core.rules import CategoryCap, Rules
from service.core.scoring import U64
from service.store.state import Store

MSG_RECORD = ("Items sharing this item's catalogue record (categories, tags, attributes, "
              "price band): no session has visited it with another one yet.")
MSG_SIMILAR_RECORD = ("Items most often visited in the same sessions as this item, completed "
                      "with items sharing its catalogue record (categories, tags, attributes, "
                      "price band).")
MSG_FEWER_RECORD = ("{found} co-visited or alike items satisfy the request's rules ({rules}); "
                    "k={k} asked for more.")
SOURCE = "record"  # explain's "source" of a row found from the record


async def from_record(store: Store, rows: list[dict[str, Any]], listed: bytes, item: U64,
                      k: int, rules: Rules, cap: CategoryCap
                      ) -> tuple[list[dict[str, Any]], str, bytes] | None:
    """``rows`` (the co-visited answer for the item ``item``, its hash alone; their hashes
    ``listed``; ``cap`` the answer's ``max_per_category`` so far) completed to ``k`` from
    the item's record: the rows, the answer's message and the rows' hashes. None when the
    record adds nothing (no record, nothing alike within the rules)."""
    if len(rows) >= k or len(item) != 1:
        return None
    index = await store.items.index()
    own = int(item[0])
    if own not in index.row_of:
        return None
    snapshot = await store.reads.trending_snapshot()
    ranked = coldstart.alike(index, own, snapshot.members, snapshot.score_of)
    if not ranked:
        return None
    before: list[int] = np.frombuffer(listed, "<u8").tolist()
    skip = {own, *before, *(await store.reads.hidden_items()).tolist(),
            *item_hashes(rules.exclude).tolist()}
    ceiling = float(rows[-1]["score"]) if rows else 1.0
    added: list[dict[str, Any]] = []
    hashes: list[int] = []
    for row, share in ranked:
        h = index.hashes[row]
        if h in skip or (rules.filter is not None and not index.holds(rules.filter, h)) \
                or not cap.take(h):
            continue
        found: dict[str, Any] = {"id": index.ids[row], "score": six_decimals(ceiling * share)}
        if rules.explain:
            found["because"] = []
            found["source"] = SOURCE
        added.append(found)
        hashes.append(h)
        if len(rows) + len(added) == k:
            break
    if not added:
        return None
    message = worded(MSG_SIMILAR_RECORD if rows else MSG_RECORD, len(rows) + len(added), k,
                     rules, MSG_FEWER_RECORD)
    return rows + added, message, listed + np.array(hashes, dtype="<u8").tobytes()
