"""The body of ``POST /events``: one event or a batch.

The body's shape and limits are one msgspec definition (``_decoder``): it decodes and checks a
batch in C, several times faster than walking the parsed JSON in Python (the most frequent
public body, and a batch holds up to ``max_batch`` events), and a refusal still names the
field (``events[3].item_id``). What msgspec cannot state is checked after it: an integer id's
range, a timestamp against the server's clock, an impression's answer.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Annotated, Any, Literal

import msgspec

from service.core.model import EVENT_TYPES, IMPRESSION, Event
from service.requests.jsonutil import JSONDecodeError, loads
from service.requests.values import (
    MAX_RATING,
    MAX_TIMESTAMP,
    Invalid,
    identifier,
    invalid,
    not_json,
    require_body,
)
from service.settings import Settings

EVENT_FIELDS = ("session_id", "item_id", "timestamp", "type", "rating", "recommendation_id")
BATCH_FIELD = "events"
MAX_RECOMMENDATION_ID = 64
_ID_CHARS = "A-Za-z0-9_-"
RECOMMENDATION_ID_PATTERN = f"^[{_ID_CHARS}]+$"
"""The JSON Schema's (ECMA-262: ``$`` is the end of the text)."""
_RECOMMENDATION_ID_RE = f"^[{_ID_CHARS}]+\\Z"
"""The decoder's: Python's ``$`` also matches before a final newline."""
UNSET = msgspec.UNSET
EventType = Literal[EVENT_TYPES]  # type: ignore[valid-type]


@lru_cache(maxsize=8)
def _decoder(max_id_length: int, max_batch: int) -> msgspec.json.Decoder[Any]:
    """The body's decoder for one set of limits: the envelope, which is one event or
    ``{"events": [...]}``, a batch's events with ``session_id`` and ``item_id`` required."""
    ident = Annotated[str, msgspec.Meta(min_length=1, max_length=max_id_length)]
    timestamp = Annotated[float, msgspec.Meta(ge=0, le=MAX_TIMESTAMP)]
    rating = Annotated[float, msgspec.Meta(ge=-MAX_RATING, le=MAX_RATING)]
    answer = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_RECOMMENDATION_ID,
                                         pattern=_RECOMMENDATION_ID_RE)]

    # built with defstruct: the limits are the settings', known only here
    item = ident | int | float
    kinds: list[tuple[str, Any, Any]] = [
        ("timestamp", timestamp, UNSET), ("type", EventType, "view"),
        ("rating", rating | None, None), ("recommendation_id", answer | None, None)]
    batch_event = msgspec.defstruct(
        "BatchEvent", [("session_id", ident), ("item_id", item),
                       *[(name, kind | msgspec.UnsetType if default is UNSET else kind, default)
                         for name, kind, default in kinds]],
        forbid_unknown_fields=True)
    # in the envelope every event field is UNSET when absent: beside "events" none may be given
    envelope = msgspec.defstruct(
        "Envelope", [("session_id", ident | msgspec.UnsetType, UNSET),
                     ("item_id", item | msgspec.UnsetType, UNSET),
                     *[(name, kind | msgspec.UnsetType, UNSET) for name, kind, _ in kinds],
                     (BATCH_FIELD, Annotated[list[batch_event],  # type: ignore[valid-type]
                                             msgspec.Meta(min_length=1, max_length=max_batch)]
                      | msgspec.UnsetType, UNSET)],
        forbid_unknown_fields=True)
    assert tuple(batch_event.__struct_fields__) == EVENT_FIELDS
    return msgspec.json.Decoder(envelope)


def event_batch(body: bytes, settings: Settings, now: float) -> list[Event]:
    """One event object, or ``{"events": [...]}``; a batch is valid only if every event is."""
    require_body(body)
    try:
        got = _decoder(settings.max_id_length, settings.max_batch).decode(body)
    except msgspec.ValidationError as exc:
        raise refusal(str(exc), body) from None
    except msgspec.DecodeError as exc:
        raise not_json(exc) from None
    if got.events is UNSET:
        for required in ("session_id", "item_id"):
            if getattr(got, required) is UNSET:
                raise invalid(required, f"{required} is required.")
        return [_event(got, "", settings, now)]
    for name in EVENT_FIELDS:
        if getattr(got, name) is not UNSET:
            raise invalid(name, f"Unknown field {name!r} beside events; allowed: events.")
    return [_event(ev, f"events[{n}].", settings, now) for n, ev in enumerate(got.events)]


def _event(ev: Any, prefix: str, settings: Settings, now: float) -> Event:
    item = ev.item_id
    if type(item) is not str:  # a JSON number: its range, and 275776.0 as 275776
        item = identifier(item, prefix + "item_id", settings, allow_int=True)
    ts = ev.timestamp
    skew = settings.max_clock_skew
    if ts is UNSET:
        ts = now
    elif ts > now + skew:
        field = prefix + "timestamp"
        raise invalid(field, f"{field} is {ts - now:.0f} s ahead of the server's clock; events "
                             f"may be at most {skew:g} s in the future. Send Unix seconds, or "
                             "leave timestamp out to use the time of receipt.")
    rid = ev.recommendation_id if ev.recommendation_id is not UNSET else None
    kind = ev.type if ev.type is not UNSET else "view"
    if kind == IMPRESSION and rid is None:
        field = prefix + "recommendation_id"
        raise invalid(field, f"{field} is required with type impression: the "
                             "recommendation_id of the answer whose list showed the item.")
    rating = ev.rating
    return Event(ev.session_id, item, float(ts), kind,
                 None if rating is None or rating is UNSET else float(rating), rid)


_PATH = re.compile(r"\$(?:\.[a-z_]+|\[\d+\])*")
"""A path msgspec writes: field names (ours, never the client's) and indexes."""
_LONGEST_NAME = 200  # an unknown key is quoted back at most this long


def refusal(message: str, body: bytes) -> Invalid:
    """msgspec's refusal as an ``Invalid`` naming the field as the API spells it
    (``events[3].item_id``; the body itself: ``body``). The path is taken from the end of the
    message, where msgspec writes it, and only if it is one msgspec could write; an unknown
    key the message cannot place (msgspec quotes the client's text as it is) is found in the
    body itself."""
    what, sep, tail = message.rpartition(" - at `")
    path = tail[:-1] if sep and tail.endswith("`") else ""
    if not sep or not _PATH.fullmatch(path):
        what, path = message, "$"
    field = path.removeprefix("$").removeprefix(".")
    if what.startswith(_MISSING):  # the name is ours
        name = what[len(_MISSING):-1]
        where = f"{field}.{name}" if field else name
        return invalid(where, f"{where} is required.")
    if what.startswith(_UNKNOWN):
        if not field and what.count("`") == 2:  # a key of the body's own, quoted as it is
            return _unknown("", what[len(_UNKNOWN):-1])
        # inside an event, or a key holding backticks: msgspec quotes the client's key as it
        # is, so a key can spell a path ("x` - at `$.events[0]") and the message cannot say
        return _structural(body)
    if what.startswith("Invalid enum value"):
        return invalid(field, f"{field} must be one of {', '.join(EVENT_TYPES)}.")
    if "matching regex" in what:  # the recommendation id's alphabet
        return invalid(field, f"{field} must be the recommendation_id of an answer, as given "
                              "(letters, digits, - and _).")
    for kind, word in _JSON_WORDS.items():
        what = what.replace(kind, word)
    if not field:
        return invalid("body", f"The body must be a JSON object ({what}).")
    return invalid(field, f"{field}: {what}.")


_MISSING = "Object missing required field `"
_UNKNOWN = "Object contains unknown field `"


def _unknown(where: str, key: str) -> Invalid:
    """An unknown field ``key`` in the object at ``where`` (the body: "")."""
    name = key if len(key) <= _LONGEST_NAME else key[:_LONGEST_NAME] + "…"
    batch = BATCH_FIELD if not where else ""
    listed = ", ".join(EVENT_FIELDS) + (f", or {batch} alone" if batch else "")
    return invalid(f"{where}.{name}" if where else name,
                   f"Unknown field {name!r}; allowed: {listed}.")


def _structural(body: bytes) -> Invalid:
    """The unknown field msgspec's message cannot place, found by walking the parsed body in
    its order (orjson's parse, the cheapest: a key given twice counts once here, so such a
    body may be answered naming the body instead)."""
    try:
        value = loads(body)
    except JSONDecodeError:  # a number past a double's range after the field, say
        return invalid("body", "The body holds a field no event has.")
    if isinstance(value, dict):
        for key, inside in value.items():  # in the body's order, as the decoder reads it
            if key not in EVENT_FIELDS and key != BATCH_FIELD:
                return _unknown("", key)
            if key == BATCH_FIELD and isinstance(inside, list):
                for n, entry in enumerate(inside):
                    for name in entry if isinstance(entry, dict) else ():
                        if name not in EVENT_FIELDS:
                            return _unknown(f"{BATCH_FIELD}[{n}]", name)
    return invalid("body", "The body holds a field no event has.")


_JSON_WORDS = {"`str`": "a string", "`int`": "an integer", "`float`": "a number",
               "`bool`": "a boolean", "`null`": "null", "`array`": "an array",
               "`object`": "an object"}
