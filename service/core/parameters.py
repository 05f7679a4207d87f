"""The scoring parameters, each defined once: its default, what it may be, what it means.

``scoring.Params`` takes its defaults from here, the settings their flags' defaults and help,
the model record and ``PUT /admin/model`` their limits, the OpenAPI document its schema and
tuning the names it searches. Free of imports from the project, so that the settings (which
everything imports) can read it too."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

Value = int | float


@dataclass(frozen=True, slots=True)
class Parameter:
    """One scoring parameter: a whole number or any finite number within [low, high]."""

    default: Value
    integer: bool
    low: float
    high: float
    meaning: str

    def check(self, value: Any) -> Value | str:
        """The value as the parameter's type, or what is wrong with it (for a 400)."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            kind = "a whole number" if self.integer else "a number"
            return f"must be {kind}"
        if self.integer and not (isinstance(value, int) or value.is_integer()):
            return "must be a whole number"
        if not math.isfinite(value) or not self.low <= value <= self.high:
            return f"must be between {self.low:g} and {self.high:g}"
        return int(value) if self.integer else float(value)


PARAMETERS: dict[str, Parameter] = {
    "query_items": Parameter(20, True, 1, 1000,
                             "Most recent session items used to find neighbours."),
    "sample_sessions": Parameter(500, True, 1, 100_000,
                                 "Most recent candidate sessions considered."),
    "neighbours": Parameter(200, True, 1, 100_000,
                            "Neighbour sessions whose items are scored."),
    "sequence_weight": Parameter(1.5, False, 0, 100,
                                 "Extra weight, divided by the distance, for items that follow "
                                 "the session's most recent item inside a neighbour session."),
    "before_weight": Parameter(1.0, False, 0, 100,
                               "The same for items that precede it (0: none)."),
    "position_decay": Parameter(2.0, False, 0, 20,
                                "Session item at distance d from the end weighs "
                                "(1 + d)^-decay."),
    "idf_weight": Parameter(1.0, False, 0, 20,
                            "Scores are multiplied by log(1 + sessions / sessions with the "
                            "item)^idf_weight, so hubs do not crowd out specific items."),
    "repeat_weight": Parameter(2.0, False, 0, 100,
                               "With recommend_seen, boost for items of the session itself "
                               "(times their recency weight), relative to the best "
                               "neighbourhood score."),
    "neighbour_half_life": Parameter(
        0.0, False, 0, 1e10,
        "Seconds after which a candidate neighbour session's similarity halves, by the age of "
        "its latest shared event against the newest candidate's (0: no decay). Older "
        "sessions weigh less where tastes move."),
    # the learned order of the top answers (``core/reorder.py``): a weight per feature, all
    # 0 (the default) keeping the scores' order; a tuning run fits them
    "order_score": Parameter(0.0, False, -100, 100,
                             "Learned order: weight of the log of an answer's score relative "
                             "to the best (0 for all eight: the scores' order)."),
    "order_idf": Parameter(0.0, False, -100, 100,
                           "Learned order: weight of log(1 + sessions / sessions with the "
                           "item)."),
    "order_sessions": Parameter(0.0, False, -100, 100,
                                "Learned order: weight of log(1 + sessions with the item)."),
    "order_session_weight": Parameter(0.0, False, -100, 100,
                                      "Learned order: weight of the item's weight in the "
                                      "session (0 when not in it)."),
    "order_last": Parameter(0.0, False, -100, 100,
                            "Learned order: weight of being the session's last item."),
    "order_age": Parameter(0.0, False, -100, 100,
                           "Learned order: weight of log(1 + days since a neighbour session "
                           "last touched the item)."),
    "order_sequence": Parameter(0.0, False, -100, 100,
                                "Learned order: weight of the sequence model's score of the "
                                "item, against the best answer's (0 without a model)."),
    "order_seen": Parameter(0.0, False, -100, 100,
                            "Learned order: weight of being one of the session's items, "
                            "any of them (not only those the query weighs)."),
    "index_cap": Parameter(500, True, 1, 1_000_000,
                           "Most recent sessions indexed per item (neighbours per item); serve "
                           "reads the newest this many of each index: set it alike for both."),
}
"""Every parameter the model record can set, which are the fields of ``scoring.Params`` and
what ``sessionrec tune`` searches (with ``ORDER_PAIRS``' weights, added below)."""

ORDER_FEATURES = ("order_score", "order_idf", "order_sessions", "order_session_weight",
                  "order_last", "order_age", "order_sequence", "order_seen")
"""The learned order's features, by the parameter that weighs each (``core/reorder.py``
computes them)."""

BINARY_FEATURES = ("order_last", "order_seen")
"""Features that are 0 or 1: their square is themselves, so it has no weight of its own."""

SAME_PRODUCTS = (("order_session_weight", "order_seen"), ("order_last", "order_seen"))
"""Pairs whose product is their first feature: it is 0 but for the session's own items, where
``order_seen`` is 1. A weight of its own would only split the first's with it."""

SESSION_FEATURES = ("order_length",)
"""Features of the request, the same for each of its answers: alone they order nothing, so
they have no weight of their own, only their products with each answer feature. The
session's length (``log`` of its distinct items, capped: ``reorder.LENGTH_CAP``): how far a
long session's visitor follows the neighbourhood, the sequence model or their own items is
not how far a first click's does."""

ORDER_COLUMNS = ORDER_FEATURES + SESSION_FEATURES
"""Every column the learned order computes per answer: the answer features, then the
session's."""

ORDER_PAIRS = tuple((i, k) for i in range(len(ORDER_FEATURES))
                    for k in range(i, len(ORDER_COLUMNS))
                    if not (i == k and ORDER_FEATURES[i] in BINARY_FEATURES)
                    and (ORDER_COLUMNS[i], ORDER_COLUMNS[k]) not in SAME_PRODUCTS)
"""The products of two columns (a feature with itself: its square) the learned order weighs
too: how much one feature counts depends on another (the sequence model's score on how many
sessions hold the item, the neighbourhood's score on its idf, any of them on the session's
length), which one weight per feature cannot say. A tuning run fits their weights with the
features' own."""


def pair_name(i: int, k: int) -> str:
    """``order_<first>_x_<second>``: the weight of the product of columns ``i`` and ``k``."""
    return f"{ORDER_COLUMNS[i]}_x_{ORDER_COLUMNS[k].removeprefix('order_')}"


ORDER_PAIR_NAMES = tuple(pair_name(i, k) for i, k in ORDER_PAIRS)
PARAMETERS.update({
    pair_name(i, k): Parameter(
        0.0, False, -100, 100,
        f"Learned order: weight of the product of the {ORDER_COLUMNS[i]} and "
        f"{ORDER_COLUMNS[k]} features (set by tuning runs or PUT /admin/model).")
    for i, k in ORDER_PAIRS})


def default_int(name: str) -> int:
    value = PARAMETERS[name].default
    assert isinstance(value, int), name
    return value


def default_float(name: str) -> float:
    return float(PARAMETERS[name].default)
