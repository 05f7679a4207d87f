"""The OpenAPI document's shared pieces (``openapi.py``): the error and answer responses, the
answer's schema, and the query parameters the GET list endpoints share."""

from __future__ import annotations

from typing import Any

from service.core.placements import SOURCES
from service.requests import schemas
from service.requests.values import MAX_EXCLUDE
from service.settings import Settings


def error_response() -> dict[str, Any]:
    return {"description": "Error", "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Error"}}}}


def answer_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Recommendations"}}}}


def exclude_parameter(s: Settings) -> dict[str, Any]:
    return {"name": "exclude", "in": "query", "required": False, "style": "form",
            "explode": True, "description": "An item id never to return (repeatable).",
            "schema": {"type": "array", "maxItems": MAX_EXCLUDE,
                       "items": {"type": "string", "minLength": 1,
                                 "maxLength": s.max_id_length}}}


def rule_parameters(s: Settings) -> list[dict[str, Any]]:
    """The rules of the GET list endpoints (the body's fields of POST /iid_recommend)."""
    return [
        exclude_parameter(s),
        {"name": "filter", "in": "query", "required": False,
         "description": "A Filter as URL-encoded JSON: only items whose catalogue record "
                        "satisfies every condition given.",
         "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Filter"}}}},
        {"name": "max_per_category", "in": "query", "required": False,
         "description": "At most this many items of one category (an item's first).",
         "schema": {"type": "integer", "minimum": 1, "maximum": s.max_k}},
        {"name": "explain", "in": "query", "required": False,
         "description": "Add because and source to every recommendation.",
         "schema": {"type": "boolean", "default": False}}]


def placement_parameter(s: Settings, strategy: str) -> dict[str, Any]:
    return {"name": "placement", "in": "query", "required": False,
            "description": f"A placement of strategy {strategy}: its fields are the defaults "
                           "the query's own override.",
            "schema": schemas.placement_name(s)}


def k_parameter(s: Settings) -> dict[str, Any]:
    return {"name": "k", "in": "query", "required": False,
            "description": "Number of recommendations.",
            "schema": {"type": "integer", "minimum": 1, "maximum": s.max_k, "default": 10}}


def answer_schema() -> dict[str, Any]:
    """Every list answer's shape."""
    return {
        "type": "object",
        "required": ["recommendations", "message", "recommendation_id"],
        "properties": {
            "recommendation_id": {
                "type": "string", "description": "Unique per answer: send it with "
                "the impressions and clicks of its items."},
            "variant": {"type": "string", "description": "The experiment variant "
                        "that scored the answer (a request with a session id, while "
                        "an experiment runs)."},
            "placement": {"type": "string", "description": "The placement the "
                          "request named."},
            "recommendations": {"type": "array", "items": {
                "type": "object", "required": ["id", "score"],
                "properties": {
                    "id": {"type": "string"},
                    "score": {"type": "number", "minimum": 0, "maximum": 1},
                    "because": {"type": "array", "maxItems": 3,
                                "items": {"type": "string"},
                                "description": "With explain: the request's items "
                                               "that contributed most (empty for "
                                               "trending items)."},
                    "source": {"type": "string", "enum": list(SOURCES),
                               "description": "With explain: where the item came "
                                              "from."},
                    "boost": {"type": "number", "description": "With explain: the "
                              "product of the placement's boosts the item matched."},
                    "promoted": {"type": "boolean", "description": "With explain: "
                                 "the placement's promotion placed it."}}}},
            "message": {"type": "string"}}}
