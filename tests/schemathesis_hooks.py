"""Schemathesis hooks (tests/test_schema.py): the one constraint of the API that JSON Schema cannot
state. A filter's ``price.min`` above its ``price.max`` is a contradiction the API refuses with a
400 (README, "Rules and explanations"), yet every schema keyword allows it; such cases are not
generated as "valid" ones. tests/test_rules.py checks that they are refused."""

from __future__ import annotations

import json
from typing import Any

import schemathesis


def _contradicts(rule: Any) -> bool:
    price = rule.get("price") if isinstance(rule, dict) else None
    return isinstance(price, dict) and isinstance(price.get("min"), int | float) \
        and isinstance(price.get("max"), int | float) and price["min"] > price["max"]


@schemathesis.hook
def filter_body(ctx: Any, body: Any) -> bool:
    return not (isinstance(body, dict) and _contradicts(body.get("filter")))


@schemathesis.hook
def filter_query(ctx: Any, query: Any) -> bool:
    if not query or "filter" not in query:
        return True
    raw = query["filter"]
    try:
        rule = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return True
    return not _contradicts(rule)
