"""A request's rules (``exclude``, ``filter``, ``max_per_category``, ``explain``), from a body or
a query; the parsed filters a process keeps, bounded in bytes.
"""

from __future__ import annotations

from typing import Any

from service.core.rules import Filter, Rules
from service.requests.jsonutil import JSONDecodeError, dumps, loads
from service.requests.values import (
    MAX_PRICE,
    attribute_value,
    exclusions,
    finite_number,
    identifier,
    identifiers,
    integer,
    invalid,
    json_object,
    query_bool,
    query_integer,
    type_name,
)
from service.settings import Settings

# --- rules -----------------------------------------------------------------------------------
RULE_FIELDS = ("exclude", "filter", "max_per_category", "explain")
FILTER_FIELDS = ("categories", "tags", "price", "attributes")
PRICE_FIELDS = ("min", "max")
MAX_FILTER_VALUES = 100  # categories, tags, attributes or one attribute's values in a filter
MAX_ATTRIBUTE_VALUES = 1000
"""Attribute values in one filter, all attributes together: 100 attributes of 100 values each
took ~9 ms to check and compile, on the event loop, for every request sending a new one."""


_FILTERS: dict[tuple[int, bytes | str], Filter] = {}
"""Valid filters by the id length limit they were checked against and their text: a shop sends
the same few filters (one per category page) on most requests, and checking one costs more
than finding it. Only short texts are kept, and the whole is cleared when it would pass
``FILTER_CACHE_BYTES``: a client sending large distinct filters (a megabyte each is valid) grew
a cache bounded by count alone by a gigabyte per thousand requests."""
FILTER_CACHE_BYTES = 16 << 20
"""What the cache may hold, counted as ``filter_cost`` of each entry."""
CACHED_FILTER_TEXT = 4096
"""The longest filter text cached (a category page's filter is a few dozen bytes)."""
_cached_bytes = 0


def filter_cost(text: bytes | str) -> int:
    """The memory one cached filter takes, bounded from above: its text, the parsed filter's
    tuples, strings and sets of posting keys (measured at about fifty times a long filter's
    text under tracemalloc) and the entry's fixed part."""
    return 64 * len(text) + 2048


def _known_filter(text: bytes | str, value: Any, settings: Settings) -> Filter:
    """``rule_filter`` of ``value``, whose JSON text is ``text``, through ``_FILTERS``."""
    global _cached_bytes
    key = (settings.max_id_length, text)
    found = _FILTERS.get(key)
    if found is None:
        found = rule_filter(value, "filter", settings)
        if len(text) <= CACHED_FILTER_TEXT:
            if _cached_bytes + filter_cost(text) > FILTER_CACHE_BYTES:
                _FILTERS.clear()
                _cached_bytes = 0
            _FILTERS[key] = found
            _cached_bytes += filter_cost(text)
    return found


def rules(obj: dict[str, Any], settings: Settings) -> Rules:
    """The rules of a request body (``RULE_FIELDS``; already checked to be the only others)."""
    explain = obj.get("explain", False)
    if not isinstance(explain, bool):
        raise invalid("explain", f"explain must be true or false, not {type_name(explain)}.")
    cap = obj.get("max_per_category")
    return Rules(
        exclusions(obj["exclude"], "exclude", settings) if "exclude" in obj else (),
        _known_filter(dumps(obj["filter"]), obj["filter"], settings) if "filter" in obj
        else None,
        integer(cap, "max_per_category", low=1, high=settings.max_k) if cap is not None
        else None,
        explain)


def query_rules(query: Any, settings: Settings) -> Rules:
    """The same rules as query parameters (``query``: a request's multidict): ``exclude``
    repeated, ``filter`` as URL-encoded JSON."""
    raw_filter = query.get("filter")
    found = None
    if raw_filter is not None:
        found = _FILTERS.get((settings.max_id_length, raw_filter))
        if found is None:
            try:
                parsed = loads(raw_filter)
            except JSONDecodeError as exc:
                raise invalid("filter", f"filter must be a URL-encoded JSON object ({exc}).") \
                    from None
            found = _known_filter(raw_filter, parsed, settings)
    cap = query.get("max_per_category")
    return Rules(
        exclusions(query.getall("exclude", []), "exclude", settings),
        found,
        query_integer(cap, "max_per_category", default=1, low=1, high=settings.max_k)
        if cap is not None else None,
        query_bool(query.get("explain"), "explain", default=False))


def _values(value: Any, field: str, settings: Settings) -> tuple[str, ...]:
    names = identifiers(value, field, settings, limit=MAX_FILTER_VALUES)
    if not names:
        raise invalid(field, f"{field} must hold at least one value (leave it out to allow "
                             "any).")
    return names


def rule_filter(value: Any, field: str, settings: Settings) -> Filter:
    """``filter``: every condition given must hold (README, "Rules and explanations")."""
    obj = json_object(value, field, FILTER_FIELDS)
    categories = _values(obj["categories"], f"{field}.categories", settings) \
        if "categories" in obj else None
    tags = _values(obj["tags"], f"{field}.tags", settings) if "tags" in obj else None
    low = high = None
    if "price" in obj:
        where = f"{field}.price"
        price = json_object(obj["price"], where, PRICE_FIELDS)
        if not price:
            raise invalid(where, f"{where} needs min, max or both.")
        if "min" in price:
            low = finite_number(price["min"], where + ".min", low=0.0, high=MAX_PRICE)
        if "max" in price:
            high = finite_number(price["max"], where + ".max", low=0.0, high=MAX_PRICE)
        if low is not None and high is not None and low > high:
            raise invalid(where, f"{where}.min ({low:g}) is above {where}.max ({high:g}): no "
                                 "price can satisfy both.")
    attributes: list[tuple[str, tuple[str | float | bool, ...]]] = []
    if "attributes" in obj:
        where = f"{field}.attributes"
        given = obj["attributes"]
        if not isinstance(given, dict):
            raise invalid(where, f"{where} must be an object, not {type_name(given)}.")
        if not given:
            raise invalid(where, f"{where} must name at least one attribute (leave it out "
                                 "to allow any).")
        if len(given) > MAX_FILTER_VALUES:
            raise invalid(where, f"{where} has {len(given)} entries; the limit is "
                                 f"{MAX_FILTER_VALUES}.")
        total = sum(len(w) if isinstance(w, list) else 1 for w in given.values())
        if total > MAX_ATTRIBUTE_VALUES:
            raise invalid(where, f"{where} lists {total} values in all; the limit is "
                                 f"{MAX_ATTRIBUTE_VALUES}.")
        for name, wanted in given.items():
            at = f"{where}.{name}"
            identifier(name, at, settings)
            if isinstance(wanted, list):
                if not wanted or len(wanted) > MAX_FILTER_VALUES:
                    raise invalid(at, f"{at} must list 1 to {MAX_FILTER_VALUES} values; got "
                                      f"{len(wanted)}.")
                values = tuple(attribute_value(v, f"{at}[{n}]") for n, v in enumerate(wanted))
            else:
                values = (attribute_value(wanted, at),)
            attributes.append((name, values))
    return Filter(categories, tags, low, high, tuple(attributes))
