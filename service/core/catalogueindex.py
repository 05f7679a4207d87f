"""The per-process copy of the catalogue that rules are checked against, free of I/O.

The request path never reads a record from Redis: ``CatalogueIndex`` is a columnar copy of
every record with posting sets per category, tag and attribute value, and a price order. A
filter costs what the answer needs, never the catalogue's size: the request's candidates are
tested one by one, and the trending fill walks the filter's smallest source (a posting set, or
a price range's slice of the price order) testing as it goes, at most ``FILL_TESTS`` records
per request. The only thing kept per filter is a small filter's admitted items (a source of at
most ``FILL_TESTS`` rows), within ``SMALL_FILTERS_BYTES`` and until the catalogue changes: a
client sending distinct filters costs a bounded memory and no pass over the catalogue.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from service import kernel
from service.core.catalog import Record
from service.core.rules import Filter, attribute_key

U64 = npt.NDArray[np.uint64]
F64 = npt.NDArray[np.float64]


@dataclass(slots=True)
class CatalogueIndex:
    """Every catalogue record of the namespace, in columns, with posting sets.

    Rows are appended; a replaced or deleted record's row is left dead (out of every posting
    set) and the columns are rebuilt when dead rows outnumber live ones. The keys a row is
    posted under are kept with it, so dropping a row touches its own postings only."""

    row_of: dict[int, int] = field(default_factory=dict)
    hashes: list[int] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    prices: list[float] = field(default_factory=list)
    available: list[bool] = field(default_factory=list)
    seen: list[float] = field(default_factory=list)  # first seen (Unix seconds; NaN: unknown)
    row_keys: list[tuple[str, ...]] = field(default_factory=list)  # what a row is posted under
    postings: dict[str, set[int]] = field(default_factory=dict)
    first_category: dict[int, str | None] = field(default_factory=dict)  # by item hash
    by_price: tuple[F64, npt.NDArray[np.int64]] | None = None
    """Prices ascending and their rows, sorted when a price range first needs them; rows put
    since are kept aside in ``unsorted`` (tested as they come) until they are many."""
    unsorted: list[int] = field(default_factory=list)
    by_arrival: tuple[F64, npt.NDArray[np.int64]] | None = None
    """Minus the first-seen times ascending (the newest first) and their rows, sorted as the
    price order is; rows put since are kept aside in ``arrived``."""
    arrived: list[int] = field(default_factory=list)
    dead: int = 0
    _small: OrderedDict[Filter, SmallFilter] = field(default_factory=OrderedDict)
    _small_bytes: int = 0

    def __len__(self) -> int:
        return len(self.row_of)

    def put(self, item: int, record: Record | None, seen: float = math.nan) -> None:
        """An item's record (``None``: deleted) and when it first appeared (``seen``)."""
        if self._small:
            self._small.clear()
            self._small_bytes = 0
        old = self.row_of.pop(item, None)
        if old is not None:
            self._drop(old)
        if record is None:
            self.first_category.pop(item, None)
            return
        row = len(self.hashes)
        self.row_of[item] = row
        self.hashes.append(item)
        self.ids.append(record.item_id)
        self.prices.append(record.price if record.price is not None else math.nan)
        self.available.append(record.available)
        self.seen.append(seen)
        self.first_category[item] = record.categories[0] if record.categories else None
        keys = _posting_keys(record)
        self.row_keys.append(keys)
        for key in keys:
            self.postings.setdefault(key, set()).add(row)
        if self.by_price is not None and record.price is not None:
            self.unsorted.append(row)
        if self.by_arrival is not None and not math.isnan(seen):
            self.arrived.append(row)
        if self.dead > max(1024, len(self.row_of)):
            self._compact()

    def _drop(self, row: int) -> None:
        self.dead += 1
        self.available[row] = False
        self.prices[row] = math.nan
        self.seen[row] = math.nan
        for key in self.row_keys[row]:
            rows = self.postings[key]
            rows.discard(row)
            if not rows:
                del self.postings[key]
        self.row_keys[row] = ()

    def _compact(self) -> None:
        live = sorted(self.row_of.items(), key=lambda pair: pair[1])
        remap = {old: new for new, (_, old) in enumerate(live)}
        self.hashes = [self.hashes[old] for _, old in live]
        self.ids = [self.ids[old] for _, old in live]
        self.prices = [self.prices[old] for _, old in live]
        self.available = [self.available[old] for _, old in live]
        self.seen = [self.seen[old] for _, old in live]
        self.row_keys = [self.row_keys[old] for _, old in live]
        self.row_of = {item: remap[old] for item, old in live}
        self.postings = {key: {remap[r] for r in rows if r in remap}
                         for key, rows in self.postings.items()}
        self.postings = {key: rows for key, rows in self.postings.items() if rows}
        self.dead = 0
        self.by_price, self.unsorted = None, []
        self.by_arrival, self.arrived = None, []

    def holds(self, rule: Filter, item: int) -> bool:
        """Whether the item's record is available and satisfies ``rule`` (``Filter.holds`` on
        the columns: the tests hold the two equal)."""
        row = self.row_of.get(item)
        return row is not None and self._holds(rule, row)

    def _holds(self, rule: Filter | Ordered, row: int) -> bool:
        if not self.available[row]:
            return False
        if rule.price_min is not None or rule.price_max is not None:
            price = self.prices[row]
            if math.isnan(price) or (rule.price_min is not None and price < rule.price_min) \
                    or (rule.price_max is not None and price > rule.price_max):
                return False
        keys = self.row_keys[row]
        # a loop, not all() over a generator: this runs thousands of times a request
        for accepted in rule.any_of:  # noqa: SIM110
            if accepted.isdisjoint(keys):
                return False
        return True

    def admits(self, rule: Filter, items: U64) -> npt.NDArray[np.bool_]:
        """Whether each item satisfies ``rule``: a test per item (a request's candidates), so
        the cost follows the answer, not the catalogue."""
        small = self._small_filter(rule)
        if small is not None:
            found, _ = kernel.lookup(small.keys, small.values,
                                     np.ascontiguousarray(items, np.uint64))
            return np.frombuffer(found, np.float64) > 0
        row_of, holds = self.row_of, self._holds
        return np.fromiter((False if row is None else holds(rule, row)
                            for row in map(row_of.get, items.tolist())), bool, len(items))

    def keep(self, rule: Filter, items: U64, scores: F64) -> tuple[U64, F64]:
        """The items ``rule`` admits, with their scores, in their order (a small filter's in
        one kernel call: a request's few hundred candidates, most dropped)."""
        small = self._small_filter(rule)
        if small is None:
            kept = self.admits(rule, items)
            return items[kept], scores[kept]
        chosen, their = kernel.select(small.keys, small.values,
                                      np.ascontiguousarray(items, np.uint64),
                                      np.ascontiguousarray(scores, np.float64), True)
        return np.frombuffer(chosen, np.uint64), np.frombuffer(their, np.float64)

    def fill_order(self, rule: Filter, trending: Sequence[tuple[str, int, float]],
                   score_of: Mapping[int, float] | None = None
                   ) -> Iterator[tuple[str, int, float]]:
        """The items ``rule`` admits, for a trending fill: those among ``trending`` (id, hash,
        log2 score; best first) by their score, then others, as (id, hash, share of the first
        one's score). At most ``FILL_TESTS`` records are tested: when the filter's smallest
        source (the union of one condition's posting sets) is that small, every admitted item
        is found and ordered; otherwise the trending items are walked, then the source, until
        the caller has taken enough or the tests are spent."""
        small = self._small_filter(rule)
        if small is not None:
            if score_of is None:
                score_of = {h: score for _, h, score in trending}
            if small.order is None or small.scores is not score_of:
                ranked = sorted((-score_of.get(h, -math.inf), h, name)
                                for name, h in zip(small.ids, small.hashes, strict=True))
                top = -ranked[0][0] if ranked else -math.inf
                small.order = [(name, h, _share(-minus, top)) for minus, h, name in ranked]
                small.scores = score_of
            yield from small.order
            return
        source, test = self._plan(rule)
        tests = 0
        given: set[int] = set()
        top = -math.inf
        for name, h, score in trending:
            if tests >= FILL_TESTS // 2:
                break
            tests += 1
            found = self.row_of.get(h)
            if found is not None and self._holds(test, found):
                if top == -math.inf:
                    top = score
                given.add(found)
                yield name, h, _share(score, top)
        for candidates in source:
            for row in candidates:
                if tests >= FILL_TESTS:
                    return
                tests += 1
                if row not in given and self._holds(test, row):
                    given.add(row)
                    yield self.ids[row], self.hashes[row], 0.0

    def _small_filter(self, rule: Filter) -> SmallFilter | None:
        """The items a filter admits when its smallest source is small (``FILL_TESTS`` rows at
        most; None otherwise): found by testing that source, kept until the catalogue changes
        within ``SMALL_FILTERS_BYTES`` (least recently used out), so the few filters a shop
        sends on every request (one per category page) cost a table probe, and a client
        sending distinct filters costs the bounded test each, never more memory."""
        found = self._small.get(rule)
        if found is not None:
            self._small.move_to_end(rule)
            return found
        source, test = self._plan(rule)
        if sum(len(rows) for rows in source) > FILL_TESTS:
            return None
        rows = [r for r in {row for rows in source for row in rows} if self._holds(test, r)]
        found = SmallFilter([self.ids[r] for r in rows], [self.hashes[r] for r in rows])
        self._small[rule] = found
        self._small_bytes += found.cost
        while self._small_bytes > SMALL_FILTERS_BYTES:
            _, dropped = self._small.popitem(last=False)
            self._small_bytes -= dropped.cost
        return found

    def sort_prices(self) -> None:
        """Sort the price order now (the mirror does it off the event loop after a whole read;
        a price range otherwise sorts on first use)."""
        prices = np.array(self.prices, dtype=np.float64)
        order = np.argsort(prices, kind="stable")
        self.by_price, self.unsorted = (prices[order], order), []

    def sort_arrivals(self) -> None:
        """Sort the arrival order now (as ``sort_prices``)."""
        minus = -np.array(self.seen, dtype=np.float64)
        order = np.argsort(minus, kind="stable")
        self.by_arrival, self.arrived = (minus[order], order), []

    def arrivals(self, since: float) -> tuple[list[int], Collection[int]]:
        """The rows that may have first appeared at or after ``since``: those put since the
        arrival order was sorted (the newest last: walk it backwards), and the order's slice
        (the newest first). A row's own ``seen`` decides: a replaced record's old row stays
        in the order until the next sort, dead (its time NaN)."""
        if self.by_arrival is None or \
                len(self.arrived) > max(RESORT_AFTER, len(self.hashes) // 4):
            self.sort_arrivals()
        assert self.by_arrival is not None
        minus, rows = self.by_arrival
        end = int(np.searchsorted(minus, -since, "right"))
        return self.arrived, _Rows(rows, 0, end)

    def priced_near(self, price: float, low: float, high: float, n: int) -> list[int]:
        """Rows priced within [low, high]: at most ``n`` of the price order, the nearest to
        ``price`` first, then those of the last ``n`` rows put since it was sorted (a bisection
        and 2n rows: a price band's cost whatever the catalogue's size)."""
        band = self._priced(low, high)[0]
        assert isinstance(band, _Rows) and self.by_price is not None
        start, end = band._start, band._end
        prices = self.by_price[0]
        middle = int(np.searchsorted(prices[start:end], price, "left")) + start
        near = sorted(range(max(start, middle - n), min(end, middle + n)),
                      key=lambda at: (abs(float(prices[at]) - price), at))[:n]
        found = [int(band._rows[at]) for at in near]
        return found + [r for r in self.unsorted[-n:] if low <= self.prices[r] <= high]

    def _priced(self, low: float | None, high: float | None) -> tuple[Collection[int], ...]:
        """The rows whose price may lie in [low, high]: a slice of the price order (a bisection)
        and the rows put since it was sorted. A replaced record's old row stays in the order
        until the next sort; it is dead, so its test fails."""
        if self.by_price is None or len(self.unsorted) > max(RESORT_AFTER, len(self.hashes) // 4):
            self.sort_prices()
        assert self.by_price is not None
        prices, rows = self.by_price
        start = int(np.searchsorted(prices, -math.inf if low is None else low, "left"))
        end = max(start, int(np.searchsorted(prices, math.inf if high is None else high,
                                             "right")))  # a conjunction may empty the range
        return (_Rows(rows, start, end), self.unsorted)

    def _plan(self, rule: Filter) -> tuple[tuple[Collection[int], ...], Ordered]:
        """Where a fill looks (the posting sets, or the price order's slice, of the condition
        with the fewest rows; every row when there is none) and the filter's test with its
        most selective conditions first, so that most rows fail at the first."""
        empty: set[int] = set()
        sized = sorted(((sum(len(self.postings.get(key, empty)) for key in accepted), n)
                        for n, accepted in enumerate(rule.any_of)))
        test = Ordered(rule.price_min, rule.price_max,
                       tuple(rule.any_of[n] for _, n in sized))
        best: tuple[Collection[int], ...] = (range(len(self.hashes)),)
        size = len(self.hashes)
        if sized:
            size, n = sized[0]
            best = tuple(self.postings.get(key, empty) for key in rule.any_of[n])
        if rule.price_min is not None or rule.price_max is not None:
            priced = self._priced(rule.price_min, rule.price_max)
            if sum(map(len, priced)) < size:
                best = priced
        return best, test


class Ordered(NamedTuple):
    """A filter's test in the order a fill runs it (``CatalogueIndex._plan``)."""

    price_min: float | None
    price_max: float | None
    any_of: tuple[frozenset[str], ...]


FILL_TESTS = 1024
"""Records a request's trending fill tests at most under a filter (each a few dictionary
lookups): the bound that keeps a filter's cost off the catalogue's size. A filter whose
conditions each admit more items than this, but together few, may find fewer than k; the
answer says so."""


SMALL_FILTERS_BYTES = 32 << 20
"""What a process keeps of small filters' admitted items, counted from above
(``SmallFilter.cost``)."""


class SmallFilter:
    """A small filter's admitted items: their ids and hashes, the hashes as a table the kernel
    probes (a request asks about all its candidates at once), and their trending order for
    the snapshot of scores it was made with."""

    __slots__ = ("cost", "hashes", "ids", "keys", "order", "scores", "values")

    def __init__(self, ids: list[str], hashes: list[int]) -> None:
        self.ids = ids
        self.hashes = hashes
        capacity = 8
        while capacity < 2 * len(hashes):  # at most half full: short probes
            capacity *= 2
        self.keys = np.zeros(capacity, np.uint64)
        self.values = np.full(capacity, np.nan)
        if hashes:
            kernel.insert(self.keys, self.values, np.array(hashes, np.uint64),
                          np.ones(len(hashes)))
        self.order: list[tuple[str, int, float]] | None = None
        self.scores: Mapping[int, float] | None = None
        # two lists of references (the ids are the index's own strings, not copies), the
        # order's tuples and floats, the table's 16 bytes a slot, the rest
        self.cost = len(hashes) * (2 * 8 + 8 + 150) + 16 * capacity + 1024


RESORT_AFTER = 50_000
"""Rows put since the price order was sorted, before it is sorted again (they are tested one
by one until then; the sort of a million prices takes tens of milliseconds)."""


class _Rows(Collection[int]):
    """A slice of an array of rows, iterated as Python ints without copying the slice whole (a
    walk takes a few thousand of a range that may hold a million)."""

    __slots__ = ("_end", "_rows", "_start")

    def __init__(self, rows: npt.NDArray[np.int64], start: int, end: int) -> None:
        self._rows, self._start, self._end = rows, start, end

    def __len__(self) -> int:
        return self._end - self._start

    def __iter__(self) -> Iterator[int]:
        for at in range(self._start, self._end, 1024):
            yield from self._rows[at:min(at + 1024, self._end)].tolist()

    def __contains__(self, row: object) -> bool:
        return row in self._rows[self._start:self._end]


def _share(score: float, top: float) -> float:
    """A trending log2 score as a share of the first one's (0 when not trending)."""
    return math.pow(2.0, min(score - top, 0.0)) if math.isfinite(score) else 0.0


def _posting_keys(record: Record) -> tuple[str, ...]:
    return tuple({"c\0" + c for c in record.categories} | {"t\0" + t for t in record.tags}
                 | {attribute_key(name, v) for name, v in record.attributes.items()})

