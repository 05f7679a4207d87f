"""Cold start, free of I/O: reaching items with a catalogue record and little or no behaviour
(README, "Cold start"), over the process' copy of the catalogue (``core/catalogueindex.py``).

**Alike items** (``similar`` completed from the record): the candidates are read from the
item's own posting sets (each category, tag and attribute value), smallest set first and at
most ``RECORD_PER_KEY`` rows of each, from the trending snapshot's first rows, and from the
price order around the item's price; at most ``RECORD_TESTS`` candidates in all, whatever the
catalogue holds (a category of a million items costs ``RECORD_PER_KEY`` rows). Each is scored
by what it shares with the item: ``CATEGORY_WEIGHT`` per shared category, 1 per shared tag, 1
per shared attribute value, 1 when its price lies within ``PRICE_BAND`` of the item's; its
share is that over what the item's record could share (so 1.0 is "shares everything"). Ties
go to the more trending item, then the smaller id: the order is deterministic.

**New items** (a placement's ``explore``): first seen (``Keys.catalog_seen``) within
``max_age_days`` and learned in fewer than ``NEW_ITEM_SESSIONS`` sessions. Those that fit the
session's categories (the categories of its ``SESSION_ITEMS`` newest items) are found by
walking the smaller of two sources, the union of those categories' posting sets or the rows
that arrived since ``max_age_days`` (newest first), at most ``EXPLORE_TESTS`` rows and
``EXPLORE_CANDIDATES`` candidates. A candidate's fit is how many of the session's items share
one of its categories.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from service.core.catalogueindex import CatalogueIndex
from service.core.rules import Filter

CATEGORY = "c\0"  # the posting key prefix of a category (catalogueindex._posting_keys)

# --- alike items ----------------------------------------------------------------------------
RECORD_TESTS = 1024
"""Candidates an answer from a record scores at most (each a few dictionary lookups per key
of its record): the bound that keeps it off the catalogue's size."""
RECORD_PER_KEY = 128
"""Rows read from one posting set (one category, tag or attribute value) at most."""
RECORD_TRENDING = 256
"""Of the trending snapshot's items, the first this many are candidates (the popular items
that share something come first among equals)."""
CATEGORY_WEIGHT = 2
PRICE_BAND = 1.5
"""Prices within a factor of 1.5 either way (from 2/3 to 3/2 of the item's) share a band."""


def alike(index: CatalogueIndex, item: int, trending: Sequence[tuple[str, int, float]],
          score_of: Mapping[int, float]) -> list[tuple[int, float]]:
    """The rows of the available items most like ``item``'s record, best first, with their
    share in (0, 1]; empty when the item has no record or its record says nothing."""
    own = index.row_of.get(item)
    if own is None:
        return []
    weights = {key: CATEGORY_WEIGHT if key.startswith(CATEGORY) else 1
               for key in index.row_keys[own]}
    price = index.prices[own]
    priced = not math.isnan(price)
    total = sum(weights.values()) + (1 if priced else 0)
    if total == 0:
        return []
    found: set[int] = set()
    sources: list[Iterable[int]] = [
        (r for r in map(index.row_of.get, (h for _, h, _ in trending[:RECORD_TRENDING]))
         if r is not None)]
    sizes = sorted((len(index.postings.get(key, ())), key) for key in weights)
    sources += [itertools.islice(index.postings.get(key, ()), RECORD_PER_KEY)
                for _, key in sizes]
    if priced:
        sources.append(_lazy_band(index, price))
    tests = 0
    for source in sources:
        for row in source:
            if tests >= RECORD_TESTS:
                break
            tests += 1
            found.add(row)
    found.discard(own)
    low, high = (price / PRICE_BAND, price * PRICE_BAND) if priced else (math.inf, -math.inf)
    scored = []
    for row in found:
        if not index.available[row]:
            continue
        shared = shared_weight(weights, index.row_keys[row]) + \
            (1 if low <= index.prices[row] <= high else 0)
        if shared:
            h = index.hashes[row]
            scored.append((-shared, -score_of.get(h, -math.inf), index.ids[row], row))
    scored.sort()
    return [(row, -minus / total) for minus, _, _, row in scored]


def shared_weight(weights: Mapping[str, int], keys: Iterable[str]) -> int:
    """What one candidate shares with the item (its keys' weights; a candidate's whole cost)."""
    return sum(weights.get(key, 0) for key in keys)


def _lazy_band(index: CatalogueIndex, price: float) -> Iterable[int]:
    """The price band's rows nearest ``price``, looked up only when the walk gets there."""
    yield from index.priced_near(price, price / PRICE_BAND, price * PRICE_BAND,
                                 RECORD_PER_KEY)


# --- new items ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Explore:
    """A placement's ``explore``: the share of an answer's slots reserved for new items, and
    how long after its record first appeared an item is new."""

    share: float = 0.1  # DEFAULT_SHARE
    max_age_days: float = 7.0  # DEFAULT_MAX_AGE_DAYS


DEFAULT_SHARE = 0.1
DEFAULT_MAX_AGE_DAYS = 7.0

NEW_ITEM_SESSIONS = 10
"""An item learned in fewer sessions than this (its document frequency) has little behaviour:
within ``max_age_days`` of its first appearance, it is new."""
MIN_AGE_DAYS = 1 / 24  # an hour
MAX_AGE_DAYS = 365.0
EXPLORE_TESTS = 1024
"""Rows an answer's exploration tests at most (the bound that keeps it off the catalogue's
size)."""
EXPLORE_CANDIDATES = 128
"""New items that fit the session gathered at most (their frequencies are then read: one
cached read)."""
SESSION_ITEMS = 20
"""The session's newest items whose categories count."""
MIN_K_FOR_ONE = 4
"""From this k up, any share above 0 reserves at least one slot."""


def explore_slots(share: float, k: int) -> int:
    """The slots reserved: share × k rounded half up; at least one when share > 0 and
    k ≥ ``MIN_K_FOR_ONE`` (a share of 0.1 of k=5 would otherwise never explore); at most k."""
    if share <= 0 or k <= 0:
        return 0
    slots = math.floor(share * k + 0.5)
    if k >= MIN_K_FOR_ONE:
        slots = max(slots, 1)
    return min(k, slots)


def session_categories(index: CatalogueIndex, items: Sequence[int]) -> dict[str, int]:
    """Category -> how many of the session's ``SESSION_ITEMS`` newest distinct items (hashes,
    oldest first) are in it."""
    counts: dict[str, int] = {}
    for item in list(dict.fromkeys(reversed(items)))[:SESSION_ITEMS]:
        row = index.row_of.get(item)
        if row is None:
            continue
        for key in index.row_keys[row]:
            if key.startswith(CATEGORY):
                counts[key] = counts.get(key, 0) + 1
    return counts


def fresh(index: CatalogueIndex, categories: Mapping[str, int], since: float,
          rule: Filter | None, skip: set[int]) -> list[tuple[int, int]]:
    """(row, fit) of the available items first seen at or after ``since`` in ``categories``
    (posting keys -> session items, ``session_categories``) that ``rule`` admits, none of
    ``skip`` (hashes); at most ``EXPLORE_CANDIDATES``, after at most ``EXPLORE_TESTS`` rows."""
    if not categories:
        return []
    keys = sorted(categories, key=lambda key: (-categories[key], key))
    recent, order = index.arrivals(since)
    sources: list[Iterable[int]]
    if sum(len(index.postings.get(key, ())) for key in keys) <= len(recent) + len(order):
        sources = [index.postings.get(key, ()) for key in keys]
    else:
        sources = [reversed(recent), order]
    tests = 0
    tested: set[int] = set()
    found: list[tuple[int, int]] = []
    for row in itertools.chain.from_iterable(sources):
        if tests >= EXPLORE_TESTS or len(found) >= EXPLORE_CANDIDATES:
            break
        tests += 1
        if row in tested or not index.seen[row] >= since or not index.available[row]:
            continue
        tested.add(row)
        fit = fit_of(categories, index.row_keys[row])
        h = index.hashes[row]
        if fit and h not in skip and (rule is None or index.holds(rule, h)):
            found.append((row, fit))
    return found


def fit_of(categories: Mapping[str, int], keys: Iterable[str]) -> int:
    """How many of the session's items share one of a candidate's categories (a tested row's
    whole cost)."""
    return sum(categories.get(key, 0) for key in keys)
