"""Per-request business rules, free of I/O: what a request may ask (README, "Rules and
explanations").

A request's ``filter`` keeps only the items whose catalogue record satisfies every condition
given (``categories`` and ``tags``: any of; ``price``: within the range; ``attributes``: each
named attribute equal to the value, or to one of the values). An item without a record fails
any filter. ``max_per_category`` caps how many items share a first category (items without a
category are not capped).

They are checked against the process' copy of the catalogue (``core/catalogueindex.py``),
never against Redis.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

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
    also: Filter | None = None
    """Another filter that must hold too (``conjunction``: a promotion within a request's
    filter); its price range is already folded into this one's."""

    any_of: tuple[frozenset[str], ...] = field(init=False, repr=False, compare=False)
    """The posting keys of each condition but price: a record holds a condition when it is
    posted under one of its keys."""

    def __post_init__(self) -> None:
        any_of = [frozenset(attribute_key(name, v) for v in values)
                  for name, values in self.attributes]
        if self.categories is not None:
            any_of.append(frozenset("c\0" + c for c in self.categories))
        if self.tags is not None:
            any_of.append(frozenset("t\0" + t for t in self.tags))
        if self.also is not None:
            any_of.extend(self.also.any_of)
        object.__setattr__(self, "any_of", tuple(any_of))

    def holds(self, record: Record | None) -> bool:
        """The filter on one record: the specification ``CatalogueIndex.holds`` follows on its
        columns (the tests hold the two equal)."""
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
        return self.also is None or self.also.holds(record)


def conjunction(first: Filter | None, second: Filter) -> Filter:
    """A filter that holds where both do."""
    if first is None:
        return second
    lows = [p for p in (first.price_min, second.price_min) if p is not None]
    highs = [p for p in (first.price_max, second.price_max) if p is not None]
    return Filter(first.categories, first.tags, max(lows) if lows else None,
                  min(highs) if highs else None, first.attributes, second)


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
