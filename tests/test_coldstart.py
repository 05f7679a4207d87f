"""Cold start, against a real Redis (standalone and cluster): ``similar`` for an item with a
catalogue record and no behaviour answers from its record, and completes a short co-visited
answer from it; a record's first-seen time is kept when the record is replaced and goes with
it; a placement's ``explore`` brings new items that fit the session's categories into the
answer's last slots, marked ``"source": "new"``, within the rules and k; the configuration is
refused naming the field; and what it costs stays bounded whatever a category holds."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from service.answers import explore as explore_answers
from service.answers.fromrecord import MSG_RECORD, MSG_SIMILAR_RECORD
from service.answers.recommender import Answer, Recommender
from service.api.app import create_app
from service.core import coldstart
from service.core.catalog import Record
from service.core.coldstart import EXPLORE_TESTS, RECORD_TESTS, Explore, explore_slots
from service.core.layout import item_hash
from service.core.rules import Filter, Rules
from service.requests.explore import explore_config
from service.requests.values import Invalid
from service.settings import Settings
from service.store.state import Store
from tests.conftest import Client
from tests.helpers import drain

pytestmark = pytest.mark.kernel

SECRET = "sk_test_coldstart"
DAY = 86_400.0


@pytest.fixture
async def shop(aiohttp_client: Any, settings: Settings) -> Client:
    app = create_app(settings.replace(publishable_keys="pk_test_coldstart", secret_keys=SECRET))
    client: Client = await aiohttp_client(app, headers={"X-API-Key": SECRET})
    return client


async def put(client: Client, items: list[dict[str, Any]]) -> None:
    reply = await client.post("/items", json={"items": items})
    assert reply.status == 200, await reply.text()


RECORDS = [
    {"id": "new", "categories": ["shoes"], "tags": ["running"], "price": 100,
     "attributes": {"colour": "red"}},
    {"id": "twin", "categories": ["shoes"], "tags": ["running"], "price": 110,
     "attributes": {"colour": "red"}},  # shares everything: 2 + 1 + 1 + 1 of 5
    {"id": "cousin", "categories": ["shoes"], "price": 300},  # the category: 2 of 5
    {"id": "stranger", "categories": ["hats"], "price": 90},  # the price band: 1 of 5
    {"id": "far", "categories": ["hats"], "price": 900},  # nothing
    {"id": "gone", "categories": ["shoes"], "tags": ["running"], "price": 100,
     "attributes": {"colour": "red"}, "available": False},
    {"id": "hidden", "categories": ["shoes"], "tags": ["running"], "price": 100,
     "attributes": {"colour": "red"}},
]


async def similar(client: Client, item: str, query: str = "", k: int = 10) -> dict[str, Any]:
    reply = await client.get(f"/items/{item}/similar?k={k}&explain=true{query}")
    assert reply.status == 200, await reply.text()
    body: dict[str, Any] = await reply.json()
    return body


async def test_similar_answers_from_the_record_of_an_item_without_behaviour(
        shop: Client, settings: Settings) -> None:
    await put(shop, RECORDS)
    assert (await shop.post("/admin/items/hidden/hide")).status == 200
    body = await similar(shop, "new")
    rows = body["recommendations"]
    assert [r["id"] for r in rows] == ["twin", "cousin", "stranger"]
    assert [r["score"] for r in rows] == [1.0, 0.4, 0.2]
    assert all(r["source"] == "record" and r["because"] == [] for r in rows)
    assert body["message"] == MSG_RECORD
    # within the request's rules, k kept where it can be, the message saying when it cannot
    body = await similar(shop, "new", "&exclude=twin", k=1)
    assert [r["id"] for r in body["recommendations"]] == ["cousin"]
    body = await similar(shop, "new", '&filter={"categories":["hats"]}')
    assert [r["id"] for r in body["recommendations"]] == ["stranger"]
    assert "1 co-visited or alike items satisfy" in body["message"]
    body = await similar(shop, "new", "&max_per_category=1")
    assert [r["id"] for r in body["recommendations"]] == ["twin", "stranger"]
    # an item without a record still answers as before
    body = await similar(shop, "unknown")
    assert body["recommendations"] == [] and "No session" in body["message"]


async def test_a_short_co_visited_answer_is_completed_from_the_record(
        shop: Client, settings: Settings) -> None:
    await put(shop, RECORDS)
    events = [{"session_id": f"s{n}", "item_id": item, "timestamp": 1000 + n * 10 + step}
              for n in range(3) for step, item in enumerate(["twin", "x"])]
    assert (await shop.post("/events", json={"events": events})).status == 202
    await drain(settings)
    body = await similar(shop, "twin", k=3)
    rows = body["recommendations"]
    assert [(r["id"], r["source"]) for r in rows] == [
        ("x", "session"), ("hidden", "record"), ("new", "record")]  # ties: by id
    assert rows[0]["score"] >= rows[1]["score"] >= rows[2]["score"] > 0
    assert body["message"] == MSG_SIMILAR_RECORD
    # enough co-visited items: the record adds nothing
    body = await similar(shop, "twin", k=1)
    assert [r["id"] for r in body["recommendations"]] == ["x"]


async def test_the_first_seen_time_is_kept_by_a_replacement_and_goes_with_the_record(
        settings: Settings) -> None:
    store = Store(settings)
    await store.prepare()
    try:
        await store.items.put([Record("i", categories=("a",))], now=1000.0)
        await store.items.put([Record("i", categories=("b",))], now=2000.0)
        assert await store.items.first_seen("i") == 1000.0
        index = await store.items.index()
        row = index.row_of[int.from_bytes(item_hash("i"), "little")]
        assert index.seen[row] == 1000.0 and index.row_keys[row] == ("c\0b",)
        other = Store(settings)  # another process reads the catalogue whole
        try:
            copy = await other.items.index()
            assert copy.seen[copy.row_of[int.from_bytes(item_hash("i"), "little")]] == 1000.0
        finally:
            await other.close()
        assert await store.items.delete("i")
        assert await store.items.first_seen("i") is None
        before = time.time()
        await store.items.put([Record("i")])  # back: first seen again, now
        seen = await store.items.first_seen("i")
        assert seen is not None and before <= seen <= time.time()
        index = await store.items.index()
        assert index.seen[index.row_of[int.from_bytes(item_hash("i"), "little")]] == seen
    finally:
        await store.close()


async def learned_shop(settings: Settings, now: float) -> tuple[Store, Recommender]:
    """Old shoes and hats with behaviour; new items of several kinds."""
    store = Store(settings)
    await store.prepare()
    old = [Record(f"shoe{n}", categories=("shoes",), price=50.0 + n) for n in range(12)] + \
        [Record(f"hat{n}", categories=("hats",), price=20.0) for n in range(4)]
    await store.items.put(old, now=now - 90 * DAY)
    new = [Record("new-shoe", categories=("shoes",), price=60.0, tags=("sale",)),
           Record("new-hat", categories=("hats",)),
           Record("new-gone", categories=("shoes",), available=False),
           Record("new-excluded", categories=("shoes",)),
           Record("new-seen", categories=("shoes",)),
           Record("new-popular", categories=("shoes",))]
    await store.items.put(new, now=now - DAY)
    await store.items.put([Record("month-old", categories=("shoes",))], now=now - 30 * DAY)
    events = []
    for s in range(12):
        for step in range(4):
            events.append({"session_id": f"s{s}", "item_id": f"shoe{(s + step) % 12}",
                           "timestamp": 1000 + s * 10 + step})
        events.append({"session_id": f"s{s}", "item_id": "new-popular",
                       "timestamp": 1000 + s * 10 + 5})
    await ingest(settings, events)
    return store, Recommender(store, settings)


async def ingest(settings: Settings, events: list[dict[str, Any]]) -> None:
    from service.core.model import Event
    from tests.helpers import ingest as helper_ingest
    await helper_ingest(settings, [Event(e["session_id"], e["item_id"], float(e["timestamp"]))
                                   for e in events])
    await drain(settings)


SESSION = [("shoe1", 1010.0, 1.0), ("shoe2", 1011.0, 1.0), ("new-seen", 1012.0, 1.0)]


async def test_explore_brings_a_new_item_that_fits_the_session_marked_new(
        settings: Settings) -> None:
    now = time.time()
    store, recommender = await learned_shop(settings, now)
    try:
        items = [item for item, _, _ in SESSION]
        rules = Rules(exclude=("new-excluded",))
        plain = await recommender.recommend(SESSION, 10, False, rules=rules)
        assert len(plain.rows()) == 10

        async def explored(answer: Answer, k: int = 10, share: float = 0.1,
                           age: float = 7.0, rules: Rules = rules) -> Answer:
            return await explore_answers.explore(recommender, answer, items, k, share, age,
                                                 rules, now=now, rng=random.Random(1))
        answer = await explored(plain)
        rows = answer.rows()
        assert len(rows) == 10
        assert rows[:9] == plain.rows()[:9]
        assert rows[9]["id"] == "new-shoe" and rows[9]["source"] == "new"
        assert rows[9]["score"] == plain.rows()[9]["score"]
        assert "new items" in answer.message
        assert answer.listed == b"".join(item_hash(r["id"]) for r in rows)
        # the new hat fits no category of the session; too old, unavailable, excluded, seen
        # and well-known items are not new
        ids = [r["id"] for r in rows]
        for never in ("new-hat", "month-old", "new-gone", "new-excluded", "new-seen",
                      "new-popular"):
            assert never not in [r["id"] for r in rows if r.get("source") == "new"]
        assert len(set(ids)) == len(ids)
        # a filter the new item fails, or an age it is past: the answer unchanged
        priced = Rules(filter=Filter(price_max=55.0))
        base = await recommender.recommend(SESSION, 10, False, rules=priced)
        assert await explored(base, rules=priced) is base
        assert await explored(plain, age=0.5) is plain
        # a larger share takes more slots only when more new items fit
        wide = await explored(plain, share=0.5)
        assert [r["id"] for r in wide.rows() if r.get("source") == "new"] == \
            ["new-shoe"]
        # an answer already stamped keeps its id
        assert answer.recommendation_id == plain.recommendation_id != ""
    finally:
        await store.close()


async def test_explore_keeps_max_per_category_and_k_for_short_answers(
        settings: Settings) -> None:
    now = time.time()
    store, recommender = await learned_shop(settings, now)
    try:
        items = [item for item, _, _ in SESSION]
        capped = Rules(max_per_category=2)
        plain = await recommender.recommend(SESSION, 5, False, rules=capped)
        answer = await explore_answers.explore(recommender, plain, items, 5, 0.2, 7.0,
                                               capped, now=now)
        index = await store.items.index()
        firsts = [index.first_category.get(int.from_bytes(item_hash(r["id"]), "little"))
                  for r in answer.rows()]
        assert all(firsts.count(c) <= 2 for c in set(firsts) if c is not None)
        assert len(answer.rows()) <= 5
        # a short answer: the new item is appended, k kept
        short = Answer(plain.rows()[:2], plain.message, listed=plain.listed[:16])
        grown = await explore_answers.explore(recommender, short, items, 5, 0.2, 7.0,
                                              Rules(), now=now)
        assert [r.get("source") for r in grown.rows()] == [
            *(r.get("source") for r in short.rows()), "new"]
        scores = [r["score"] for r in grown.rows()]
        assert scores == sorted(scores, reverse=True)
        # no session items, no category: unchanged
        assert await explore_answers.explore(recommender, plain, [], 5, 0.2, 7.0, Rules(),
                                             now=now) is plain
    finally:
        await store.close()


def test_explore_slots() -> None:
    assert [explore_slots(0.1, k) for k in (1, 2, 3, 4, 10, 14, 15, 100)] == \
        [0, 0, 0, 1, 1, 1, 2, 10]
    assert explore_slots(0.0, 10) == 0 and explore_slots(1.0, 7) == 7
    assert explore_slots(0.5, 1) == 1


@pytest.mark.parametrize(("value", "field"), [
    ("0.1", "explore"),
    ({"share": 0.1, "max_age": 7}, "explore.max_age"),
    ({"share": "0.1"}, "explore.share"),
    ({"share": True}, "explore.share"),
    ({"share": 1.5}, "explore.share"),
    ({"share": -0.1}, "explore.share"),
    ({"max_age_days": 0}, "explore.max_age_days"),
    ({"max_age_days": 366}, "explore.max_age_days"),
    ({"max_age_days": None}, "explore.max_age_days"),
    ({"max_age_days": float("nan")}, "explore.max_age_days"),
])
def test_a_bad_explore_is_refused_naming_the_field(value: Any, field: str) -> None:
    with pytest.raises(Invalid) as refused:
        explore_config(value)
    assert refused.value.field == field
    with pytest.raises(Invalid) as refused:
        explore_config(value, "placement.explore")
    assert refused.value.field == "placement." + field


def test_a_good_explore_is_read_with_its_defaults() -> None:
    assert explore_config({}) == Explore(0.1, 7.0)
    assert explore_config({"share": 0, "max_age_days": 1}) == Explore(0.0, 1.0)
    assert explore_config({"share": 1, "max_age_days": 1 / 24}) == Explore(1.0, 1 / 24)


async def test_cold_start_costs_what_the_answer_needs_not_what_a_category_holds(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """20,000 new items in one category, all sharing a tag and a price band with the item
    asked about: an answer from the record scores at most RECORD_TESTS candidates, an
    exploration tests at most EXPLORE_TESTS rows, and both still answer k."""
    store = Store(settings)
    await store.prepare()
    try:
        now = time.time()
        records = [Record(f"r{n}", categories=("big",), price=100.0 + n % 7, tags=("t",))
                   for n in range(20_000)]
        for start in range(0, len(records), 5000):
            await store.items.put(records[start:start + 5000], now=now - 3600)
        recommender = Recommender(store, settings)
        scored, fitted = [0], [0]
        shared, fit = coldstart.shared_weight, coldstart.fit_of

        def counting_shared(*args: Any) -> int:
            scored[0] += 1
            return shared(*args)

        def counting_fit(*args: Any) -> int:
            fitted[0] += 1
            return fit(*args)
        monkeypatch.setattr(coldstart, "shared_weight", counting_shared)
        monkeypatch.setattr(coldstart, "fit_of", counting_fit)
        for n in range(3):
            scored[0] = 0
            answer = await recommender.similar(f"r{n}", 10)
            assert len(answer.rows()) == 10
            assert 0 < scored[0] <= RECORD_TESTS, scored
        base = Answer([], "none")
        for n in range(3):
            fitted[0] = 0
            answer = await explore_answers.explore(recommender, base, [f"r{n}"], 10, 0.3, 7.0,
                                                   Rules(), now=now)
            assert [r["source"] for r in answer.rows()] == ["new"] * 3
            assert 0 < fitted[0] <= EXPLORE_TESTS, fitted
    finally:
        await store.close()


def test_the_arrival_order_and_the_price_band_follow_puts_replacements_and_deletions() -> None:
    """Rows put after the arrival order was sorted are found (newest first), a replaced or
    deleted record's old row never is, and the price band gives the nearest rows first."""
    index = coldstart_index()
    index.sort_arrivals()
    index.sort_prices()
    late = int.from_bytes(item_hash("late"), "little")
    index.put(late, Record("late", categories=("a",), price=50.4), 500.0)
    moved = int.from_bytes(item_hash("i10"), "little")
    index.put(moved, Record("i10", categories=("b",), price=1.0), 10.0)  # replaced
    index.put(int.from_bytes(item_hash("i20"), "little"), None)  # deleted
    recent, order = index.arrivals(15.0)
    rows = [r for r in (*reversed(recent), *order) if index.seen[r] >= 15.0]
    assert [index.ids[r] for r in rows][:3] == ["late", "i99", "i98"]
    assert "i20" not in [index.ids[r] for r in rows]
    found = coldstart.fresh(index, {"c\0a": 2}, 15.0, None, set())
    assert {index.ids[r] for r, _ in found} == {"late"} | {f"i{n}" for n in range(15, 100)
                                                          if n != 20}
    assert all(fit == 2 for _, fit in found)
    near = [index.ids[r] for r in index.priced_near(50.0, 45.0, 55.0, 4)]
    assert near[:4] == ["i50", "i49", "i51", "i48"] and near[4:] == ["late"]
    assert all(45.0 <= index.prices[index.row_of[int.from_bytes(item_hash(i), "little")]]
               <= 55.0 for i in near)


def coldstart_index() -> Any:
    from service.core.catalogueindex import CatalogueIndex
    index = CatalogueIndex()
    for n in range(100):
        index.put(int.from_bytes(item_hash(f"i{n}"), "little"),
                  Record(f"i{n}", categories=("a",), price=float(n)), float(n))
    return index
