"""The scoring parameters as one shared, versioned record: the pure record (overlay, pins,
fields) alone, then GET /model and PUT /admin/model against a real Redis (standalone and
cluster), followed by another serve process within a few seconds."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import time
from typing import Any

import pytest

from service.answers.recommender import Recommender
from service.api.app import create_app
from service.api.parameters import PUBLIC_RUN, follow_model
from service.api.recommend import RECOMMENDER
from service.core.modelparams import ModelRecord
from service.core.parameters import PARAMETERS
from service.core.scoring import Params
from service.settings import Settings
from service.store.state import Store
from tests.conftest import Client
from tests.helpers import drain

SECRET = "sk_test_model"


# --- the record alone -------------------------------------------------------------------------
def test_the_record_overlays_its_values_on_each_process_flags() -> None:
    base = Params(query_items=7, neighbours=30)
    assert ModelRecord().params(base) is base
    record = ModelRecord(3, {"neighbours": 50, "idf_weight": 0.0})
    assert record.params(base) == dataclasses.replace(base, neighbours=50, idf_weight=0.0)
    assert record.params(base).query_items == 7  # not in the record: the flag holds


def test_pins_follow_the_change_that_names_them() -> None:
    record = ModelRecord(1, {"neighbours": 50}, ("neighbours",))
    pinned = record.updated({"idf_weight": 2.0, "query_items": 5}, pin=True)
    assert pinned.pinned == ("idf_weight", "neighbours", "query_items")
    assert dict(pinned.values) == {"neighbours": 50, "idf_weight": 2.0, "query_items": 5}
    assert pinned.updated({"neighbours": 60}, pin=None).pinned == pinned.pinned
    assert pinned.updated({"neighbours": 60}, pin=False).pinned == ("idf_weight", "query_items")


def test_fields_round_trip_and_unknown_or_invalid_values_are_left_out() -> None:
    record = ModelRecord(0, {"neighbours": 50, "position_decay": 0.5}, ("neighbours",), 12.5)
    fields = {k.encode(): v.encode() for k, v in record.fields().items()}
    assert ModelRecord.from_fields({**fields, b"version": b"4"}) == dataclasses.replace(
        record, version=4)
    odd = {**fields, b"version": b"5",
           b"values": b'{"neighbours": 50, "from_a_newer_version": 1, "idf_weight": -3}'}
    assert dict(ModelRecord.from_fields(odd).values) == {"neighbours": 50}
    assert ModelRecord.from_fields({}) == ModelRecord()


@pytest.mark.parametrize(("name", "value", "wanted"), [
    ("neighbours", 50, 50), ("neighbours", 50.0, 50), ("neighbours", 50.5, "whole number"),
    ("neighbours", True, "whole number"), ("neighbours", "50", "whole number"),
    ("neighbours", 0, "between"), ("idf_weight", 0, 0.0), ("idf_weight", math.nan, "between"),
    ("idf_weight", math.inf, "between"), ("idf_weight", -0.5, "between"),
    ("position_decay", 21, "between"), ("sequence_weight", None, "a number")])
def test_each_parameter_has_its_type_and_range(name: str, value: Any, wanted: Any) -> None:
    got = PARAMETERS[name].check(value)
    if isinstance(wanted, str):
        assert isinstance(got, str) and wanted in got
    else:
        assert got == wanted and type(got) is type(wanted)


# --- over HTTP, on Redis ----------------------------------------------------------------------
@pytest.fixture
def shop_settings(settings: Settings) -> Settings:
    return settings.replace(secret_keys=SECRET)


async def shop(aiohttp_client: Any, settings: Settings) -> Client:
    client: Client = await aiohttp_client(create_app(settings), headers={"X-API-Key": SECRET})
    return client


async def test_a_change_is_versioned_pinned_and_read_back(aiohttp_client: Any,
                                                          shop_settings: Settings) -> None:
    client = await shop(aiohttp_client, shop_settings)
    first = await (await client.get("/model")).json()
    assert first == {"version": 0, "params": dataclasses.asdict(
        Params.from_settings(shop_settings)), "pinned": [], "tuned_at": None,
        "sequence": None, "tuning": {
            "state": "idle", "run": None, "auto": shop_settings.auto_tune, "last_run": None}}
    resp = await client.put("/admin/model", json={"params": {"neighbours": 50,
                                                             "idf_weight": 0}, "pin": True})
    assert resp.status == 200
    body = await resp.json()
    assert body["version"] == 1 and body["pinned"] == ["idf_weight", "neighbours"]
    assert body["params"]["neighbours"] == 50 and body["params"]["idf_weight"] == 0.0
    assert body["params"]["query_items"] == shop_settings.query_items
    assert await (await client.get("/model")).json() == body
    unpinned = await (await client.put("/admin/model", json={
        "params": {"neighbours": 60}, "pin": False})).json()
    assert unpinned["version"] == 2 and unpinned["pinned"] == ["idf_weight"]
    assert unpinned["params"]["neighbours"] == 60 and unpinned["params"]["idf_weight"] == 0.0


@pytest.mark.parametrize(("body", "field"), [
    ({}, "params"), ({"params": {}}, "params"), ({"params": [1]}, "params"),
    ({"params": {"neighbors": 5}}, "params.neighbors"),
    ({"params": {"neighbours": "many"}}, "params.neighbours"),
    ({"params": {"neighbours": 2.5}}, "params.neighbours"),
    ({"params": {"idf_weight": -1}}, "params.idf_weight"),
    ({"params": {"index_cap": 501}}, "params.index_cap"),  # above what the indexes hold
    ({"params": {"neighbours": 5}, "pin": "yes"}, "pin"),
    ({"params": {"neighbours": 5}, "version": 3}, "version")])
async def test_a_bad_change_is_a_400_naming_the_field_and_stores_nothing(
        aiohttp_client: Any, shop_settings: Settings, body: dict[str, Any], field: str) -> None:
    client = await shop(aiohttp_client, shop_settings.replace(index_cap=500))
    resp = await client.put("/admin/model", json=body)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["field"] == field and error["message"]
    assert (await (await client.get("/model")).json())["version"] == 0


async def test_the_model_is_changed_only_with_the_secret_key(aiohttp_client: Any,
                                                             shop_settings: Settings) -> None:
    keyed = shop_settings.replace(publishable_keys="pk_test_model")
    public: Client = await aiohttp_client(create_app(keyed),
                                          headers={"X-API-Key": "pk_test_model"})
    assert (await public.get("/model")).status == 200
    assert (await public.put("/admin/model", json={"params": {"neighbours": 5}})).status == 403
    closed: Client = await aiohttp_client(create_app(shop_settings.replace(secret_keys="")))
    refused = await closed.put("/admin/model", json={"params": {"neighbours": 5}})
    assert refused.status == 403 and (await refused.json())["error"]["code"] == "admin_disabled"
    assert (await (await public.get("/model")).json())["version"] == 0


A_RUN = {"id": "r1", "trigger": "auto", "started_at": 1000.0, "finished_at": 1100.0,
         "sessions_learned": 5000, "holdout_sessions": 3000, "predictions": 12000,
         "candidates": 105, "promoted": False, "sequence": {"sessions": 900},
         "held_back": "the gain in slice 3 is not above 0",
         "current": {"hr_at_20": 0.61, "mrr_at_20": 0.25},
         "best": {"hr_at_20": 0.62, "mrr_at_20": 0.26, "params": {"query_items": 10}},
         "gain": {"per_prediction": 0.004, "standard_error": 0.002},
         "slices": [{"from": 1.0, "to": 2.0, "predictions": 3000, "gain": -0.01}],
         "cross_fitted": {"query_items": {"5": 0.912, "10": 0.917}}}


async def test_a_runs_scores_are_shown_to_a_secret_key_only(aiohttp_client: Any,
                                                            shop_settings: Settings) -> None:
    """The red team's finding: with the publishable key, every run's scores, slice gains, best
    candidate and cross-fitted worths were a free score of how far crafted sessions moved the
    search (and the newest slice's end, where the holdout stops). A page's key sees that a run
    happened, its size and whether it promoted; the operator's sees the whole record."""
    keyed = shop_settings.replace(publishable_keys="pk_test_model")
    store = Store(keyed)
    try:
        await store.model.update(lambda r: dataclasses.replace(r, last_run=json.dumps(A_RUN)))
    finally:
        await store.close()
    app = create_app(keyed)
    public: Client = await aiohttp_client(app, headers={"X-API-Key": "pk_test_model"})
    shown = (await (await public.get("/model")).json())["tuning"]["last_run"]
    assert shown == {name: A_RUN[name] for name in PUBLIC_RUN}
    assert not {"best", "current", "gain", "slices", "cross_fitted", "held_back"} & set(shown)
    operator = await (await public.get("/model", headers={"X-API-Key": SECRET})).json()
    assert operator["tuning"]["last_run"] == A_RUN
    # a server with no keys at all serves no page a stranger could read it from
    open_app = create_app(keyed.replace(publishable_keys="", secret_keys=""))
    anyone: Client = await aiohttp_client(open_app)
    assert (await (await anyone.get("/model")).json())["tuning"]["last_run"] == A_RUN


async def test_concurrent_changes_are_all_kept(aiohttp_client: Any,
                                               shop_settings: Settings) -> None:
    """Every writer reads, changes and writes unless another wrote first: none is lost."""
    client = await shop(aiohttp_client, shop_settings)
    changes = [{"neighbours": 10 + n} if n % 2 else {"query_items": 1 + n} for n in range(10)]
    answers = await asyncio.gather(*(client.put("/admin/model", json={"params": c, "pin": True})
                                     for c in changes))
    assert [a.status for a in answers] == [200] * 10
    got = await (await client.get("/model")).json()
    assert got["version"] == 10 and got["pinned"] == ["neighbours", "query_items"]
    assert {b["version"] for b in [await a.json() for a in answers]} == set(range(1, 11))


async def test_another_serve_process_follows_within_a_few_seconds(
        aiohttp_client: Any, shop_settings: Settings) -> None:
    """Another process' answers change with the record: index_cap 1 leaves /similar one
    neighbour session to read."""
    first = await shop(aiohttp_client, shop_settings)
    other = await shop(aiohttp_client, shop_settings)
    events = [{"session_id": f"s{n}", "item_id": i, "timestamp": 1000 + 10 * n + step}
              for n, pair in enumerate((("a", "b"), ("a", "c"), ("a", "d")))
              for step, i in enumerate(pair)]
    assert (await first.post("/events", json={"events": events})).status == 202
    await drain(shop_settings)

    async def similar(client: Client) -> list[str]:
        body = await (await client.get("/items/a/similar?k=5")).json()
        return sorted(r["id"] for r in body["recommendations"])

    assert await similar(other) == ["b", "c", "d"]
    assert (await first.put("/admin/model", json={"params": {"index_cap": 1}})).status == 200
    assert await similar(first) == ["d"]  # the writer at once
    started = time.monotonic()
    while await similar(other) != ["d"]:
        assert time.monotonic() - started < 3.0, "not followed within 3 s"
        await asyncio.sleep(0.05)
    assert other.app[RECOMMENDER].record.version == 1


async def test_a_redis_that_comes_back_empty_takes_each_process_back_to_its_flags(
        shop_settings: Settings) -> None:
    store = Store(shop_settings)
    recommender = Recommender(store, shop_settings)
    following = asyncio.create_task(follow_model(recommender, store, every=0.02))
    try:
        await store.model.update(lambda r: r.updated({"neighbours": 7}, pin=True))
        await _until(lambda: recommender.params.neighbours == 7)
        await store.redis.delete(store.keys.model())
        await _until(lambda: recommender.params == recommender.base)
        assert recommender.record.version == 0
    finally:
        following.cancel()
        await store.close()


async def _until(condition: Any, timeout: float = 3.0) -> None:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout
        await asyncio.sleep(0.01)
