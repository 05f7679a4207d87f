"""A placement's body (``PUT /admin/placements/{name}``) and the name a request gives.
"""

from __future__ import annotations

from typing import Any

from service.core.placements import (
    MAX_BOOST_FACTOR,
    MAX_BOOSTS,
    STRATEGIES,
    Boost,
    Placement,
    Promote,
)
from service.requests.admin import param_values
from service.requests.explore import explore_config
from service.requests.jsonutil import dumps
from service.requests.rules import RULE_FIELDS, rule_filter, rules
from service.requests.values import (
    Invalid,
    finite_number,
    integer,
    invalid,
    json_object,
    type_name,
)
from service.settings import Settings

PLACEMENT_FIELDS = ("strategy", "k", "rules", "boosts", "promote", "params", "explore")
BOOST_FIELDS = ("filter", "factor")
PROMOTE_FIELDS = ("filter", "slots")
MAX_PLACEMENT_BYTES = 64 << 10
"""A placement's JSON, at most: every serve process keeps every placement parsed."""


def _prefixed(prefix: str, exc: Invalid) -> Invalid:
    return Invalid(f"{prefix}.{exc.field}", exc.message, exc.code)


def placement(name: str, body: Any, settings: Settings, serial: int = 0) -> Placement:
    """The placement ``name`` as ``body`` sets it: every field checked, unknown ones refused
    (``serial``: the one it was created with, once stored)."""
    obj = json_object(body, "", PLACEMENT_FIELDS)
    if len(dumps(obj)) > MAX_PLACEMENT_BYTES:
        raise invalid("body", f"A placement is at most {MAX_PLACEMENT_BYTES} bytes of JSON.")
    if "strategy" not in obj:
        raise invalid("strategy", f"strategy is required: one of {', '.join(STRATEGIES)}.")
    strategy = obj["strategy"]
    if not isinstance(strategy, str) or strategy not in STRATEGIES:
        what = repr(strategy) if isinstance(strategy, str) else type_name(strategy)
        raise invalid("strategy", f"strategy must be one of {', '.join(STRATEGIES)}, not "
                                  f"{what}.")
    k = integer(obj["k"], "k", low=1, high=settings.max_k) if "k" in obj else None
    given_rules = json_object(obj.get("rules", {}), "rules", RULE_FIELDS)
    try:
        placed_rules = rules(given_rules, settings)
    except Invalid as exc:
        raise _prefixed("rules", exc) from None
    boosts = _boosts(obj.get("boosts", []), settings)
    promote = _promote(obj["promote"], settings) if obj.get("promote") is not None else None
    params = param_values(obj.get("params", {}), "params", settings)
    if strategy == "bought_together":
        for field in ("boosts", "promote", "params"):
            if obj.get(field):
                raise invalid(field, "A bought_together placement answers from carts alone: "
                                     f"{field} applies to the other strategies.")
    explore = None
    if obj.get("explore") is not None:
        if strategy != "session":
            raise invalid("explore", "explore reserves slots of a session placement's answer "
                                     f"for new items; a {strategy} placement has none to give.")
        explore = explore_config(obj["explore"], "explore")
    return Placement(name, strategy, k, placed_rules, frozenset(given_rules), boosts, promote,
                     params, obj, serial, explore)


def _boosts(value: Any, settings: Settings) -> tuple[Boost, ...]:
    if not isinstance(value, list):
        raise invalid("boosts", "boosts must be an array of {\"filter\", \"factor\"}, not "
                                f"{type_name(value)}.")
    if len(value) > MAX_BOOSTS:
        raise invalid("boosts", f"boosts has {len(value)} entries; the limit is {MAX_BOOSTS}.")
    found = []
    for n, raw in enumerate(value):
        where = f"boosts[{n}]"
        obj = json_object(raw, where, BOOST_FIELDS)
        for name in BOOST_FIELDS:
            if name not in obj:
                raise invalid(f"{where}.{name}", f"{where}.{name} is required.")
        factor = finite_number(obj["factor"], where + ".factor", low=1 / MAX_BOOST_FACTOR,
                               high=MAX_BOOST_FACTOR)
        found.append(Boost(rule_filter(obj["filter"], where + ".filter", settings), factor))
    return tuple(found)


def _promote(value: Any, settings: Settings) -> Promote:
    obj = json_object(value, "promote", PROMOTE_FIELDS)
    for name in PROMOTE_FIELDS:
        if name not in obj:
            raise invalid(f"promote.{name}", f"promote.{name} is required.")
    return Promote(rule_filter(obj["filter"], "promote.filter", settings),
                   integer(obj["slots"], "promote.slots", low=1, high=settings.max_k))
