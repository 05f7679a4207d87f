"""The body of ``POST /rerank``: the items to order, the session they are ordered for (its
interactions, or its id: the live session is read), ``k``, a placement and the rules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service import kernel
from service.core.layout import ITEM_PERSON
from service.core.rules import Rules
from service.requests.recommend import (
    Interaction,
    interactions_of,
    placement_of,
    session_of,
)
from service.requests.rules import RULE_FIELDS, rules
from service.requests.values import identifiers, integer, invalid, json_object
from service.settings import Settings

MAX_RERANK_ITEMS = 1000
RERANK_FIELDS = ("user_interactions", "session_id", "items", "k", "placement", *RULE_FIELDS)


@dataclass(frozen=True, slots=True)
class RerankRequest:
    interactions: list[Interaction] | None  # None: the live session of ``session_id``
    items: tuple[str, ...]
    hashes: bytes  # the items', in their order
    k: int
    session_id: str | None
    rules: Rules
    placement: str | None
    given: frozenset[str]


def rerank_request(body: Any, settings: Settings, now: float) -> RerankRequest:
    obj = json_object(body, "", RERANK_FIELDS)
    session = session_of(obj, settings)
    if "user_interactions" not in obj and session is None:
        raise invalid("user_interactions", "user_interactions or session_id is required: the "
                                           "session the items are ordered for.")
    interactions = interactions_of(obj, settings, now) if "user_interactions" in obj else None
    if "items" not in obj:
        raise invalid("items", f"items is required: an array of 1 to {MAX_RERANK_ITEMS} item "
                               "ids to order.")
    given = obj["items"]
    # the common case in one compiled pass (types, lengths, hashes, repeats); anything else
    # takes the path that names the entry
    hashes = kernel.checked_hashes(given, ITEM_PERSON, settings.max_id_length) \
        if type(given) is list and 0 < len(given) <= MAX_RERANK_ITEMS else None
    items, hashes = (tuple(given), hashes) if hashes is not None else _items(given, settings)
    k = integer(obj["k"], "k", low=1, high=MAX_RERANK_ITEMS) if "k" in obj else len(items)
    return RerankRequest(interactions, items, hashes, k, session, rules(obj, settings),
                         placement_of(obj, settings), frozenset(obj))


def _items(given: Any, settings: Settings) -> tuple[tuple[str, ...], bytes]:
    """``items`` checked entry by entry, the first problem named, and their hashes: a list
    the compiled pass refused (or that the pure kernel checks the same way)."""
    items = identifiers(given, "items", settings, limit=MAX_RERANK_ITEMS)
    if not items:
        raise invalid("items", f"items must hold 1 to {MAX_RERANK_ITEMS} item ids.")
    first: dict[str, int] = {}
    for n, item in enumerate(items):
        if first.setdefault(item, n) != n:
            raise invalid(f"items[{n}]", f"items[{n}] repeats items[{first[item]}] "
                                         f"({item!r}): each item is given once.")
    digests = kernel.hashes(items, ITEM_PERSON)
    hashed: dict[bytes, int] = {}
    for n in range(len(items)):
        at = hashed.setdefault(digests[8 * n:8 * n + 8], n)
        if at != n:  # two ids whose hashes collide: one item to the store
            raise invalid(f"items[{n}]", f"items[{n}] ({items[n]!r}) and items[{at}] "
                                         f"({items[at]!r}) are the same item to the store; "
                                         "give one of them.")
    return items, digests
