"""Per-request business rules, free of I/O: what a request may ask (SPEC, "Catalogue and
business rules") and the per-process copy of the catalogue they are checked against.

A request's ``filter`` keeps only the items whose catalogue record satisfies every condition
given (``categories`` and ``tags``: any of; ``price``: within the range; ``attributes``: each
named attribute equal to the value, or to one of the values). An item without a record fails
any filter. ``max_per_category`` caps how many items share a first category (items without a
category are not capped).

The request path never reads a record per candidate: ``CatalogueIndex`` is a columnar copy of
every record with posting sets per category, tag and attribute value, so a filter's eligible
items are set operations, computed once per distinct filter and cached until the catalogue
changes, and a candidate's first category is a dictionary lookup.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from service import kernel
from service.core.catalog import AttributeValue, Record

U64 = npt.NDArray[np.uint64]
F64 = npt.NDArray[np.float64]


def attribute_key(name: str, value: AttributeValue) -> str:
    """One attribute value as a posting key. Typed, so that ``true``, ``1`` and ``"1"`` stay
    three values (Python counts ``True == 1``), and numbers compare as numbers (3 == 3.0)."""
    if isinstance(value, bool):
        return f"a\0{name}\0b{int(value)}"
    if isinstance(value, int | float):
        return f"a\0{name}\0n{float(value)!r}"
    return f"a\0{name}\0s{value}"


@dataclass(frozen=True, slots=True)
class Filter:
    """Every condition given must hold; ``None`` is a condition not given."""

    categories: tuple[str, ...] | None = None
    tags: tuple[str, ...] | None = None
    price_min: float | None = None
    price_max: float | None = None
    attributes: tuple[tuple[str, tuple[AttributeValue, ...]], ...] = ()

    key: str = field(init=False, repr=False, compare=False)
    """Canonical text of the filter: equal filters share one cache entry."""

    def __post_init__(self) -> None:
        parts = [
            "c" + "\1".join(sorted(set(self.categories))) if self.categories is not None else "",
            "t" + "\1".join(sorted(set(self.tags))) if self.tags is not None else "",
            f"p{self.price_min!r}:{self.price_max!r}",
            *sorted("\1".join(sorted({attribute_key(name, v) for v in values}))
                    for name, values in self.attributes)]
        object.__setattr__(self, "key", "\2".join(parts))

    def holds(self, record: Record | None) -> bool:
        """The filter on one record: the specification ``CatalogueIndex.eligible`` computes
        with sets (the tests hold the two equal)."""
        if record is None:
            return False
        if self.categories is not None and not set(self.categories) & set(record.categories):
            return False
        if self.tags is not None and not set(self.tags) & set(record.tags):
            return False
        if self.price_min is not None or self.price_max is not None:
            if record.price is None:
                return False
            if self.price_min is not None and record.price < self.price_min:
                return False
            if self.price_max is not None and record.price > self.price_max:
                return False
        for name, values in self.attributes:
            if name not in record.attributes:
                return False
            if attribute_key(name, record.attributes[name]) not in {
                    attribute_key(name, v) for v in values}:
                return False
        return True


@dataclass(frozen=True, slots=True)
class Rules:
    """What one request asks beyond ``k``."""

    exclude: tuple[str, ...] = ()
    filter: Filter | None = None
    max_per_category: int | None = None
    explain: bool = False

    @property
    def needs_catalogue(self) -> bool:
        return self.filter is not None or self.max_per_category is not None


NO_RULES = Rules()


class Eligible:
    """The items a filter admits, available ones only: hashes ascending and the ids in the same
    order, and the hashes again as an open-addressing table the kernel probes (a request asks
    about every candidate at once)."""

    __slots__ = ("_keys", "_values", "hashes", "ids")

    def __init__(self, hashes: U64, ids: list[str]) -> None:
        self.hashes = hashes
        self.ids = ids
        capacity = 8
        while capacity < 2 * len(hashes):  # at most half full: short probes
            capacity *= 2
        self._keys = np.zeros(capacity, np.uint64)
        self._values = np.full(capacity, np.nan)
        if len(hashes):
            kernel.insert(self._keys, self._values, hashes, np.ones(len(hashes)))

    def admits(self, items: U64) -> npt.NDArray[np.bool_]:
        """Whether each item is eligible."""
        found, _ = kernel.lookup(self._keys, self._values,
                                 np.ascontiguousarray(items, np.uint64))
        return np.frombuffer(found, np.float64) > 0

    def keep(self, items: U64, scores: F64) -> tuple[U64, F64]:
        """The eligible items, with their scores, in their order (one kernel call: a request's
        few hundred candidates, most of them dropped under a narrow filter)."""
        kept, their = kernel.select(self._keys, self._values, items, scores, True)
        return np.frombuffer(kept, np.uint64), np.frombuffer(their, np.float64)

    def outside(self, items: U64) -> U64:
        """The items that are not eligible, in their order."""
        if not len(items):
            return items
        dropped, _ = kernel.select(self._keys, self._values, items, np.zeros(len(items)), False)
        return np.frombuffer(dropped, np.uint64)

    def __len__(self) -> int:
        return len(self.hashes)


class CategoryCap:
    """``max_per_category`` over an answer being built, in rank order."""

    def __init__(self, limit: int | None, category_of: dict[int, str | None]) -> None:
        self.limit = limit
        self.category_of = category_of
        self.counts: dict[str, int] = {}

    def take(self, item: int) -> bool:
        """Whether ``item`` may join the answer (and count it if so)."""
        if self.limit is None:
            return True
        category = self.category_of.get(item)
        if category is None:
            return True
        taken = self.counts.get(category, 0)
        if taken >= self.limit:
            return False
        self.counts[category] = taken + 1
        return True


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
    row_keys: list[tuple[str, ...]] = field(default_factory=list)  # what a row is posted under
    postings: dict[str, set[int]] = field(default_factory=dict)
    first_category: dict[int, str | None] = field(default_factory=dict)  # by item hash
    dead: int = 0
    _eligible: OrderedDict[str, Eligible] = field(default_factory=OrderedDict)
    _price_column: npt.NDArray[np.float64] | None = None

    CACHED_FILTERS = 256

    def __len__(self) -> int:
        return len(self.row_of)

    def put(self, item: int, record: Record | None) -> None:
        """An item's record (``None``: deleted)."""
        self._eligible.clear()
        self._price_column = None
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
        self.first_category[item] = record.categories[0] if record.categories else None
        keys = _posting_keys(record)
        self.row_keys.append(keys)
        for key in keys:
            self.postings.setdefault(key, set()).add(row)
        if self.dead > max(1024, len(self.row_of)):
            self._compact()

    def _drop(self, row: int) -> None:
        self.dead += 1
        self.available[row] = False
        self.prices[row] = math.nan
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
        self.row_keys = [self.row_keys[old] for _, old in live]
        self.row_of = {item: remap[old] for item, old in live}
        self.postings = {key: {remap[r] for r in rows if r in remap}
                         for key, rows in self.postings.items()}
        self.postings = {key: rows for key, rows in self.postings.items() if rows}
        self.dead = 0

    def eligible(self, rule: Filter) -> Eligible:
        """The available items ``rule`` admits (cached per distinct filter until the
        catalogue changes)."""
        key = rule.key
        found = self._eligible.get(key)
        if found is not None:
            self._eligible.move_to_end(key)
            return found
        rows = self._rows(rule)
        order = sorted(rows, key=self.hashes.__getitem__)
        found = Eligible(np.array([self.hashes[r] for r in order], dtype=np.uint64),
                         [self.ids[r] for r in order])
        self._eligible[key] = found
        if len(self._eligible) > self.CACHED_FILTERS:
            self._eligible.popitem(last=False)
        return found

    def _rows(self, rule: Filter) -> Iterable[int]:
        conditions: list[set[int]] = []
        if rule.categories is not None:
            conditions.append(self._any("c\0", rule.categories))
        if rule.tags is not None:
            conditions.append(self._any("t\0", rule.tags))
        for name, values in rule.attributes:
            conditions.append(self._union(attribute_key(name, v) for v in values))
        if rule.price_min is not None or rule.price_max is not None:
            if self._price_column is None:
                self._price_column = np.array(self.prices, dtype=np.float64)
            prices = self._price_column
            low = -math.inf if rule.price_min is None else rule.price_min
            high = math.inf if rule.price_max is None else rule.price_max
            conditions.append(set(np.flatnonzero((prices >= low) & (prices <= high)).tolist()))
        if conditions:
            conditions.sort(key=len)
            rows = set(conditions[0]).intersection(*conditions[1:])
        else:
            rows = set(self.row_of.values())
        return [r for r in rows if self.available[r]]

    def _any(self, prefix: str, names: Iterable[str]) -> set[int]:
        return self._union(prefix + name for name in names)

    def _union(self, keys: Iterable[str]) -> set[int]:
        empty: set[int] = set()
        return empty.union(*(self.postings.get(key, empty) for key in keys))


def _posting_keys(record: Record) -> tuple[str, ...]:
    return tuple({"c\0" + c for c in record.categories} | {"t\0" + t for t in record.tags}
                 | {attribute_key(name, v) for name, v in record.attributes.items()})
