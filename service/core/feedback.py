"""Feedback, free of I/O (SPEC, "Feedback"): the recommendation ids answers carry, the
assignment of sessions to an experiment's variants, the experiment's definition, and the
statistics of its report.

A recommendation id is opaque to clients but carries what attribution needs: the experiment
(its serial number) and the variant the answer was scored with, so a worker attributes a
click without a Redis read per event. It is signed with a key kept in Redis: the publishable
key is public, and an id made up by a client must not count for any variant.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from service.core.modelparams import Value

ID_VERSION = 1
_PAYLOAD = 14  # version (1), random (8), experiment serial (4), variant (1)
_TAG = 8
KEY_BYTES = 32


def new_key() -> bytes:
    return os.urandom(KEY_BYTES)


@dataclass(frozen=True, slots=True)
class Attribution:
    """What a recommendation id says: the experiment serial (0: none) and variant index."""

    experiment: int
    variant: int


def recommendation_id(key: bytes, experiment: int = 0, variant: int = 0) -> str:
    """A fresh id for one answer (unique: 64 random bits), signed with ``key``."""
    payload = bytes((ID_VERSION,)) + os.urandom(8) + experiment.to_bytes(4, "little") \
        + bytes((variant,))
    tag = hashlib.blake2b(payload, key=key, digest_size=_TAG).digest()
    return base64.urlsafe_b64encode(payload + tag).rstrip(b"=").decode()


def attribution(key: bytes, rid: str) -> Attribution | None:
    """The id's experiment and variant, or None when ``key`` did not sign it (made up,
    mangled, or signed before Redis lost the key)."""
    if len(rid) != 30:
        return None
    try:
        raw = base64.urlsafe_b64decode(rid + "==")
    except (binascii.Error, ValueError):
        return None
    payload, tag = raw[:_PAYLOAD], raw[_PAYLOAD:]
    if len(raw) != _PAYLOAD + _TAG or payload[0] != ID_VERSION:
        return None
    # one spelling per id: the last character's two spare bits would otherwise give each id
    # four spellings, each counted as a different answer's
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != rid:
        return None
    if not hmac.compare_digest(tag, hashlib.blake2b(payload, key=key,
                                                    digest_size=_TAG).digest()):
        return None
    return Attribution(int.from_bytes(payload[9:13], "little"), payload[13])


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
                "ended_at": self.ended_at,
                "variants": [{"name": v.name, "weight": v.weight, "params": dict(v.params)}
                             for v in self.variants]}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Experiment:
        return cls(raw["name"], int(raw["serial"]),
                   tuple(Variant(v["name"], float(v["weight"]), dict(v["params"]))
                         for v in raw["variants"]),
                   float(raw["started_at"]),
                   None if raw.get("ended_at") is None else float(raw["ended_at"]))


# --- counting -----------------------------------------------------------------------------------
KINDS = ("impression", "click", "add_to_cart", "purchase")
"""Event types counted per variant when they carry a recommendation id."""


def counter_field(serial: int, variant: int, kind: str) -> str:
    """A variant's count's field in a partition's counters hash (the worker's commit adds to
    it with the watermark: exactly once)."""
    return f"x:{serial}:{variant}:{kind}"


def event_counts(key: bytes, events: Iterable[tuple[str, str | None]]) -> dict[str, int]:
    """The counters a batch's events add to (``(type, recommendation id)`` pairs): the
    totals of impressions and attributed clicks (GET /stats), and each experiment variant's
    count of each kind. An id the key did not sign counts nowhere."""
    out: dict[str, int] = {}
    for kind, rid in events:
        if rid is None or kind not in KINDS:
            continue
        signed = attribution(key, rid)
        if signed is None:
            continue
        total = TOTALS.get(kind)
        if total is not None:
            out[total] = out.get(total, 0) + 1
        if signed.experiment:
            name = counter_field(signed.experiment, signed.variant, kind)
            out[name] = out.get(name, 0) + 1
    return out


TOTALS = {"impression": "impressions", "click": "attributed_clicks"}


def answers_field(serial: int, variant: int) -> str:
    return f"x:{serial}:{variant}:answers"


# --- the report's statistics --------------------------------------------------------------------
Z95 = 1.959963984540054


def wilson(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """The 95 % Wilson score interval of a proportion: sound at a handful of impressions and
    at rates near 0, where the normal approximation is not."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    z2 = z * z
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / (1 + z2 / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def two_proportion_p(c1: int, n1: int, c2: int, n2: int) -> float | None:
    """The two-sided p-value that two CTRs differ (pooled two-proportion z-test); None
    without impressions on both sides."""
    if n1 <= 0 or n2 <= 0:
        return None
    pooled = (c1 + c2) / (n1 + n2)
    variance = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    if variance <= 0:
        return 1.0
    z = (c2 / n2 - c1 / n1) / math.sqrt(variance)
    return math.erfc(abs(z) / math.sqrt(2))


def variant_report(counts: Mapping[str, int], sessions: int) -> dict[str, Any]:
    impressions, clicks = counts.get("impression", 0), counts.get("click", 0)
    low, high = wilson(clicks, impressions)
    return {"sessions": sessions, "answers": counts.get("answers", 0),
            "impressions": impressions, "clicks": clicks,
            "ctr": clicks / impressions if impressions else None,
            "ctr_interval": [low, high] if impressions else None,
            "add_to_cart": counts.get("add_to_cart", 0),
            "purchases": counts.get("purchase", 0)}


def comparisons(names: Sequence[str], reports: Sequence[Mapping[str, Any]]
                ) -> dict[str, dict[str, Any]]:
    """Each variant after the first against the first: the CTR difference and its p-value."""
    first = reports[0]
    out: dict[str, dict[str, Any]] = {}
    for name, report in zip(names[1:], reports[1:], strict=True):
        p = two_proportion_p(first["clicks"], first["impressions"], report["clicks"],
                             report["impressions"])
        diff = (report["ctr"] - first["ctr"]
                if report["ctr"] is not None and first["ctr"] is not None else None)
        out[name] = {"against": names[0], "ctr_difference": diff, "p_value": p}
    return out
