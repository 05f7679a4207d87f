"""The OpenAPI 3.1 description of the API and a readable page rendered from it (no CDN: the page
works offline, and the document is the single source of both). Which operations exist and the
key each needs come from the route table (``routes.ROUTES``); this module describes them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from service.api import access
from service.api.context import Route
from service.api.ingest import MAX_IDEMPOTENCY_KEY
from service.api.openapiparts import (
    answer_response,
    answer_schema,
    error_response,
    k_parameter,
    placement_parameter,
    rule_parameters,
)
from service.core.parameters import PARAMETERS
from service.requests import schemas
from service.settings import Settings


def openapi_document(s: Settings, routes: Sequence[Route]) -> dict[str, Any]:
    """The document for ``routes``: every documented route has exactly one operation here (a
    route without one, or an operation without its route, is an error)."""
    ident = schemas.identifier(s)
    errors = {code: error_response() for code in ("400", "401", "403", "413", "429", "503")}
    admin_errors = {code: error_response() for code in ("400", "401", "403", "503")}
    security: dict[str, list[dict[str, list[str]]]] = {
        access.PUBLIC: [{"apiKey": []}, {"bearer": []}, {"apiKeyQuery": []}, {}],
        access.ADMIN: [{"apiKey": []}, {"bearer": []}, {}],
        access.OPERATOR: [{"apiKey": []}, {"bearer": []}, {}], access.OPEN: [{}]}

    def done(description: str, fields: dict[str, Any]) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": {
            "type": "object", "properties": fields}}}}

    def item_admin(summary: str, flag: str) -> dict[str, Any]:
        return {"summary": summary,
                "parameters": [{"name": "item_id", "in": "path", "required": True,
                                "schema": ident}],
                "responses": {"200": done("Done", {"item_id": {"type": "string"},
                                                   flag: {"type": "boolean"}}),
                              **admin_errors}}
    item_path = {"name": "item_id", "in": "path", "required": True, "schema": ident}
    record = {"description": "The record", "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Item"}}}}
    model = {"description": "The model record", "content": {"application/json": {"schema": {
        "type": "object", "required": ["version", "params", "pinned", "tuned_at", "tuning"],
        "properties": {"version": {"type": "integer", "description": "0: never written"},
                       "params": schemas.model_params(s), "pinned": {"type": "array", "items": {
                           "type": "string", "enum": list(PARAMETERS)}},
                       "tuned_at": {"type": ["number", "null"]},
                       "sequence": {"type": ["object", "null"],
                                    "description": "The sequence model's last run: when, on "
                                                   "how many sessions and predictions, how "
                                                   "many items it knows (null: none yet)"},
                       "tuning": {"type": "object", "required": ["state", "auto", "last_run"],
                                  "properties": {
                                      "state": {"type": "string",
                                                "enum": ["idle", "running"]},
                                      "run": {"type": ["string", "null"]},
                                      "auto": {"type": "boolean"},
                                      "last_run": {"type": ["object", "null"]}}}}}}}}
    experiment_path = {"name": "name", "in": "path", "required": True, "schema": ident}
    placement_path = {"name": "name", "in": "path", "required": True,
                      "schema": schemas.placement_name(s)}
    placement = {"description": "The placement", "content": {"application/json": {
        "schema": {"type": "object", "required": ["name", "strategy"]}}}}
    count = {"type": "integer", "minimum": 0}
    variant_report = {"type": "object", "properties": {
        "weight": {"type": "number"}, "params": {"type": "object"},
        "sessions": {**count, "description": "Distinct sessions answered (a HyperLogLog's "
                                             "estimate: within about 1 %)."},
        "answers": count, "impressions": count,
        "clicks": {**count, "description": "Clicks attributed to the variant's answers."},
        "ctr": {"type": ["number", "null"], "description": "clicks / impressions"},
        "ctr_interval": {"type": ["array", "null"], "items": {"type": "number"},
                         "description": "95 % Wilson interval of the CTR."},
        "add_to_cart": count, "purchases": count}}
    experiment_report = {"description": "The experiment and its report", "content": {
        "application/json": {"schema": {
            "type": "object", "required": ["name", "state", "variants", "comparisons"],
            "properties": {
                "name": {"type": "string"},
                "state": {"type": "string", "enum": ["running", "ended"]},
                "started_at": {"type": "number"}, "ended_at": {"type": ["number", "null"]},
                "variants": {"type": "object", "additionalProperties": variant_report},
                "comparisons": {"type": "object", "additionalProperties": {
                    "type": "object", "properties": {
                        "against": {"type": "string"},
                        "ctr_difference": {"type": ["number", "null"]},
                        "p_value": {"type": ["number", "null"], "description":
                                    "Two-sided, pooled two-proportion z-test of the CTRs."}}}}
            }}}}}
    operations: dict[str, dict[str, Any]] = {
            "/iid_recommend": {"post": {
                "summary": "Recommend from the interactions the browser sends",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/RecommendRequest"},
                    "example": {"user_interactions": {
                        "89898": {"timestamp": 1704060026, "rating": 4.5},
                        "22898": {"timestamp": 1704060026, "rating": 4.5}},
                        "k": 10, "recommend_seen": True}}}},
                "responses": {"200": answer_response("Recommendations"), **errors}}},
            "/events": {"post": {
                "summary": "Accept one event or a batch (all or nothing)",
                "description": "Answered 202 only once the events are stored in Redis. A body "
                               "sent as text/plain (navigator.sendBeacon) is read as JSON. "
                               "With an Idempotency-Key header, a retry of the same request "
                               "within a day is answered as the first was (header "
                               "Idempotent-Replayed: true) and not stored again; the same key "
                               "with another body is 409.",
                "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                                "schema": {"type": "string", "minLength": 1,
                                           "maxLength": MAX_IDEMPOTENCY_KEY,
                                           "pattern": "^[!-~]+$"}}],
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": schemas.events_body(s)}}},
                "responses": {"409": error_response(), "202": {
                    "description": "Accepted", "content": {
                    "application/json": {"schema": {
                        "type": "object", "required": ["accepted"],
                        "properties": {"accepted": {"type": "integer"}}}}}}, **errors}}},
            "/sessions/{session_id}/recommendations": {"get": {
                "summary": "Recommend from a session's live interactions stored in Redis",
                "parameters": [
                    {"name": "session_id", "in": "path", "required": True, "schema": ident},
                    k_parameter(s), *rule_parameters(s), placement_parameter(s, "session"),
                    {"name": "recommend_seen", "in": "query", "required": False,
                     "schema": {"type": "boolean", "default": False}}],
                "responses": {"200": answer_response("Recommendations"), **errors}}},
            "/items/{item_id}/similar": {"get": {
                "summary": "Items most co-visited with one item (never the item itself); "
                           "fewer than k, completed from its catalogue record",
                "parameters": [
                    {"name": "item_id", "in": "path", "required": True, "schema": ident},
                    k_parameter(s), *rule_parameters(s), placement_parameter(s, "similar")],
                "responses": {"200": answer_response("Similar items"), **errors}}},
            "/items/{item_id}/bought-together": {"get": {
                "summary": "Items added to cart or bought in the same sessions as one item, "
                           "completed with similar items when carts are too few (the message "
                           "says so; with explain, each row's source)",
                "parameters": [
                    {"name": "item_id", "in": "path", "required": True, "schema": ident},
                    k_parameter(s), *rule_parameters(s),
                    placement_parameter(s, "bought_together")],
                "responses": {"200": answer_response("Items bought together"), **errors}}},
            "/popular": {"get": {
                "summary": "Trending items (time-decayed popularity)",
                "parameters": [k_parameter(s), *rule_parameters(s),
                               placement_parameter(s, "popular")],
                "responses": {"200": answer_response("Trending items"), **errors}}},
            "/rerank": {"post": {
                "summary": "Order a given list (a category page, search results) for the "
                           "session",
                "description": "Items the session's neighbourhood scores come first, by "
                               "score; then those other sessions hold, by how many; then the "
                               "rest in their given order. The answer is the given items "
                               "minus those the rules leave out (and hidden or unavailable "
                               "ones), at most k.",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": schemas.rerank_body(s),
                    "example": {"user_interactions": {"89898": {}}, "items": ["1", "2", "3"],
                                "session_id": "s-1"}}}},
                "responses": {"200": answer_response("The items, ordered"), **errors}}},
            "/admin/placements": {"get": {
                "summary": "Every placement",
                "responses": {"200": done("The placements", {"placements": {
                    "type": "array", "items": {"type": "object"}}}), **admin_errors}}},
            "/admin/placements/{name}": {
                "put": {
                    "summary": "Create or replace a placement (every serve process follows "
                               "within a second)",
                    "parameters": [placement_path],
                    "requestBody": {"required": True, "content": {"application/json": {
                        "schema": schemas.placement_body(s),
                        "example": {"strategy": "session", "k": 4,
                                    "rules": {"max_per_category": 2},
                                    "boosts": [{"filter": {"tags": ["sale"]},
                                                "factor": 1.5}],
                                    "promote": {"filter": {"tags": ["house-brand"]},
                                                "slots": 1}}}}},
                    "responses": {"200": placement, "409": error_response(), **admin_errors}},
                "get": {"summary": "A placement", "parameters": [placement_path],
                        "responses": {"200": placement, "404": error_response(), **admin_errors}},
                "delete": {"summary": "Delete a placement", "parameters": [placement_path],
                           "responses": {"200": done("Done", {"name": {"type": "string"},
                                                              "deleted": {"type": "boolean"}}),
                                         "404": error_response(), **admin_errors}}},
            "/admin/items/{item_id}/hide": {
                "post": item_admin("Hide an item: it is never recommended (within 1 s)",
                                   "hidden"),
                "delete": item_admin("Unhide an item", "hidden")},
            "/admin/items/{item_id}": {"delete": {
                **item_admin("Forget an item's learned state", "forgotten"),
                "description": "Deletes its neighbour and cart indexes, frequency and "
                               "trending score and scrubs it from the histories and carts "
                               "those indexes list (histories_scrubbed counts the "
                               "histories)."}},
            "/admin/sessions/{session_id}": {"delete": {
                "summary": "Reset a session: its live interactions and learned history",
                "parameters": [{"name": "session_id", "in": "path", "required": True,
                                "schema": ident}],
                "responses": {"200": done("Done", {"session_id": {"type": "string"},
                                                   "reset": {"type": "boolean"}}),
                              **admin_errors}}},
            "/items/{item_id}": {
                "put": {
                    "summary": "Store an item's catalogue record, replacing any earlier one",
                    "parameters": [item_path],
                    "requestBody": {"required": True, "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/Item"}}}},
                    "responses": {"200": record, **admin_errors}},
                "get": {"summary": "An item's catalogue record", "parameters": [item_path],
                        "responses": {"200": record, "404": error_response(), **admin_errors}},
                "delete": {
                    "summary": "Remove an item's catalogue record (its learned state stays)",
                    "parameters": [item_path],
                    "responses": {"200": done("Done", {"item_id": {"type": "string"},
                                                       "deleted": {"type": "boolean"}}),
                                  **admin_errors}}},
            "/items": {"post": {
                "summary": "Store many catalogue records (all or none are valid)",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": schemas.items_body(s)}}},
                "responses": {"200": done("Stored", {"stored": {"type": "integer"}}),
                              **admin_errors}}},
            "/model": {"get": {
                "summary": "The scoring parameters in force: the shared record's version and "
                           "values over this process' flags",
                "responses": {"200": model, "503": error_response()}}},
            "/admin/model": {"put": {
                "summary": "Set scoring parameters for every serve process (within a "
                           "second, no restart)",
                "description": "Values not named keep theirs. pin: true pins the named "
                               "parameters (tuning never changes them), false unpins them; "
                               "without it their pins stay as they are.",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": schemas.model_change_body(s),
                    "example": {"params": {"neighbours": 100, "position_decay": 0.5},
                                "pin": True}}}},
                "responses": {"200": model, **admin_errors}}},
            "/admin/tune": {"post": {
                "summary": "Start a tuning run on the live state now",
                "description": "A holdout of the sessions that arrived last (by the "
                               "server's clock), a search over the unpinned parameters, and "
                               "a promotion only if the best beats the parameters in force "
                               "in every slice of arrival; in a process of its own. 202 with "
                               "the run's id, or the running run's; GET /model reports it "
                               "(tuning.state, tuning.last_run).",
                "responses": {"202": done("Started", {"run": {"type": "string"}}),
                              "409": error_response(), **admin_errors}}},
            "/admin/experiments/{name}": {
                "put": {
                    "summary": "Start an experiment (one runs at a time)",
                    "description": "Variants are parameter sets over the version in force, "
                                   "with weights. A request with a session id is assigned a "
                                   "variant from (experiment, session id) in proportion to "
                                   "the weights and scored with its parameters. The same "
                                   "experiment sent again is a no-op; another while one runs "
                                   "is 409.",
                    "parameters": [experiment_path],
                    "requestBody": {"required": True, "content": {"application/json": {
                        "schema": schemas.experiment_body(s),
                        "example": {"variants": {
                            "A": {"weight": 1, "params": {}},
                            "B": {"weight": 1, "params": {"position_decay": 1.0}}}}}}},
                    "responses": {"200": experiment_report, "409": error_response(),
                                  **admin_errors}},
                "get": {"summary": "An experiment's report (running or ended)",
                        "parameters": [experiment_path],
                        "responses": {"200": experiment_report, "404": error_response(),
                                      **admin_errors}},
                "delete": {"summary": "End the running experiment (its report stays)",
                           "parameters": [experiment_path],
                           "responses": {"200": experiment_report, "404": error_response(),
                                         **admin_errors}}},
            "/admin/dashboard/data": {"get": {
                "summary": "What the dashboard plots: the last hour per minute, the model, the "
                           "running experiment's report, trending items, the counters",
                "description": "minutes: events_per_s, requests_per_s, latency_p50_ms, "
                               "latency_p99_ms, freshness_p50_ms, freshness_p99_ms (histogram "
                               "bucket bounds; null in a minute without observations), from "
                               "Redis: every API process shows the same numbers.",
                "responses": {"200": {"description": "The dashboard's data"},
                              **admin_errors}}},
            "/dashboard": {"get": {
                "summary": "The operator's dashboard (asks for a secret key, kept in the "
                           "tab's sessionStorage)",
                "responses": {"200": {"description": "HTML"}}}},
            "/stats": {"get": {"summary": "Counters of the pipeline", "responses": {
                "200": {"description": "Counters", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Stats"}}}}, "503": error_response()}}},
            "/healthz": {"get": {"summary": "The process is alive",
                                 "responses": {"200": {"description": "Alive"}}}},
            "/readyz": {"get": {"summary": "Redis is reachable",
                                "responses": {"200": {"description": "Ready"},
                                              "503": error_response()}}},
            "/metrics": {"get": {"summary": "Prometheus metrics (a secret key once keys are "
                                            "configured)",
                                 "responses": {"200": {"description": "Text format"},
                                               "401": error_response(), "403": error_response()}}},
            "/sdk.js": {"get": {"summary": "The browser SDK",
                                "responses": {"200": {"description": "JavaScript"}}}},
            "/demo": {"get": {"summary": "A demo shop using the SDK",
                              "responses": {"200": {"description": "HTML"}}}},
    }
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if route.documented:
            operation = operations[route.path].pop(route.method.lower())
            paths.setdefault(route.path, {})[route.method.lower()] = {
                **operation, "security": security[route.access]}
    unrouted = [f"{m.upper()} {p}" for p, ops in operations.items() for m in ops]
    if unrouted:
        raise ValueError(f"operations without a route: {unrouted}")
    return {
        "openapi": "3.1.0",
        "info": {"title": "sessionrec", "version": "0.1.0",
                 "description": "Real-time session-based recommendations. Limits: body "
                                f"{s.max_body_bytes} bytes, {s.max_interactions} interactions "
                                f"per request, {s.max_batch} events per batch, ids of at most "
                                f"{s.max_id_length} characters, k at most {s.max_k}."},
        "paths": paths,
        "components": {"securitySchemes": {
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                       "description": "Publishable or secret key (needed once keys are "
                                      "configured; admin routes need a secret key)."},
            "apiKeyQuery": {"type": "apiKey", "in": "query", "name": "key",
                            "description": "A publishable key, for navigator.sendBeacon."},
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "Any key as `Authorization: Bearer KEY` (what "
                                      "Prometheus sends); /metrics needs a secret key once "
                                      "keys are configured."},
        }, "schemas": {
            "RecommendRequest": schemas.recommend_body(s),
            "Filter": schemas.filter_schema(s),
            "Event": schemas.event(s),
            "Item": schemas.item(s),
            "Recommendations": answer_schema(),
            "Stats": {"type": "object", "properties": {
                name: {"type": "integer"} for name in (
                    "events_accepted", "events_processed", "events_dead", "events_unlisted",
                    "pending", "items", "live_sessions", "impressions",
                    "attributed_clicks")}},
            "Error": {
                "type": "object", "required": ["error"],
                "properties": {"error": {
                    "type": "object", "required": ["code", "message"],
                    "properties": {"code": {"type": "string"},
                                   "message": {"type": "string"},
                                   "field": {"type": ["string", "null"]}}}}},
        }},
    }
