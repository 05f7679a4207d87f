"""The body of ``POST /events``: one event or a batch.
"""

from __future__ import annotations

from typing import Any

from service.core.model import EVENT_TYPES, IMPRESSION, Event
from service.requests.values import (
    batch_of,
    event_timestamp,
    identifier,
    invalid,
    json_object,
    rating,
    type_name,
)
from service.settings import Settings

EVENT_FIELDS = ("session_id", "item_id", "timestamp", "type", "rating", "recommendation_id")
MAX_RECOMMENDATION_ID = 64
_RID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def recommendation_id(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise invalid(field, f"{field} must be a string (an answer's recommendation_id), not "
                             f"{type_name(value)}.")
    if not 0 < len(value) <= MAX_RECOMMENDATION_ID or not _RID_CHARS.issuperset(value):
        raise invalid(field, f"{field} must be the recommendation_id of an answer, as given "
                             "(letters, digits, - and _).")
    return value


def event(value: Any, field: str, settings: Settings, now: float) -> Event:
    prefix = f"{field}." if field else ""
    obj = json_object(value, field, EVENT_FIELDS)
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



def event_batch(body: Any, settings: Settings, now: float) -> list[Event]:
    """One event object, or ``{"events": [...]}``; a batch is valid only if every event is."""
    if isinstance(body, dict) and "events" in body:
        batch = batch_of(body, "events", "event", settings)
        return [event(value, f"events[{n}]", settings, now) for n, value in enumerate(batch)]
    return [event(body, "", settings, now)]
