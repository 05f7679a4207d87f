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
type       ``view``, ``click``, ``add_to_cart`` or ``purchase``      no (view)
rating     finite decimal number                                     no
=========  ========================================================  ==========

An entry that does not parse is moved to the partition's dead-letter stream, never retried.
"""

from __future__ import annotations

import math

from service.model import EVENT_TYPES, Event


class BadEntry(ValueError):
    """A stream entry that can never be applied."""


def decode(fields: dict[bytes, bytes]) -> Event:
    try:
        session = fields[b"session"].decode("utf-8", "surrogatepass")
        item = fields[b"item"].decode("utf-8", "surrogatepass")
        ts = float(fields[b"ts"])
        kind = fields.get(b"type", b"view").decode()
        raw_rating = fields.get(b"rating")
        rating = None if raw_rating is None else float(raw_rating)
    except KeyError as exc:
        raise BadEntry(f"missing field {exc.args[0]!r}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadEntry(str(exc)) from None
    if not session or not item:
        raise BadEntry("empty session or item")
    if not math.isfinite(ts) or (rating is not None and not math.isfinite(rating)):
        raise BadEntry("non-finite number")
    if kind not in EVENT_TYPES:
        raise BadEntry(f"unknown type {kind!r}")
    return Event(session, item, ts, kind, rating)


def encode(event: Event) -> dict[str, str]:
    fields = {"session": event.session_id, "item": event.item_id, "ts": number(event.timestamp),
              "type": event.type}
    if event.rating is not None:
        fields["rating"] = number(event.rating)
    return fields


def number(value: float) -> str:
    """Shortest text that round-trips the float (what goes into ``ts`` and ``rating``)."""
    return repr(float(value))


def pack_events(events: list[Event]) -> bytes:
    """Events as length-prefixed fields (ids may hold any code point, NUL and lone surrogates
    included): the journal's payload."""
    out: list[bytes] = []
    for ev in events:
        for value in (ev.session_id, ev.item_id, number(ev.timestamp), ev.type,
                      "" if ev.rating is None else number(ev.rating)):
            raw = value.encode("utf-8", "surrogatepass")
            out.append(b"%d:%s" % (len(raw), raw))
    return b"".join(out)


def unpack_events(payload: bytes) -> list[Event]:
    fields: list[str] = []
    at = 0
    while at < len(payload):
        colon = payload.index(b":", at)
        size = int(payload[at:colon])
        fields.append(payload[colon + 1:colon + 1 + size].decode("utf-8", "surrogatepass"))
        at = colon + 1 + size
    return [Event(fields[n], fields[n + 1], float(fields[n + 2]), fields[n + 3],
                  float(fields[n + 4]) if fields[n + 4] else None)
            for n in range(0, len(fields) - 4, 5)]
