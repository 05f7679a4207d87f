"""Placements, free of I/O (README, "Placements"): one named configuration per place on a
shop's pages (the home page, the product page, the cart, a category page), stored in Redis by
the operator and followed by every serve process.

A placement's fields are the defaults of the requests that name it: a request's own ``k`` and
rule fields override them one by one. ``boosts`` and ``promote`` are the placement's alone,
and both act after the rules: an item a rule leaves out is never boosted or promoted back in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from service.core.coldstart import Explore
from service.core.feedback import placement_code
from service.core.parameters import Value
from service.core.rules import Filter, Rules

STRATEGIES = ("session", "similar", "bought_together", "rerank", "popular")
"""What a placement answers: the session's next items (POST /iid_recommend), items like the
page's item, items carted with the cart's, the given list ordered for the session
(POST /rerank), what is trending."""

SCORED = ("session", "rerank")
"""The strategies whose answers the scoring parameters change: what an experiment's variants
may differ in (an experiment within a placement of another strategy would assign nothing)."""

SOURCES = ("session", "trending", "popular", "unknown", "record", "new")
"""What ``explain`` says an answer's item came from: the session's neighbourhood, the trending
fill; in a reranked list, other sessions' counts or nothing the model knows; ``similar``
completed from the item's catalogue record; a new item in a placement's explore slots (said
with or without ``explain``)."""

MAX_PLACEMENTS = 100
"""Placements one namespace holds: a shop has a handful of places on its pages, and every serve
process keeps each placement's parsed form (and counts its answers) in memory."""
MAX_PLACEMENT_NAME = 64
MAX_BOOSTS = 10
MAX_BOOST_FACTOR = 100.0
"""A boost multiplies a score by at most this (and by at least its inverse): enough to lift an
item from the tail of a list to its head, not enough to overflow a score."""


@dataclass(frozen=True, slots=True)
class Boost:
    filter: Filter
    factor: float


@dataclass(frozen=True, slots=True)
class Promote:
    filter: Filter
    slots: int


@dataclass(frozen=True, slots=True)
class Placement:
    """One placement, parsed. ``source`` is the JSON object the operator sent, normalised:
    what GET answers, what Redis keeps, and what a process compares to see a change."""

    name: str
    strategy: str
    k: int | None = None
    rules: Rules = field(default_factory=Rules)
    rule_fields: frozenset[str] = frozenset()
    """The rule fields the placement sets (a request's own override them one by one)."""
    boosts: tuple[Boost, ...] = ()
    promote: Promote | None = None
    params: Mapping[str, Value] = field(default_factory=dict)
    source: Mapping[str, Any] = field(default_factory=dict)
    serial: int = 0
    explore: Explore | None = None
    """The share of a ``session`` placement's answer reserved for new items."""
    """The serial it was created with (``store/placements.py``)."""
    code: bytes = field(init=False, repr=False, compare=False)
    """What its answers' ids carry, and what its counts are kept under."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "code", placement_code(self.name, self.serial))

    @property
    def needs_catalogue(self) -> bool:
        return bool(self.boosts) or self.promote is not None


def overlay(placement: Placement | None, rules: Rules, given: frozenset[str]) -> Rules:
    """The rules a request names a placement with: the placement's, each field the request
    gave (``given``) taken from the request instead."""
    if placement is None or not placement.rule_fields:
        return rules
    base = placement.rules
    return dataclasses.replace(base, **{name: getattr(rules, name)
                                        for name in ("exclude", "filter", "max_per_category",
                                                     "explain") if name in given})
