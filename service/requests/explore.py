"""A placement's ``explore``: ``{"share": 0.1, "max_age_days": 7}``, both optional (those are
the defaults), or ``Invalid`` naming the field (``explore.share``, ...)."""

from __future__ import annotations

import math
from typing import Any

from service.core.coldstart import (
    DEFAULT_MAX_AGE_DAYS,
    DEFAULT_SHARE,
    MAX_AGE_DAYS,
    MIN_AGE_DAYS,
    Explore,
)
from service.requests.values import finite_number, invalid, is_number, json_object, type_name

EXPLORE_FIELDS = ("share", "max_age_days")

EXPLORE_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "description": "Slots reserved for new items that fit the session's categories.",
    "properties": {
        "share": {"type": "number", "minimum": 0, "maximum": 1, "default": DEFAULT_SHARE,
                  "description": "The share of k reserved (rounded half up; at least one "
                                 "slot from k=4 when above 0)."},
        "max_age_days": {"type": "number", "minimum": MIN_AGE_DAYS, "maximum": MAX_AGE_DAYS,
                         "default": DEFAULT_MAX_AGE_DAYS,
                         "description": "An item is new this long after its record first "
                                        "appeared (while learned in few sessions)."},
    },
}
"""For the placement body's JSON Schema (``requests/schemas.py``)."""


def explore_config(value: Any, field: str = "explore") -> Explore:
    """``value`` as an ``Explore``: an object of ``EXPLORE_FIELDS``, ``share`` within [0, 1],
    ``max_age_days`` within [``MIN_AGE_DAYS`` (an hour), ``MAX_AGE_DAYS``]."""
    obj = json_object(value, field, EXPLORE_FIELDS)
    share = finite_number(obj.get("share", DEFAULT_SHARE), f"{field}.share", low=0, high=1)
    age = obj.get("max_age_days", DEFAULT_MAX_AGE_DAYS)
    where = f"{field}.max_age_days"
    if not is_number(age):
        raise invalid(where, f"{where} must be a number of days, not {type_name(age)}.")
    if not math.isfinite(float(age)) or not MIN_AGE_DAYS <= float(age) <= MAX_AGE_DAYS:
        raise invalid(where, f"{where} must be from 1/24 (an hour) to {MAX_AGE_DAYS:g} days; "
                             f"got {age}.")
    return Explore(share, float(age))
