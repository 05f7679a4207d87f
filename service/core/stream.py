"""The event stream's entry format, shared by the API (writer), workers (reader) and producers
that write to Redis directly.

One stream entry per event, in the partition stream of its session
(``<ns>:{p<N>}:events``, ``N = partition_of(session_hash(session_id), partitions)``), fields:

=========  ========================================================  ==========
field      value                                                     required
=========  ========================================================  ==========
session    session id (UTF-8)                                        yes
item       item id (UTF-8)                                           yes
ts         Unix seconds, decimal                                     yes
type       ``view``, ``click``, ``add_to_cart``, ``purchase`` or     no (view)
           ``impression``
rating     finite decimal number                                     no
rid        the recommendation id of the answer the event acts on     no
=========  ========================================================  ==========

An entry that does not parse (an item id that is not valid UTF-8 included: it would be written
into answers) is moved to the partition's dead-letter stream, never retried. ``ts`` later than
the entry's arrival (its stream id) plus ``max_clock_skew`` is applied as that ceiling.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from service.core.model import EVENT_TYPES, Event


class BadEntry(ValueError):
    """A stream entry that can never be applied."""


def decode(fields: dict[bytes, bytes]) -> Event:
    try:
        return _event(fields[b"session"], fields[b"item"], fields[b"ts"],
                      fields.get(b"type", b"view"), fields.get(b"rating"), fields.get(b"rid"))
    except KeyError as exc:
        raise BadEntry(f"missing field {exc.args[0]!r}") from None


def decode_flat(flat: Sequence[bytes]) -> Event:
    """An entry as XREADGROUP returns it, ``[field, value, ...]``. The layout this module's
    writers produce is read in place (the worker decodes every event: a dict per entry cost
    a tenth of its time); any other order goes through ``decode``."""
    n = len(flat)
    if 8 <= n <= 12 and flat[0] == b"session" and flat[2] == b"item" and flat[4] == b"ts" \
            and flat[6] == b"type":
        # then rating, rid, both (in that order), or neither: impressions, a shop's most
        # frequent events, carry a rid
        rest = flat[8:]
        if not rest:
            return _event(flat[1], flat[3], flat[5], flat[7], None, None)
        if n == 10 and rest[0] == b"rating":
            return _event(flat[1], flat[3], flat[5], flat[7], rest[1], None)
        if n == 10 and rest[0] == b"rid":
            return _event(flat[1], flat[3], flat[5], flat[7], None, rest[1])
        if n == 12 and rest[0] == b"rating" and rest[2] == b"rid":
            return _event(flat[1], flat[3], flat[5], flat[7], rest[1], rest[3])
    return decode(fields_of(flat))


def fields_of(flat: Sequence[bytes]) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _event(session_raw: bytes, item_raw: bytes, ts_raw: bytes, kind_raw: bytes,
           rating_raw: bytes | None, rid_raw: bytes | None) -> Event:
    try:
        session = session_raw.decode("utf-8", "surrogatepass")
        # strict: an item id is written into answers, and JSON cannot carry a lone surrogate
        item = item_raw.decode("utf-8")
        ts = float(ts_raw)
        kind = kind_raw.decode()
        rating = None if rating_raw is None else float(rating_raw)
        rid = None if rid_raw is None else rid_raw.decode("ascii", "replace")  # checked later
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadEntry(str(exc)) from None
    if not session or not item:
        raise BadEntry("empty session or item")
    if not math.isfinite(ts) or (rating is not None and not math.isfinite(rating)):
        raise BadEntry("non-finite number")
    if kind not in EVENT_TYPES:
        raise BadEntry(f"unknown type {kind!r}")
    return Event(session, item, ts, kind, rating, rid or None)


def encode(event: Event) -> dict[str, str]:
    fields = {"session": event.session_id, "item": event.item_id, "ts": number(event.timestamp),
              "type": event.type}
    if event.rating is not None:
        fields["rating"] = number(event.rating)
    if event.recommendation_id is not None:
        fields["rid"] = event.recommendation_id
    return fields


def number(value: float) -> str:
    """Shortest text that round-trips the float (what goes into ``ts`` and ``rating``)."""
    return repr(float(value))


PACKED_V2 = b"v2;"
"""Marks a journal payload of six fields per event (the recommendation id added); one without
it, five (written before feedback existed, and still replayed)."""


def pack_events(events: list[Event]) -> bytes:
    """Events as length-prefixed fields (ids may hold any code point, NUL and lone surrogates
    included): the journal's payload."""
    out: list[bytes] = [PACKED_V2]
    for ev in events:
        for value in (ev.session_id, ev.item_id, number(ev.timestamp), ev.type,
                      "" if ev.rating is None else number(ev.rating),
                      ev.recommendation_id or ""):
            raw = value.encode("utf-8", "surrogatepass")
            out.append(b"%d:%s" % (len(raw), raw))
    return b"".join(out)


def unpack_events(payload: bytes) -> list[Event]:
    fields: list[str] = []
    width = 6 if payload.startswith(PACKED_V2) else 5
    at = len(PACKED_V2) if width == 6 else 0
    while at < len(payload):
        colon = payload.index(b":", at)
        size = int(payload[at:colon])
        fields.append(payload[colon + 1:colon + 1 + size].decode("utf-8", "surrogatepass"))
        at = colon + 1 + size
    return [Event(fields[n], fields[n + 1], float(fields[n + 2]), fields[n + 3],
                  float(fields[n + 4]) if fields[n + 4] else None,
                  (fields[n + 5] or None) if width == 6 else None)
            for n in range(0, len(fields) - width + 1, width)]
