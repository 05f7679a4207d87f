"""Schemathesis hooks (tests/test_schema.py): the constraints of the API that JSON Schema cannot
state. A filter's ``price.min`` above its ``price.max`` is a contradiction the API refuses with a
400 (README, "Rules and explanations"), yet every schema keyword allows it; such cases are not
generated as "valid" ones. tests/test_rules.py checks that they are refused. A request naming a
placement is valid only when the operator has put that placement, which no schema knows: such
requests are not generated as valid either (tests/test_placements.py covers them)."""

from __future__ import annotations

import json
from typing import Any

import schemathesis


def _contradicts(rule: Any) -> bool:
    price = rule.get("price") if isinstance(rule, dict) else None
    return isinstance(price, dict) and isinstance(price.get("min"), int | float) \
        and isinstance(price.get("max"), int | float) and price["min"] > price["max"]


def _filters(body: dict[str, Any]) -> list[Any]:
    """Every filter a body holds: its own, and a placement's (its rules', boosts', promotion's)."""
    found = [body.get("filter")]
    rules, promote, boosts = body.get("rules"), body.get("promote"), body.get("boosts")
    if isinstance(rules, dict):
        found.append(rules.get("filter"))
    if isinstance(promote, dict):
        found.append(promote.get("filter"))
    if isinstance(boosts, list):
        found += [b.get("filter") for b in boosts if isinstance(b, dict)]
    return found


@schemathesis.hook
def filter_body(ctx: Any, body: Any) -> bool:
    return not (isinstance(body, dict) and ("placement" in body or any(
        _contradicts(rule) for rule in _filters(body))))


@schemathesis.hook
def filter_query(ctx: Any, query: Any) -> bool:
    if query and "placement" in query:
        return False
    if not query or "filter" not in query:
        return True
    raw = query["filter"]
    try:
        rule = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return True
    return not _contradicts(rule)
