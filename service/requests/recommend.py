"""The body of ``POST /iid_recommend``: the seed's interactions, ``k``, and the rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from service.core.rules import NO_RULES, Rules
from service.requests.rules import RULE_FIELDS, rules
from service.requests.values import (
    MAX_RATING,
    MAX_TIMESTAMP,
    identifier,
    integer,
    invalid,
    json_object,
    placement_name,
    rating,
    timestamp,
    type_name,
)
from service.settings import Settings


class Interaction(NamedTuple):
    """A tuple: ``Recommender.recommend`` takes (item, timestamp, rating) tuples as they are."""

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
    placement: str | None = None
    given: frozenset[str] = frozenset()
    """The fields the body gave: those override the placement's."""



INTERACTION_FIELDS = ("timestamp", "rating")
RECOMMEND_FIELDS = ("user_interactions", "k", "recommend_seen", "session_id", "placement",
                    *RULE_FIELDS)
_FIELDS = frozenset(INTERACTION_FIELDS)
_PLAIN = (int, float)  # exact types: a bool is not a number here


def _interaction(item_id: str, value: Any, settings: Settings, now: float) -> Interaction:
    where = f"user_interactions.{item_id}"
    identifier(item_id, where, settings)
    fields = json_object(value, where, INTERACTION_FIELDS)
    ts = timestamp(fields["timestamp"], where + ".timestamp") if "timestamp" in fields else now
    rate = rating(fields["rating"], where + ".rating") if "rating" in fields else 1.0
    return Interaction(item_id, ts, rate)


def interactions_of(obj: dict[str, Any], settings: Settings, now: float) -> list[Interaction]:
    """``user_interactions`` (required): the seed's interactions, in the order given."""
    if "user_interactions" not in obj:
        raise invalid("user_interactions",
                      "user_interactions is required: an object keyed by item id ({} for none).")
    raw = obj["user_interactions"]
    if not isinstance(raw, dict):
        raise invalid("user_interactions",
                      "user_interactions must be an object keyed by item id, "
                      f"not {type_name(raw)}.")
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
    return interactions


def session_of(obj: dict[str, Any], settings: Settings) -> str | None:
    return identifier(obj["session_id"], "session_id", settings) \
        if obj.get("session_id") is not None else None


def placement_of(obj: dict[str, Any], settings: Settings) -> str | None:
    return placement_name(obj["placement"], "placement", settings) \
        if obj.get("placement") is not None else None


def recommend_request(body: Any, settings: Settings, now: float) -> RecommendRequest:
    """The seed's POST /iid_recommend body."""
    obj = json_object(body, "", RECOMMEND_FIELDS)
    interactions = interactions_of(obj, settings, now)
    k = integer(obj.get("k", 10), "k", low=1, high=settings.max_k)
    seen = obj.get("recommend_seen", False)
    if not isinstance(seen, bool):
        raise invalid("recommend_seen", "recommend_seen must be true or false.")
    return RecommendRequest(interactions, k, seen, session_of(obj, settings),
                            rules(obj, settings), placement_of(obj, settings),
                            frozenset(obj))
