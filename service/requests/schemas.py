"""The JSON Schema of every request body, beside the validators that read those bodies: the
OpenAPI document takes its request schemas from here. Each object's properties are keyed by
the field tuple its validator accepts (``RECOMMEND_FIELDS``, ``EVENT_FIELDS``, ...) and its
limits are the validators' own constants, so a field or a limit is defined once; ``_object``
refuses a schema whose properties and validator's fields differ, and the schemathesis test
holds the rest (a body valid by the schema is accepted, an invalid one refused)."""

from __future__ import annotations

import math
import time
from typing import Any

from service.core.feedback import MAX_VARIANTS
from service.core.model import EVENT_TYPES
from service.core.parameters import PARAMETERS
from service.core.placements import (
    MAX_BOOST_FACTOR,
    MAX_BOOSTS,
    MAX_PLACEMENT_NAME,
    STRATEGIES,
)
from service.requests.admin import (
    EXPERIMENT_FIELDS,
    MAX_VARIANT_WEIGHT,
    MODEL_CHANGE_FIELDS,
    VARIANT_FIELDS,
)
from service.requests.events import (
    EVENT_FIELDS,
    MAX_RECOMMENDATION_ID,
    RECOMMENDATION_ID_PATTERN,
)
from service.requests.explore import EXPLORE_SCHEMA
from service.requests.placements import BOOST_FIELDS, PLACEMENT_FIELDS, PROMOTE_FIELDS
from service.requests.recommend import INTERACTION_FIELDS, RECOMMEND_FIELDS
from service.requests.records import ITEM_FIELDS, MAX_LIST, MAX_RECORD_BYTES
from service.requests.rerank import MAX_RERANK_ITEMS, RERANK_FIELDS
from service.requests.rules import FILTER_FIELDS, MAX_FILTER_VALUES, PRICE_FIELDS, RULE_FIELDS
from service.requests.values import (
    INT_ID_RANGE,
    MAX_ATTRIBUTE_NUMBER,
    MAX_EXCLUDE,
    MAX_PRICE,
    MAX_RATING,
    MAX_TEXT,
    MAX_TIMESTAMP,
)
from service.settings import Settings

Schema = dict[str, Any]

INT_ID: Schema = {"type": "integer", "minimum": INT_ID_RANGE[0], "maximum": INT_ID_RANGE[1]}
ATTRIBUTE_NUMBER: Schema = {"type": "number", "minimum": -MAX_ATTRIBUTE_NUMBER,
                            "maximum": MAX_ATTRIBUTE_NUMBER}
ATTRIBUTE_VALUE: Schema = {"oneOf": [{"type": "string", "maxLength": MAX_TEXT},
                                     ATTRIBUTE_NUMBER, {"type": "boolean"}]}


def _object(fields: tuple[str, ...], properties: Schema, **rest: Any) -> Schema:
    """A closed object whose properties are exactly the validator's ``fields``, in their order."""
    if tuple(properties) != fields:
        raise ValueError(f"schema properties {tuple(properties)} are not the validator's "
                         f"fields {fields}")
    return {"type": "object", "additionalProperties": False, "properties": properties, **rest}


def identifier(s: Settings) -> Schema:
    return {"type": "string", "minLength": 1, "maxLength": s.max_id_length}


def item_or_int_id(s: Settings) -> Schema:
    return {"oneOf": [identifier(s), INT_ID]}


def exclude_ids(s: Settings) -> Schema:
    return {"type": "array", "maxItems": MAX_EXCLUDE, "items": item_or_int_id(s),
            "description": "Item ids never to return; k still holds whenever k other items "
                           "exist."}


def filter_schema(s: Settings) -> Schema:
    names = {"type": "array", "minItems": 1, "maxItems": MAX_FILTER_VALUES,
             "items": identifier(s)}
    price = {"type": "number", "minimum": 0, "maximum": MAX_PRICE}
    return _object(FILTER_FIELDS, {
        "categories": {**names, "description": "Any of these categories."},
        "tags": {**names, "description": "Any of these tags."},
        "price": _object(PRICE_FIELDS, {"min": price, "max": price}, minProperties=1),
        "attributes": {"type": "object", "minProperties": 1,
                       "maxProperties": MAX_FILTER_VALUES,
                       "propertyNames": {"minLength": 1, "maxLength": s.max_id_length},
                       "description": "Each attribute equal to the value, or to one of the "
                                      "values.",
                       "additionalProperties": {"oneOf": [ATTRIBUTE_VALUE, {
                           "type": "array", "minItems": 1, "maxItems": MAX_FILTER_VALUES,
                           "items": ATTRIBUTE_VALUE}]}}},
        description="Every condition given must hold; an item without a catalogue record "
                    "fails any filter. A contradiction (price.min above price.max) is a 400.")


def placement_name(s: Settings) -> Schema:
    return {"type": "string", "minLength": 1,
            "maxLength": min(s.max_id_length, MAX_PLACEMENT_NAME)}


def _rule_properties(s: Settings) -> Schema:
    return {
        "exclude": exclude_ids(s),
        "filter": {"$ref": "#/components/schemas/Filter"},
        "max_per_category": {
            "type": "integer", "minimum": 1, "maximum": s.max_k,
            "description": "At most this many items of one category (an item's first; items "
                           "without one are not capped)."},
        "explain": {"type": "boolean", "default": False,
                    "description": "Add because and source to every recommendation."}}


def _interactions(s: Settings) -> Schema:
    interaction = _object(INTERACTION_FIELDS, {
        "timestamp": {"type": "number", "minimum": 0, "maximum": MAX_TIMESTAMP,
                      "description": "Unix seconds; default now."},
        "rating": {"type": "number", "minimum": -MAX_RATING, "maximum": MAX_RATING,
                   "description": "Finite; default 1 (a view)."}})
    return {"type": "object", "maxProperties": s.max_interactions,
            "propertyNames": {"minLength": 1, "maxLength": s.max_id_length},
            "description": "Keyed by item id; may be empty (then trending items).",
            "additionalProperties": interaction}


def _session_id(s: Settings) -> Schema:
    return {**identifier(s), "description": "The visitor's session: scored with its "
            "experiment variant while one runs (the answer says which), and never matched "
            "with itself."}


def _placement_field(s: Settings) -> Schema:
    return {**placement_name(s), "description": "A placement (PUT /admin/placements/{name}): "
            "its fields are the defaults the request's own override."}


def recommend_body(s: Settings) -> Schema:
    return _object(RECOMMEND_FIELDS, {
        "user_interactions": _interactions(s),
        "k": {"type": "integer", "minimum": 1, "maximum": s.max_k, "default": 10},
        "recommend_seen": {"type": "boolean", "default": False},
        "session_id": _session_id(s),
        "placement": _placement_field(s),
        **_rule_properties(s)},
        required=["user_interactions"])


def rerank_body(s: Settings) -> Schema:
    return _object(RERANK_FIELDS, {
        "user_interactions": _interactions(s),
        "session_id": {**_session_id(s), "description": "The visitor's session; without "
                       "user_interactions, its live interactions are read."},
        "items": {"type": "array", "minItems": 1, "maxItems": MAX_RERANK_ITEMS,
                  "uniqueItems": True, "items": identifier(s),
                  "description": "The items to order, each once."},
        "k": {"type": "integer", "minimum": 1, "maximum": MAX_RERANK_ITEMS,
              "description": "At most this many (default: every item given)."},
        "placement": _placement_field(s),
        **_rule_properties(s)},
        required=["items"], anyOf=[{"required": ["user_interactions"]},
                                   {"required": ["session_id"]}])


def placement_body(s: Settings) -> Schema:
    filter_ref = {"$ref": "#/components/schemas/Filter"}
    return _object(PLACEMENT_FIELDS, {
        "strategy": {"type": "string", "enum": list(STRATEGIES)},
        "k": {"type": "integer", "minimum": 1, "maximum": s.max_k},
        "rules": _object(RULE_FIELDS, _rule_properties(s)),
        "boosts": {"type": "array", "maxItems": MAX_BOOSTS, "items": _object(BOOST_FIELDS, {
            "filter": filter_ref,
            "factor": {"type": "number", "minimum": 1 / MAX_BOOST_FACTOR,
                       "maximum": MAX_BOOST_FACTOR}}, required=list(BOOST_FIELDS))},
        "promote": {"oneOf": [{"type": "null"}, _object(PROMOTE_FIELDS, {
            "filter": filter_ref,
            "slots": {"type": "integer", "minimum": 1, "maximum": s.max_k}},
            required=list(PROMOTE_FIELDS))]},
        "params": model_params(s),
        "explore": {"oneOf": [{"type": "null"}, EXPLORE_SCHEMA]}}, required=["strategy"])


def event(s: Settings) -> Schema:
    return _object(EVENT_FIELDS, {
        "session_id": identifier(s),
        "item_id": {**item_or_int_id(s), "description": "Stored as a string."},
        # the bound moves with the clock: this document's maximum is the one in force now
        "timestamp": {"type": "number", "minimum": 0,
                      "maximum": math.floor(time.time() + s.max_clock_skew),
                      "description": "Unix seconds; default: time of receipt. At most "
                                     f"{s.max_clock_skew:g} s ahead of the server's clock "
                                     "(400 beyond)."},
        "type": {"type": "string", "enum": list(EVENT_TYPES), "default": "view"},
        "rating": {"type": ["number", "null"], "minimum": -MAX_RATING, "maximum": MAX_RATING,
                   "description": "Finite; default (or null): implied by type."},
        "recommendation_id": {
            "type": ["string", "null"], "minLength": 1, "maxLength": MAX_RECOMMENDATION_ID,
            "pattern": RECOMMENDATION_ID_PATTERN,
            "description": "The answer the event acts on: a click, add_to_cart or purchase "
                           "is attributed to it (and to its variant); required with type "
                           "impression (an item shown in that answer's list, never learned "
                           "as interest)."}},
        required=["session_id", "item_id"],
        **{"if": {"required": ["type"], "properties": {"type": {"const": "impression"}}},
           "then": {"required": ["recommendation_id"],
                    "properties": {"recommendation_id": {"type": "string"}}}})


def batch(s: Settings, name: str, entry: Schema) -> Schema:
    """``{name: [entry, ...]}``: what ``values.batch_of`` accepts."""
    return _object((name,), {name: {"type": "array", "minItems": 1, "maxItems": s.max_batch,
                                    "items": entry}}, required=[name])


def events_body(s: Settings) -> Schema:
    one = {"$ref": "#/components/schemas/Event"}
    return {"oneOf": [one, batch(s, "events", one)]}


def item(s: Settings) -> Schema:
    short = identifier(s)
    return _object(ITEM_FIELDS, {
        "id": {**item_or_int_id(s), "description": "Optional in PUT (the path names the item)."},
        "name": {"type": "string", "maxLength": MAX_TEXT},
        "categories": {"type": "array", "maxItems": MAX_LIST, "items": short,
                       "description": "The first is the item's category for "
                                      "max_per_category."},
        "available": {"type": "boolean", "default": True},
        "price": {"type": "number", "minimum": 0, "maximum": MAX_PRICE},
        "tags": {"type": "array", "maxItems": MAX_LIST, "items": short},
        "attributes": {"type": "object", "maxProperties": MAX_LIST, "propertyNames": short,
                       "additionalProperties": ATTRIBUTE_VALUE}},
        description=f"At most {MAX_RECORD_BYTES} bytes as JSON.")


def items_body(s: Settings) -> Schema:
    return batch(s, "items", {"allOf": [{"$ref": "#/components/schemas/Item"},
                                        {"required": ["id"]}]})


def model_params(s: Settings, minimum: int = 0) -> Schema:
    properties: Schema = {}
    for name, limit in PARAMETERS.items():
        high = min(limit.high, s.index_cap) if name == "index_cap" else limit.high
        properties[name] = {"type": "integer" if limit.integer else "number",
                            "minimum": limit.low, "maximum": high,
                            "description": limit.meaning}
    return _object(tuple(PARAMETERS), properties, minProperties=minimum)


def model_change_body(s: Settings) -> Schema:
    return _object(MODEL_CHANGE_FIELDS, {"params": model_params(s, minimum=1),
                                         "pin": {"type": "boolean"}}, required=["params"])


def experiment_body(s: Settings) -> Schema:
    variant = _object(VARIANT_FIELDS, {
        "weight": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_VARIANT_WEIGHT,
                   "default": 1},
        "params": model_params(s)})
    return _object(EXPERIMENT_FIELDS, {"variants": {
        "type": "object", "minProperties": 2, "maxProperties": MAX_VARIANTS,
        "additionalProperties": variant},
        "placement": {"oneOf": [{"type": "null"}, {
            **placement_name(s), "description": "Score only the requests naming this "
            "placement (an existing one); others are untouched."}]}},
        required=["variants"])
