"""Request validation: JSON in, typed values out, or an ApiError naming the field and the fix.

Pure functions (no I/O), so they are unit-tested directly and the fuzz tests can hammer them.
Strict where a silent guess would hurt: booleans are not numbers, unknown fields are refused
(a typo such as ``recomend_seen`` would otherwise be ignored), NaN and infinities are refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

from service.api.errors import ApiError, invalid
from service.api.jsonutil import JSONDecodeError, dumps, loads
from service.core.catalog import AttributeValue, Record
from service.core.catalog import encode as encode_record
from service.core.feedback import MAX_VARIANTS, Variant
from service.core.model import EVENT_TYPES, IMPRESSION, Event
from service.core.modelparams import LIMITS, Value
from service.core.rules import NO_RULES, Filter, Rules
from service.settings import Settings

MAX_TIMESTAMP = 1e11  # year 5138: anything above is a unit mistake (ms instead of s)
MAX_RATING = 1e9


class Interaction(NamedTuple):
    """A tuple: ``Store.recommend`` takes (item, timestamp, rating) tuples as they are."""

    item_id: str
    timestamp: float
    rating: float


@dataclass(frozen=True, slots=True)
class RecommendRequest:
    interactions: list[Interaction]  # in the order given
    k: int
    recommend_seen: bool
    session_id: str | None = None  # the visitor's session: its experiment variant, if any
    rules: Rules = NO_RULES


def parse_json(body: bytes) -> Any:
    if not body.strip():
        raise ApiError(400, "invalid_json", "The request body is empty: send a JSON object.",
                       "body")
    try:
        return loads(body)
    except JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"The body is not valid JSON ({exc}).",
                       "body") from None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def finite_number(value: Any, field: str, *, low: float, high: float) -> float:
    if not _is_number(value):
        raise invalid(field, f"{field} must be a number, not {_type_name(value)}.")
    number = float(value)
    if not math.isfinite(number) or not low <= number <= high:
        raise invalid(field, f"{field} must be a finite number between {low:g} and {high:g}.")
    return number


def timestamp(value: Any, field: str) -> float:
    return finite_number(value, field, low=0, high=MAX_TIMESTAMP)


def event_timestamp(value: Any, field: str, now: float, skew: float) -> float:
    """An event's time: never more than ``skew`` seconds ahead of the server's clock. A time in
    the future would rank an item or a session above every real one for as long as the clock
    takes to catch up (trending is a decayed sum over event times; an index keeps the newest)."""
    ts = timestamp(value, field)
    if ts > now + skew:
        raise invalid(field, f"{field} is {ts - now:.0f} s ahead of the server's clock; events "
                             f"may be at most {skew:g} s in the future. Send Unix seconds, or "
                             "leave timestamp out to use the time of receipt.")
    return ts


def rating(value: Any, field: str) -> float:
    return finite_number(value, field, low=-MAX_RATING, high=MAX_RATING)


def integer(value: Any, field: str, *, low: int, high: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON has one number type: 10.0 is the integer 10
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(field, f"{field} must be an integer from {low} to {high}, "
                             f"not {_type_name(value)}.")
    if not low <= value <= high:
        raise invalid(field, f"{field} must be from {low} to {high}; got {value}.")
    return value


INT_ID_RANGE = (-(2**63), 2**63 - 1)


def identifier(value: Any, field: str, settings: Settings, *, allow_int: bool = False) -> str:
    if allow_int and isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        value = int(value)  # 275776.0 is the integer 275776 in JSON (exact up to 2^53)
    if allow_int and isinstance(value, int) and not isinstance(value, bool):
        if not INT_ID_RANGE[0] <= value <= INT_ID_RANGE[1]:
            raise invalid(field, f"{field} as an integer must fit in 64 bits; send larger ids "
                                 "as strings.")
        value = str(value)
    if not isinstance(value, str):
        kinds = "a string or an integer" if allow_int else "a string"
        raise invalid(field, f"{field} must be {kinds}, not {_type_name(value)}.")
    if not value:
        raise invalid(field, f"{field} must not be empty.")
    if len(value) > settings.max_id_length:
        raise invalid(field, f"{field} is {len(value)} characters long; the limit is "
                             f"{settings.max_id_length}.")
    return value


def query_integer(raw: str | None, field: str, *, default: int, low: int, high: int) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise invalid(field, f"{field} must be an integer from {low} to {high}.") from None
    return integer(value, field, low=low, high=high)


def query_bool(raw: str | None, field: str, *, default: bool) -> bool:
    if raw is None:
        return default
    lowered = raw.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise invalid(field, f"{field} must be true or false.")


def _type_name(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "an array", dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _object(value: Any, field: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        where = field or "The body"
        raise invalid(field or "body", f"{where} must be a JSON object, not {_type_name(value)}.")
    for key in value:
        if key not in allowed:
            name = f"{field}.{key}" if field else key
            raise invalid(name, f"Unknown field {key!r}; allowed: {', '.join(allowed)}.")
    return value


_INTERACTION = ("timestamp", "rating")
_FIELDS = frozenset(_INTERACTION)
_PLAIN = (int, float)  # exact types: a bool is not a number here


def _interaction(item_id: str, value: Any, settings: Settings, now: float) -> Interaction:
    where = f"user_interactions.{item_id}"
    identifier(item_id, where, settings)
    fields = _object(value, where, _INTERACTION)
    ts = timestamp(fields["timestamp"], where + ".timestamp") if "timestamp" in fields else now
    rate = rating(fields["rating"], where + ".rating") if "rating" in fields else 1.0
    return Interaction(item_id, ts, rate)


def recommend_request(body: Any, settings: Settings, now: float) -> RecommendRequest:
    """The seed's POST /iid_recommend body."""
    obj = _object(body, "", ("user_interactions", "k", "recommend_seen", "session_id",
                             *RULE_FIELDS))
    if "user_interactions" not in obj:
        raise invalid("user_interactions",
                      "user_interactions is required: an object keyed by item id ({} for none).")
    raw = obj["user_interactions"]
    if not isinstance(raw, dict):
        raise invalid("user_interactions",
                      "user_interactions must be an object keyed by item id, "
                      f"not {_type_name(raw)}.")
    if len(raw) > settings.max_interactions:
        raise invalid("user_interactions",
                      f"user_interactions has {len(raw)} items; the limit is "
                      f"{settings.max_interactions}. Send the most recent ones.")
    interactions = []
    longest = settings.max_id_length
    for item_id, value in raw.items():
        # the common case in a few type checks; anything unusual takes the full path below,
        # which names the field and the fix
        if type(value) is dict and 0 < len(item_id) <= longest and value.keys() <= _FIELDS:
            ts = value.get("timestamp", now)
            rate = value.get("rating", 1.0)
            if type(ts) in _PLAIN and type(rate) in _PLAIN and 0 <= ts <= MAX_TIMESTAMP \
                    and -MAX_RATING <= rate <= MAX_RATING:  # NaN fails the comparisons
                interactions.append(Interaction(item_id, float(ts), float(rate)))
                continue
        interactions.append(_interaction(item_id, value, settings, now))
    k = integer(obj.get("k", 10), "k", low=1, high=settings.max_k)
    seen = obj.get("recommend_seen", False)
    if not isinstance(seen, bool):
        raise invalid("recommend_seen", "recommend_seen must be true or false.")
    session = identifier(obj["session_id"], "session_id", settings) \
        if obj.get("session_id") is not None else None
    return RecommendRequest(interactions, k, seen, session, rules(obj, settings))


MAX_EXCLUDE = 1000


def identifiers(value: Any, field: str, settings: Settings, *, limit: int,
                allow_int: bool = False) -> tuple[str, ...]:
    """An array of at most ``limit`` ids (or other short names: categories, tags)."""
    if not isinstance(value, list):
        raise invalid(field, f"{field} must be an array of strings, not {_type_name(value)}.")
    if len(value) > limit:
        raise invalid(field, f"{field} has {len(value)} entries; the limit is {limit}.")
    longest = settings.max_id_length
    if all(type(v) is str and 0 < len(v) <= longest for v in value):
        return tuple(value)  # the common case; anything else names the entry and the fix
    return tuple(identifier(v, f"{field}[{n}]", settings, allow_int=allow_int)
                 for n, v in enumerate(value))


def exclusions(value: Any, field: str, settings: Settings) -> tuple[str, ...]:
    """Item ids never to return (a cart, what the page already shows)."""
    return identifiers(value, field, settings, limit=MAX_EXCLUDE, allow_int=True)


# --- rules -----------------------------------------------------------------------------------
RULE_FIELDS = ("exclude", "filter", "max_per_category", "explain")
FILTER_FIELDS = ("categories", "tags", "price", "attributes")
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
        raise invalid("explain", f"explain must be true or false, not {_type_name(explain)}.")
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


def _attribute_value(value: Any, field: str) -> str | int | float | bool:
    """One attribute value, in a record or in a filter: text, a finite number or a boolean.
    An integer stays one (``size: 2`` reads back as 2, not 2.0); rules compare numbers as
    numbers whatever their type (``core.rules.attribute_key``)."""
    if isinstance(value, str) and len(value) > MAX_TEXT:
        raise invalid(field, f"{field} is {len(value)} characters long; the limit is "
                             f"{MAX_TEXT}.")
    if isinstance(value, bool | str):
        return value
    if _is_number(value):
        number = finite_number(value, field, low=-1e15, high=1e15)
        return value if isinstance(value, int) else number
    raise invalid(field, f"{field} must be a string, a number or a boolean, not "
                         f"{_type_name(value)}.")


def rule_filter(value: Any, field: str, settings: Settings) -> Filter:
    """``filter``: every condition given must hold (SPEC, "Catalogue and business rules")."""
    obj = _object(value, field, FILTER_FIELDS)
    categories = _values(obj["categories"], f"{field}.categories", settings) \
        if "categories" in obj else None
    tags = _values(obj["tags"], f"{field}.tags", settings) if "tags" in obj else None
    low = high = None
    if "price" in obj:
        where = f"{field}.price"
        price = _object(obj["price"], where, ("min", "max"))
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
            raise invalid(where, f"{where} must be an object, not {_type_name(given)}.")
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
                values = tuple(_attribute_value(v, f"{at}[{n}]") for n, v in enumerate(wanted))
            else:
                values = (_attribute_value(wanted, at),)
            attributes.append((name, values))
    return Filter(categories, tags, low, high, tuple(attributes))


EVENT_FIELDS = ("session_id", "item_id", "timestamp", "type", "rating", "recommendation_id")
MAX_RECOMMENDATION_ID = 64
_RID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def recommendation_id(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise invalid(field, f"{field} must be a string (an answer's recommendation_id), not "
                             f"{_type_name(value)}.")
    if not 0 < len(value) <= MAX_RECOMMENDATION_ID or not _RID_CHARS.issuperset(value):
        raise invalid(field, f"{field} must be the recommendation_id of an answer, as given "
                             "(letters, digits, - and _).")
    return value


def event(value: Any, field: str, settings: Settings, now: float) -> Event:
    prefix = f"{field}." if field else ""
    obj = _object(value, field, EVENT_FIELDS)
    for required in ("session_id", "item_id"):
        if required not in obj:
            raise invalid(prefix + required, f"{prefix}{required} is required.")
    session = identifier(obj["session_id"], prefix + "session_id", settings)
    item = identifier(obj["item_id"], prefix + "item_id", settings, allow_int=True)
    ts = event_timestamp(obj["timestamp"], prefix + "timestamp", now, settings.max_clock_skew) \
        if "timestamp" in obj else now
    kind = obj.get("type", "view")
    if kind not in EVENT_TYPES:
        raise invalid(prefix + "type", f"{prefix}type must be one of {', '.join(EVENT_TYPES)}.")
    rate = rating(obj["rating"], prefix + "rating") if obj.get("rating") is not None else None
    rid = recommendation_id(obj["recommendation_id"], prefix + "recommendation_id") \
        if obj.get("recommendation_id") is not None else None
    if kind == IMPRESSION and rid is None:
        raise invalid(prefix + "recommendation_id",
                      f"{prefix}recommendation_id is required with type impression: the "
                      "recommendation_id of the answer whose list showed the item.")
    return Event(session, item, ts, kind, rate, rid)


def _batch(body: Any, name: str, what: str, settings: Settings) -> list[Any]:
    """``body[name]``, the only field: an array of 1 to ``max_batch`` entries."""
    _object(body, "", (name,))
    if name not in body:
        raise invalid(name, f"{name} is required: an array of {what}s.")
    batch = body[name]
    if not isinstance(batch, list):
        raise invalid(name, f"{name} must be an array, not {_type_name(batch)}.")
    if not batch:
        raise invalid(name, f"{name} must hold at least one {what}.")
    if len(batch) > settings.max_batch:
        raise invalid(name, f"{name} has {len(batch)} entries; the limit is "
                            f"{settings.max_batch}. Split the batch.")
    return batch


def events(body: Any, settings: Settings, now: float) -> list[Event]:
    """One event object, or ``{"events": [...]}``; a batch is valid only if every event is."""
    if isinstance(body, dict) and "events" in body:
        batch = _batch(body, "events", "event", settings)
        return [event(value, f"events[{n}]", settings, now) for n, value in enumerate(batch)]
    return [event(body, "", settings, now)]


# --- catalogue records ------------------------------------------------------------------------
ITEM_FIELDS = ("id", "name", "categories", "available", "price", "tags", "attributes")
MAX_LIST = 100  # categories, tags, attributes per record
MAX_TEXT = 1000  # a name or an attribute's text
MAX_RECORD_BYTES = 16 << 10
MAX_PRICE = 1e12


def _attributes(value: Any, field: str, settings: Settings) -> dict[str, AttributeValue]:
    if not isinstance(value, dict):
        raise invalid(field, f"{field} must be an object, not {_type_name(value)}.")
    if len(value) > MAX_LIST:
        raise invalid(field, f"{field} has {len(value)} entries; the limit is {MAX_LIST}.")
    out: dict[str, AttributeValue] = {}
    for name, v in value.items():
        where = f"{field}.{name}"
        identifier(name, where, settings)
        out[name] = _attribute_value(v, where)
    return out


def item_record(value: Any, field: str, settings: Settings, item_id: str | None = None
                ) -> Record:
    """A catalogue record; ``item_id`` is the path's id (then ``id`` is optional in the
    body and must agree with it)."""
    prefix = f"{field}." if field else ""
    obj = _object(value, field, ITEM_FIELDS)
    if "id" in obj:
        given = identifier(obj["id"], prefix + "id", settings, allow_int=True)
        if item_id is not None and given != item_id:
            raise invalid(prefix + "id", f"{prefix}id is {given!r} but the path names "
                                         f"{item_id!r}; leave it out or make them agree.")
        item_id = given
    if item_id is None:
        raise invalid(prefix + "id", f"{prefix}id is required.")
    name = obj.get("name")
    if name is not None and (not isinstance(name, str) or len(name) > MAX_TEXT):
        raise invalid(prefix + "name", f"{prefix}name must be a string of at most {MAX_TEXT} "
                                       "characters.")
    available = obj.get("available", True)
    if not isinstance(available, bool):
        raise invalid(prefix + "available", f"{prefix}available must be true or false, not "
                                            f"{_type_name(available)}.")
    price = obj.get("price")
    if price is not None:
        price = finite_number(price, prefix + "price", low=0.0, high=MAX_PRICE)
    categories = identifiers(obj.get("categories", []), prefix + "categories", settings,
                             limit=MAX_LIST)
    tags = identifiers(obj.get("tags", []), prefix + "tags", settings, limit=MAX_LIST)
    record = Record(item_id, name, categories, available, price, tags,
                    _attributes(obj.get("attributes", {}), prefix + "attributes", settings))
    if len(encode_record(record)) > MAX_RECORD_BYTES:
        raise invalid(field or "body", f"The record of {item_id!r} is larger than "
                                       f"{MAX_RECORD_BYTES} bytes; keep the catalogue to what "
                                       "rules need.")
    return record


def item_records(body: Any, settings: Settings) -> list[Record]:
    """``{"items": [...]}``; valid only if every record is (nothing is stored otherwise)."""
    batch = _batch(body, "items", "record", settings)
    return [item_record(value, f"items[{n}]", settings) for n, value in enumerate(batch)]


# --- experiments ----------------------------------------------------------------------------
def experiment_variants(body: Any, settings: Settings) -> tuple[Variant, ...]:
    """``PUT /admin/experiments/{name}``: the variants, in the order given (the first is what
    the report compares the others with)."""
    obj = _object(body, "", ("variants",))
    raw = obj.get("variants")
    if not isinstance(raw, dict) or not 2 <= len(raw) <= MAX_VARIANTS:
        raise invalid("variants", "variants must be an object of 2 to "
                                  f"{MAX_VARIANTS} variants by name, for example "
                                  '{"A": {"weight": 1, "params": {}}, "B": {"weight": 1, '
                                  '"params": {"position_decay": 1.0}}}.')
    variants = []
    for name, value in raw.items():
        where = f"variants.{name}"
        if not 0 < len(name) <= MAX_VARIANT_NAME:
            raise invalid(where, f"A variant's name must be 1 to {MAX_VARIANT_NAME} characters.")
        fields = _object(value, where, ("weight", "params"))
        weight = finite_number(fields.get("weight", 1), where + ".weight", low=0, high=1e6)
        if weight <= 0:
            raise invalid(where + ".weight", f"{where}.weight must be above 0.")
        values = _param_values(fields.get("params", {}), where + ".params", settings)
        variants.append(Variant(name, weight, values))
    return tuple(variants)


MAX_VARIANT_NAME = 64


def _param_values(raw: Any, field: str, settings: Settings) -> dict[str, Value]:
    """Model parameter values, each checked against its limits."""
    if not isinstance(raw, dict):
        raise invalid(field, f"{field} must be an object of parameter values, not "
                             f"{_type_name(raw)}.")
    values: dict[str, Value] = {}
    for name, value in raw.items():
        limit = LIMITS.get(name)
        if limit is None:
            raise invalid(f"{field}.{name}", f"Unknown parameter {name!r}; the parameters are "
                                             f"{', '.join(LIMITS)}.")
        checked = limit.check(value)
        if isinstance(checked, str):
            raise invalid(f"{field}.{name}", f"{name} {checked} ({limit.meaning}).")
        if name == "index_cap" and checked > settings.index_cap:
            raise invalid(f"{field}.{name}",
                          f"index_cap must be at most {settings.index_cap}: the indexes hold "
                          "no more (raise --index-cap on the workers and serve first).")
        values[name] = checked
    return values


# --- the model record ---------------------------------------------------------------------------
def model_change(body: Any, settings: Settings) -> tuple[dict[str, Value], bool | None]:
    """``PUT /admin/model``: the parameter values to set, and whether to pin them (None: their
    pins unchanged)."""
    obj = _object(body, "", ("params", "pin"))
    if "params" not in obj:
        raise invalid("params", 'params is required: an object of parameter values, for '
                                'example {"neighbours": 100}.')
    raw = obj["params"]
    if not isinstance(raw, dict) or not raw:
        raise invalid("params", "params must be an object naming at least one parameter, "
                                f"not {_type_name(raw) if not isinstance(raw, dict) else '{}'}.")
    values = _param_values(raw, "params", settings)
    pin = obj.get("pin")
    if pin is not None and not isinstance(pin, bool):
        raise invalid("pin", f"pin must be true or false, not {_type_name(pin)}.")
    return values, pin
