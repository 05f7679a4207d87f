"""Feedback, free of I/O (README, "Feedback and experiments"): the recommendation ids answers carry,
what a batch's attributed events count, the assignment of sessions to an experiment's variants, the
experiment's definition, and the statistics of its report.

The publishable key is public, so whatever a page can send, an attacker sends: the report must
be one no visitor can decide. Hence:

* An id is signed with a key kept in Redis (an id made up counts nowhere) and, when the request
  named the visitor's session, bound to it (the tag covers the session id): events of other
  sessions cannot use it.
* An answer given to a session leaves a record of what it listed (``answer_record``) beside
  that session's events, in the same hash slot, for ``FEEDBACK_WINDOW``. A worker counts an
  event against it in the same atomic commit as the event's watermark: at most once per
  (answer, item, kind), only for listed items, only within the window, and toward an
  experiment only if the event arrived while it ran (``tally``). So forged feedback is
  bounded by what honest visitors of the same answers could send.
* A CTR divides clicked impressions by impressions: it lies within [0, 1] whatever arrives.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import os
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from service.core.layout import HASH_BYTES, item_hash
from service.core.parameters import Value

ID_VERSION = 3
"""Version 3 carries the answer's placement; version 2 ids (without one), issued before it,
still verify until their window ends."""
BOUND = 1
"""The id's flag: the answer was given to a session (its request named one), and the tag covers
that session's id, so only events of that session verify."""
PLACEMENT_CODE = 6
"""Bytes of a placement name's hash an id carries (all zero: no placement). Among the at most
100 placements of a namespace, two share a code with odds of about 1 in 10^10."""
_PAYLOAD_V2 = 19  # version (1), flags (1), nonce (8), experiment serial (4), variant (1),
# issued (4)
_PAYLOAD = _PAYLOAD_V2 + PLACEMENT_CODE  # then the placement's code
_TAG = 8
ID_LENGTH = 44  # 33 bytes in base64 without padding: one spelling per id
ID_LENGTH_V2 = 36
KEY_BYTES = 32
NO_PLACEMENT = bytes(PLACEMENT_CODE)


def placement_code(name: str | None, serial: int = 0) -> bytes:
    """What an id carries of its answer's placement, and what its counts are kept under: the
    placement as created (``serial``), so that one deleted and created again counts afresh,
    and the ids its former self gave count toward neither."""
    if name is None:
        return NO_PLACEMENT
    code = hashlib.blake2b(f"{serial}\0{name}".encode("utf-8", "surrogatepass"),
                           digest_size=PLACEMENT_CODE, person=b"placement").digest()
    return code if code != NO_PLACEMENT else b"\x01" + code[1:]

FEEDBACK_WINDOW = 86_400
"""Seconds after an answer during which events carrying its id count: an honest visitor acts on
a list within its visit, and a bounded window bounds the answers' records Redis keeps."""

FEEDBACK_POSITIONS = 100
"""The first items of an answer whose feedback counts: what a page shows (an answer of 1,000
items records its first hundred, so no request costs the records' budget more than a page's)."""

ISSUE_SKEW = 60.0
"""Seconds an event may seem to arrive before its answer was given: the serve process' clock
(the id's) and Redis' (the event's arrival) may differ that much."""


def new_key() -> bytes:
    return os.urandom(KEY_BYTES)


@dataclass(frozen=True, slots=True)
class Attribution:
    """What a recommendation id says: its answer (``nonce``, which names the answer's record),
    the experiment serial (0: none) and variant index, when it was given (Unix seconds) and
    whether it was given to a session."""

    nonce: bytes
    experiment: int
    variant: int
    issued: int
    bound: bool
    placement: bytes = NO_PLACEMENT  # the placement's code (``placement_code``)


def _tag(key: bytes, payload: bytes, session_id: str | None) -> bytes:
    signed = payload if session_id is None else \
        payload + session_id.encode("utf-8", "surrogatepass")
    return hashlib.blake2b(signed, key=key, digest_size=_TAG).digest()


def recommendation_id(key: bytes, session_id: str | None = None, experiment: int = 0,
                      variant: int = 0, now: float | None = None,
                      placement: bytes = NO_PLACEMENT) -> tuple[str, bytes]:
    """A fresh id for one answer, signed with ``key`` (and bound to ``session_id`` when the
    request named one), and its nonce (64 random bits: unique per answer)."""
    nonce = os.urandom(8)
    issued = int(time.time() if now is None else now)
    payload = bytes((ID_VERSION, BOUND if session_id is not None else 0)) + nonce \
        + experiment.to_bytes(4, "little") + bytes((variant,)) \
        + issued.to_bytes(4, "little") + placement
    tag = _tag(key, payload, session_id)
    return base64.urlsafe_b64encode(payload + tag).decode(), nonce


def attribution(key: bytes, rid: str, session_id: str | None = None) -> Attribution | None:
    """The id's answer, experiment and variant, or None when ``key`` did not sign it (made up,
    mangled, signed before Redis lost the key) or, for an id given to a session, when
    ``session_id`` is not that session."""
    if len(rid) not in (ID_LENGTH, ID_LENGTH_V2):
        return None
    try:
        raw = base64.urlsafe_b64decode(rid)
    except (binascii.Error, ValueError):
        return None
    size = _PAYLOAD if len(rid) == ID_LENGTH else _PAYLOAD_V2
    if len(raw) != size + _TAG or raw[0] != (ID_VERSION if size == _PAYLOAD else 2) \
            or raw[1] & ~BOUND \
            or base64.urlsafe_b64encode(raw).decode() != rid:  # one spelling per id
        return None
    payload, tag = raw[:size], raw[size:]
    bound = bool(payload[1] & BOUND)
    if bound and session_id is None:
        return None
    if not hmac.compare_digest(tag, _tag(key, payload, session_id if bound else None)):
        return None
    return Attribution(payload[2:10], int.from_bytes(payload[10:14], "little"), payload[14],
                       int.from_bytes(payload[15:19], "little"), bound,
                       payload[_PAYLOAD_V2:] or NO_PLACEMENT)


# --- experiments ------------------------------------------------------------------------------
MAX_VARIANTS = 10


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    weight: float
    params: Mapping[str, Value] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Experiment:
    """A running (or ended) experiment: variants in the order given (the first is what the
    others are compared with), its serial (what recommendation ids carry: a name used again
    later is a new experiment, counted afresh)."""

    name: str
    serial: int
    variants: tuple[Variant, ...]
    started_at: float
    ended_at: float | None = None
    placement: str | None = None
    """The placement whose requests it scores (None: every request with a session id)."""

    def assign(self, session_id: str) -> int:
        """The variant of a session: a hash of (experiment, session id) placed on the
        weights' cumulative share, so a session keeps its variant on every request and in
        every process, and variants get sessions in proportion to their weights."""
        digest = hashlib.blake2b(f"{self.name}\x00{self.serial}\x00{session_id}".encode(
            "utf-8", "surrogatepass"), digest_size=8).digest()
        point = int.from_bytes(digest, "little") / 2.0**64 * self.total_weight
        acc = 0.0
        for n, variant in enumerate(self.variants):
            acc += variant.weight
            if point < acc:
                return n
        return len(self.variants) - 1

    @property
    def total_weight(self) -> float:
        return math.fsum(v.weight for v in self.variants)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "serial": self.serial, "started_at": self.started_at,
                "ended_at": self.ended_at, "placement": self.placement,
                "variants": [{"name": v.name, "weight": v.weight, "params": dict(v.params)}
                             for v in self.variants]}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Experiment:
        return cls(raw["name"], int(raw["serial"]),
                   tuple(Variant(v["name"], float(v["weight"]), dict(v["params"]))
                         for v in raw["variants"]),
                   float(raw["started_at"]),
                   None if raw.get("ended_at") is None else float(raw["ended_at"]),
                   raw.get("placement"))


# --- counting -----------------------------------------------------------------------------------
KINDS = ("impression", "click", "add_to_cart", "purchase")
"""Event types counted per variant when they carry a recommendation id."""

FLAG = {kind: 1 << n for n, kind in enumerate(KINDS)}
"""Each kind's bit in an answer record's flag byte per listed item: what was counted already."""

CLICKED_IMPRESSION = "clicked_impression"
"""The count a CTR divides: listed items of an answer with both an impression and a click
counted, so a CTR lies within [0, 1] whatever arrives (a page without IntersectionObserver
sends clicks and no impressions)."""

COUNTED = (*KINDS, CLICKED_IMPRESSION)
"""What a variant's counters hold per kind."""

TOTALS = {"impression": "impressions", "click": "attributed_clicks"}
"""The totals GET /stats shows, over every answer."""

SHOWN_AND_CLICKED = FLAG["impression"] | FLAG["click"]


def answer_record(item_hashes: bytes) -> bytes:
    """What an answer given to a session leaves in Redis for its feedback to be counted
    against: the hashes of its first ``FEEDBACK_POSITIONS`` items (8 bytes each, in order)
    then one flag byte per item, all clear (``FLAG``: what was counted already)."""
    listed = item_hashes[:FEEDBACK_POSITIONS * HASH_BYTES]
    return listed + bytes(len(listed) // HASH_BYTES)


def hour_of(issued: float) -> int:
    """The hour an answer's record is charged to (its partition's budget for that hour)."""
    return int(issued // 3600)


def listed_items(record: bytes) -> int:
    return len(record) // (HASH_BYTES + 1)


def counter_field(serial: int, variant: int, kind: str) -> str:
    """A variant's count's field in a partition's counters hash (the worker's commit adds to
    it with the watermark: exactly once)."""
    return f"x:{serial}:{variant}:{kind}"


def answers_field(serial: int, variant: int) -> str:
    return f"x:{serial}:{variant}:answers"


def placement_field(code: bytes, kind: str) -> str:
    """A placement's count's field in a partition's counters hash (``kind``: one of
    ``COUNTED``), or in the global hash of answers per placement (``answers``)."""
    return f"pl:{code.hex()}:{kind}"


class Claim(NamedTuple):
    """An event that says it acts on an answer, with a valid signature for its session."""

    kind: str
    item: bytes  # the item's hash
    arrival: float  # when Redis accepted the event (its stream id), Unix seconds
    answer: Attribution


def claim(key: bytes, kind: str, rid: str | None, session_id: str, item_id: str,
          arrival: float) -> Claim | None:
    """What an event (of ``session_id``, on ``item_id``, arrived at ``arrival``) claims, when
    its recommendation id ``key`` signed for the event's own session. An id made up, mangled,
    given to another session or to no session claims nothing: an answer's feedback is counted
    beside its session's events, and only from them."""
    if rid is None or kind not in FLAG:
        return None
    answer = attribution(key, rid, session_id)
    if answer is None or not answer.bound:
        return None
    return Claim(kind, item_hash(item_id), arrival, answer)


@dataclass(slots=True)
class Tallied:
    """What a batch's claims add: counter increments, and per answer record its flags now
    (``nonce -> (offset of the flags in the record, the flags)``)."""

    counts: dict[str, int] = field(default_factory=dict)
    flags: dict[bytes, tuple[int, bytes]] = field(default_factory=dict)

    def add(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1


def tally(found: Sequence[Claim], records: Mapping[bytes, bytes | None],
          ends: Mapping[int, float | None], flooded: Collection[int] = (),
          window: float = FEEDBACK_WINDOW) -> Tallied:
    """Count the claims, in order, against the answers' records (``nonce -> record``, None
    when there is none: never recorded, expired, or Redis lost it) and the experiments' ends
    (``serial -> None`` while it runs, its end otherwise; a serial absent is not counted).

    A claim counts at most once per (answer, item, kind), only for an item its answer listed,
    only within ``window`` seconds of the answer, and toward its experiment only if it
    arrived while the experiment ran. What a client can forge is therefore bounded by what an
    honest visitor of the same answers could send.

    Answers of an hour whose records overflowed their partition's budget (``flooded``, by
    ``hour_of``) count nothing: a flood of requests that spends the budget can then erase an
    hour's feedback, every answer's alike, but cannot leave its own answers as the only ones
    that count."""
    out = Tallied()
    state: dict[bytes, tuple[dict[bytes, int], bytearray]] = {}
    changed: set[bytes] = set()
    for claim in found:
        answer = claim.answer
        if not -ISSUE_SKEW <= claim.arrival - answer.issued <= window \
                or hour_of(answer.issued) in flooded:
            continue
        held = state.get(answer.nonce)
        if held is None:
            record = records.get(answer.nonce)
            if record is None:
                continue
            n = listed_items(record)
            positions: dict[bytes, int] = {}
            for at in range(n):
                positions.setdefault(record[at * HASH_BYTES:(at + 1) * HASH_BYTES], at)
            held = state[answer.nonce] = (positions, bytearray(record[n * HASH_BYTES:]))
        positions, flags = held
        at = positions.get(claim.item, -1)
        bit = FLAG[claim.kind]
        if at < 0 or flags[at] & bit:
            continue
        flags[at] |= bit
        changed.add(answer.nonce)
        total = TOTALS.get(claim.kind)
        if total is not None:
            out.add(total)
        if answer.placement != NO_PLACEMENT:
            out.add(placement_field(answer.placement, claim.kind))
            if bit & SHOWN_AND_CLICKED and flags[at] & SHOWN_AND_CLICKED == SHOWN_AND_CLICKED:
                out.add(placement_field(answer.placement, CLICKED_IMPRESSION))
        if answer.experiment and answer.experiment in ends:
            end = ends[answer.experiment]
            if end is None or claim.arrival < end:
                out.add(counter_field(answer.experiment, answer.variant, claim.kind))
                if bit & SHOWN_AND_CLICKED and flags[at] & SHOWN_AND_CLICKED == SHOWN_AND_CLICKED:
                    out.add(counter_field(answer.experiment, answer.variant,
                                          CLICKED_IMPRESSION))
    for nonce in changed:
        flags = state[nonce][1]
        out.flags[nonce] = (len(flags) * HASH_BYTES, bytes(flags))
    return out
