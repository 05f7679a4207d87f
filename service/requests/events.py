"""The body of ``POST /events``: one event or a batch.

The body's shape and limits are one msgspec definition (``_Types``): it decodes and checks a
batch in C, several times faster than walking the parsed JSON in Python (the most frequent
public body, and a batch holds up to ``max_batch`` events), and a refusal still names the
field (``events[3].item_id``). What msgspec cannot state is checked after it: an integer id's
range, a timestamp against the server's clock, an impression's answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any, Literal

import msgspec

from service.core.model import EVENT_TYPES, IMPRESSION, Event
from service.requests.values import (
    INT_ID_RANGE,
    MAX_RATING,
    MAX_TIMESTAMP,
    Invalid,
    invalid,
)
from service.settings import Settings

EVENT_FIELDS = ("session_id", "item_id", "timestamp", "type", "rating", "recommendation_id")
BATCH_FIELD = "events"
MAX_RECOMMENDATION_ID = 64
RECOMMENDATION_ID_PATTERN = "^[A-Za-z0-9_-]+$"
UNSET = msgspec.UNSET
EventType = Literal[EVENT_TYPES]  # type: ignore[valid-type]


@dataclass(frozen=True)
class _Types:
    """The body's types for one set of limits: a batch's events (``session_id`` and ``item_id``
    required) and the envelope, which is either one event or ``{"events": [...]}``."""

    envelope: msgspec.json.Decoder[Any]
    event: type


@lru_cache(maxsize=8)
def _types(max_id_length: int, max_batch: int) -> _Types:
    ident = Annotated[str, msgspec.Meta(min_length=1, max_length=max_id_length)]
    timestamp = Annotated[float, msgspec.Meta(ge=0, le=MAX_TIMESTAMP)]
    rating = Annotated[float, msgspec.Meta(ge=-MAX_RATING, le=MAX_RATING)]
    answer = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_RECOMMENDATION_ID,
                                         pattern=RECOMMENDATION_ID_PATTERN)]

    # built with defstruct: the limits are the settings', known only here
    item = ident | int | float
    fields: list[tuple[str, Any, Any]] = [
        ("timestamp", timestamp | msgspec.UnsetType, UNSET),
        ("type", EventType, "view"),
        ("rating", rating | None, None),
        ("recommendation_id", answer | None, None)]
    batch_event = msgspec.defstruct(
        "BatchEvent", [("session_id", ident), ("item_id", item), *fields],
        forbid_unknown_fields=True)
    envelope = msgspec.defstruct(
        "Envelope", [("session_id", ident | msgspec.UnsetType, UNSET),
                     ("item_id", item | msgspec.UnsetType, UNSET), *fields,
                     (BATCH_FIELD, Annotated[list[batch_event],  # type: ignore[valid-type]
                                             msgspec.Meta(min_length=1, max_length=max_batch)]
                      | msgspec.UnsetType, UNSET)],
        forbid_unknown_fields=True)
    assert tuple(batch_event.__struct_fields__) == EVENT_FIELDS
    return _Types(msgspec.json.Decoder(envelope), batch_event)


def event_batch(body: bytes, settings: Settings, now: float) -> list[Event]:
    """One event object, or ``{"events": [...]}``; a batch is valid only if every event is."""
    if not body.strip():
        raise Invalid("body", "The request body is empty: send a JSON object.", "invalid_json")
    try:
        got = _types(settings.max_id_length, settings.max_batch).envelope.decode(body)
    except msgspec.ValidationError as exc:
        raise refusal(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise Invalid("body", f"The body is not valid JSON ({exc}).", "invalid_json") from None
    skew = settings.max_clock_skew
    if got.events is UNSET:
        for required in ("session_id", "item_id"):
            if getattr(got, required) is UNSET:
                raise invalid(required, f"{required} is required.")
        return [_event(got, "", now, skew)]
    for name in EVENT_FIELDS:
        if name in got.__struct_fields__ and _given(got, name):
            raise invalid(name, f"Unknown field {name!r} beside events; allowed: events.")
    return [_event(ev, f"events[{n}].", now, skew) for n, ev in enumerate(got.events)]


def _given(got: Any, name: str) -> bool:
    value = getattr(got, name)
    return value is not UNSET and not (name == "type" and value == "view") \
        and not (name in ("rating", "recommendation_id") and value is None)


def _event(ev: Any, prefix: str, now: float, skew: float) -> Event:
    item = ev.item_id
    if type(item) is not str:
        item = _integer_id(item, prefix + "item_id")
    ts = ev.timestamp
    if ts is UNSET:
        ts = now
    elif ts > now + skew:
        field = prefix + "timestamp"
        raise invalid(field, f"{field} is {ts - now:.0f} s ahead of the server's clock; events "
                             f"may be at most {skew:g} s in the future. Send Unix seconds, or "
                             "leave timestamp out to use the time of receipt.")
    rid = ev.recommendation_id
    if ev.type == IMPRESSION and rid is None:
        field = prefix + "recommendation_id"
        raise invalid(field, f"{field} is required with type impression: the "
                             "recommendation_id of the answer whose list showed the item.")
    rating = ev.rating
    return Event(ev.session_id, item, float(ts), ev.type,
                 None if rating is None else float(rating), rid)


def _integer_id(value: int | float, field: str) -> str:
    """An id sent as a JSON number: a whole number that fits in 64 bits (275776.0 is the
    integer 275776: exact up to 2^53), stored as its decimal string."""
    if isinstance(value, bool):
        raise invalid(field, f"{field} must be a string or an integer, not a boolean.")
    if isinstance(value, float):
        if not value.is_integer() or abs(value) > 2**53:
            raise invalid(field, f"{field} must be a string or an integer, not a number.")
        value = int(value)
    if not INT_ID_RANGE[0] <= value <= INT_ID_RANGE[1]:
        raise invalid(field, f"{field} as an integer must fit in 64 bits; send larger ids as "
                             "strings.")
    return str(value)


_AT = re.compile(r"^(?P<what>.*?)(?: - at `(?P<path>[^`]*)`)?$", re.DOTALL)
_NAMED = re.compile(r"^Object (?:contains unknown|missing required) field `(?P<name>[^`]*)`")


def refusal(message: str) -> Invalid:
    """msgspec's refusal as an ``Invalid`` naming the field as the API spells it
    (``events[3].item_id``; the body itself: ``body``)."""
    parts = _AT.match(message)
    assert parts is not None  # the pattern matches any text
    what, path = parts["what"], (parts["path"] or "$")
    field = path.removeprefix("$").removeprefix(".")
    named = _NAMED.match(what)
    if named:
        field = f"{field}.{named['name']}" if field else named["name"]
        if what.startswith("Object missing"):
            return invalid(field, f"{field} is required.")
        allowed = ", ".join(EVENT_FIELDS) + (f", or {BATCH_FIELD} alone" if "." not in field
                                             and "[" not in field else "")
        return invalid(field, f"Unknown field {named['name']!r}; allowed: {allowed}.")
    if what.startswith("Invalid enum value"):
        return invalid(field, f"{field} must be one of {', '.join(EVENT_TYPES)}.")
    for kind, word in _JSON_WORDS.items():
        what = what.replace(kind, word)
    if not field:
        return invalid("body", f"The body must be a JSON object ({what}).")
    return invalid(field, f"{field}: {what}.")


_JSON_WORDS = {"`str`": "a string", "`int`": "an integer", "`float`": "a number",
               "`bool`": "a boolean", "`null`": "null", "`array`": "an array",
               "`object`": "an object"}
