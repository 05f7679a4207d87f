"""Placements (README, "Placements"), against a real Redis (standalone and cluster): the admin
routes, a second serve process following a change within a second, a request's fields over its
placement's, boosts and promotions after the rules with k kept, ``POST /rerank`` answering
exactly the given items (minus the rules' exclusions), and every bad field a 400 naming it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import time
from typing import Any

import numpy as np
import pytest

from service.api.app import create_app
from service.api.context import STORE
from service.api.placements import PLACEMENT_POLL
from service.api.recommend import RECOMMENDER
from service.core.catalog import Record
from service.core.catalogueindex import CatalogueIndex
from service.core.feedback import (
    ID_LENGTH,
    NO_PLACEMENT,
    attribution,
    placement_code,
    recommendation_id,
)
from service.core.layout import item_hash
from service.core.placements import MAX_PLACEMENTS
from service.core.rules import Filter, conjunction
from service.settings import Settings
from service.store.placements import Placements
from service.store.state import Store
from tests.conftest import Client
from tests.helpers import drain

pytestmark = pytest.mark.kernel

SECRET = "sk_test_placements"
PUBLISHABLE = "pk_test_placements"
ITEMS = [f"p{n}" for n in range(20)]


async def shop(aiohttp_client: Any, settings: Settings, key: str = SECRET) -> Client:
    app = create_app(settings.replace(publishable_keys=PUBLISHABLE, secret_keys=SECRET))
    client: Client = await aiohttp_client(app, headers={"X-API-Key": key})
    return client


@pytest.fixture
async def client(aiohttp_client: Any, settings: Settings) -> Client:
    return await shop(aiohttp_client, settings)


async def learned(client: Client, settings: Settings) -> None:
    """A catalogue (p0..p9 shoes, p10..p19 hats; the odd ones on sale) and sessions: p0..p4
    co-visited densely, p5..p19 in a long tail."""
    records = [{"id": item, "categories": ["shoes" if n < 10 else "hats"],
                "tags": ["sale"] if n % 2 else [], "price": float(n)}
               for n, item in enumerate(ITEMS)]
    assert (await client.post("/items", json={"items": records})).status == 200
    events = []
    for s in range(30):
        for step in range(4):
            item = ITEMS[(s + step) % (5 if s % 3 else 20)]
            events.append({"session_id": f"s{s}", "item_id": item,
                           "timestamp": 1000 + s * 10 + step})
    assert (await client.post("/events", json={"events": events})).status == 202
    await drain(settings)


async def put(client: Client, name: str, body: dict[str, Any], status: int = 200
              ) -> dict[str, Any]:
    response = await client.put(f"/admin/placements/{name}", json=body)
    found: dict[str, Any] = await response.json()
    assert response.status == status, found
    return found


async def ask(client: Client, body: dict[str, Any], path: str = "/iid_recommend",
              status: int = 200) -> dict[str, Any]:
    response = await client.post(path, json=body)
    found: dict[str, Any] = await response.json()
    assert response.status == status, found
    return found


def ids(answer: dict[str, Any]) -> list[str]:
    return [row["id"] for row in answer["recommendations"]]


SEED = {"p0": {"timestamp": 5000}, "p1": {"timestamp": 5001}}


async def test_put_get_list_and_delete(client: Client) -> None:
    body = {"strategy": "session", "k": 4, "rules": {"max_per_category": 2},
            "boosts": [{"filter": {"tags": ["sale"]}, "factor": 1.5}],
            "promote": {"filter": {"categories": ["hats"]}, "slots": 1},
            "params": {"neighbours": 50}}
    assert await put(client, "home", body) == {"name": "home", **body}
    got = await (await client.get("/admin/placements/home")).json()
    assert got.pop("report")["answers"] == 0 and got == {"name": "home", **body}
    await put(client, "cart", {"strategy": "popular"})
    listed = await (await client.get("/admin/placements")).json()
    assert [p["name"] for p in listed["placements"]] == ["cart", "home"]
    deleted = await client.delete("/admin/placements/home")
    assert deleted.status == 200
    assert (await client.get("/admin/placements/home")).status == 404
    assert (await client.delete("/admin/placements/home")).status == 404


async def test_admin_routes_need_the_secret_key(aiohttp_client: Any,
                                                settings: Settings) -> None:
    page = await shop(aiohttp_client, settings, PUBLISHABLE)
    put_answer = await page.put("/admin/placements/x", json={"strategy": "session"})
    assert put_answer.status in (401, 403)
    assert (await page.get("/admin/placements")).status in (401, 403)


@pytest.mark.parametrize(("body", "field"), [
    ({}, "strategy"),
    ({"strategy": "next"}, "strategy"),
    ({"strategy": 3}, "strategy"),
    ({"strategy": "session", "k": 0}, "k"),
    ({"strategy": "session", "kk": 1}, "kk"),
    ({"strategy": "session", "rules": {"max_per_category": 0}}, "rules.max_per_category"),
    ({"strategy": "session", "rules": {"filter": {"colour": ["red"]}}}, "rules.filter.colour"),
    ({"strategy": "session", "rules": {"k": 1}}, "rules.k"),
    ({"strategy": "session", "boosts": {}}, "boosts"),
    ({"strategy": "session", "boosts": [{"filter": {"tags": ["a"]}}]}, "boosts[0].factor"),
    ({"strategy": "session", "boosts": [{"factor": 2}]}, "boosts[0].filter"),
    ({"strategy": "session", "boosts": [{"filter": {"tags": ["a"]}, "factor": 0}]},
     "boosts[0].factor"),
    ({"strategy": "session", "boosts": [{"filter": {"tags": []}, "factor": 2}]},
     "boosts[0].filter.tags"),
    ({"strategy": "session", "promote": {"filter": {"tags": ["a"]}, "slots": 0}},
     "promote.slots"),
    ({"strategy": "session", "promote": {"slots": 1}}, "promote.filter"),
    ({"strategy": "session", "params": {"nope": 1}}, "params.nope"),
    ({"strategy": "session", "params": {"neighbours": -1}}, "params.neighbours"),
])
async def test_a_bad_field_is_a_400_naming_it(client: Client, body: dict[str, Any],
                                              field: str) -> None:
    found = await put(client, "bad", body, status=400)
    assert found["error"]["field"] == field
    assert (await client.get("/admin/placements/bad")).status == 404


async def test_a_request_naming_an_unknown_or_unfit_placement_is_a_400(client: Client) -> None:
    found = await ask(client, {"user_interactions": SEED, "placement": "nowhere"}, status=400)
    assert found["error"]["field"] == "placement"
    unknown = found["error"]["message"]
    await put(client, "category", {"strategy": "rerank"})
    found = await ask(client, {"user_interactions": SEED, "placement": "category"},
                      status=400)
    assert found["error"]["field"] == "placement"
    # the same refusal as for a name never put: a page learns no placement's strategy
    assert found["error"]["message"] == unknown.replace("'nowhere'", "'category'")
    await put(client, "home", {"strategy": "session"})
    found = await ask(client, {"user_interactions": SEED, "items": ["p1"],
                               "placement": "home"}, "/rerank", status=400)
    assert found["error"]["field"] == "placement"
    response = await client.get("/popular?placement=home")
    assert response.status == 400 and (await response.json())["error"]["field"] == "placement"


async def test_the_limit_on_placements_is_a_409(client: Client) -> None:
    for n in range(MAX_PLACEMENTS):
        await put(client, f"p{n}", {"strategy": "popular"})
    found = await put(client, "one-more", {"strategy": "popular"}, status=409)
    assert found["error"]["field"] == "name"
    await put(client, "p0", {"strategy": "session"})  # replacing one is no new one


async def test_a_second_serve_process_follows_within_a_second(
        aiohttp_client: Any, settings: Settings) -> None:
    first = await shop(aiohttp_client, settings)
    other = await shop(aiohttp_client, settings)
    await learned(first, settings)
    await put(first, "home", {"strategy": "session", "k": 3})
    started = time.monotonic()
    while True:
        response = await other.post("/iid_recommend", json={"user_interactions": SEED,
                                                             "placement": "home"})
        if response.status == 200:
            answer = await response.json()
            assert answer["placement"] == "home" and len(answer["recommendations"]) == 3
            break
        assert time.monotonic() - started < 1.0, "not followed within a second"
        await asyncio.sleep(0.02)
    await put(first, "home", {"strategy": "session", "k": 5})
    started = time.monotonic()
    while len(ids(await ask(other, {"user_interactions": SEED, "placement": "home"}))) != 5:
        assert time.monotonic() - started < 1.0, "a change not followed within a second"
        await asyncio.sleep(0.02)
    assert (await first.delete("/admin/placements/home")).status == 200
    started = time.monotonic()
    while (await other.post("/iid_recommend", json={"user_interactions": SEED,
                                                    "placement": "home"})).status != 400:
        assert time.monotonic() - started < 1.0, "a deletion not followed within a second"
        await asyncio.sleep(0.02)
    assert "home" not in other.app[RECOMMENDER].placements


async def test_a_starting_process_reads_the_placements_once(
        aiohttp_client: Any, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """At start a process reads the placements, and its follower reads them again only when
    their version moves (it read them twice, the follower not knowing what start had read)."""
    first = await shop(aiohttp_client, settings)
    await put(first, "home", {"strategy": "session", "k": 3})
    readers: list[Placements] = []
    read_all = Placements.all

    async def counted(self: Placements) -> tuple[int, dict[str, tuple[bytes, int]]]:
        readers.append(self)
        return await read_all(self)

    monkeypatch.setattr(Placements, "all", counted)
    other = await shop(aiohttp_client, settings)

    def reads() -> int:  # the second process' own reads
        return sum(reader is other.app[STORE].placements for reader in readers)

    await asyncio.sleep(2.5 * PLACEMENT_POLL)
    assert reads() == 1 and "home" in other.app[RECOMMENDER].placements
    await put(first, "home", {"strategy": "session", "k": 4})
    started = time.monotonic()
    while other.app[RECOMMENDER].placements["home"].k != 4:
        assert time.monotonic() - started < 1.0, "a change not followed within a second"
        await asyncio.sleep(0.02)
    assert reads() == 2


async def test_the_request_fields_override_the_placement_ones(client: Client,
                                                              settings: Settings) -> None:
    await learned(client, settings)
    await put(client, "home", {"strategy": "session", "k": 3,
                               "rules": {"exclude": ["p2"], "explain": True}})
    answer = await ask(client, {"user_interactions": SEED, "placement": "home"})
    assert len(ids(answer)) == 3 and "p2" not in ids(answer)
    assert all("source" in row for row in answer["recommendations"])
    answer = await ask(client, {"user_interactions": SEED, "placement": "home", "k": 6,
                                "exclude": ["p3"], "explain": False})
    assert len(ids(answer)) == 6 and "p3" not in ids(answer) and "p2" in ids(answer)
    assert all("source" not in row for row in answer["recommendations"])
    plain = await ask(client, {"user_interactions": SEED, "k": 6, "exclude": ["p3"]})
    assert ids(plain) == ids(answer) and "placement" not in plain
    queried = await (await client.get("/popular?placement=top&k=2")).json()
    assert queried["error"]["field"] == "placement"
    await put(client, "top", {"strategy": "popular", "k": 4})
    assert len(ids(await (await client.get("/popular?placement=top")).json())) == 4
    assert len(ids(await (await client.get("/popular?placement=top&k=2")).json())) == 2


async def test_similar_and_popular_placements_through_iid_recommend(
        client: Client, settings: Settings) -> None:
    await learned(client, settings)
    await put(client, "product", {"strategy": "similar", "k": 4})
    await put(client, "top", {"strategy": "popular", "k": 4})
    like = await ask(client, {"user_interactions": {"p1": {}}, "placement": "product"})
    direct = await (await client.get("/items/p1/similar?k=4")).json()
    assert ids(like) == ids(direct) and like["placement"] == "product"
    trending = await ask(client, {"user_interactions": {}, "placement": "top"})
    assert ids(trending) == ids(await (await client.get("/popular?k=4")).json())
    found = await ask(client, {"user_interactions": {}, "placement": "product"}, status=400)
    assert found["error"]["field"] == "user_interactions"


async def test_boosts_multiply_the_scores_of_matching_items(client: Client,
                                                            settings: Settings) -> None:
    await learned(client, settings)
    plain = await ask(client, {"user_interactions": SEED, "k": 8, "explain": True})
    scores = {row["id"]: row["score"] for row in plain["recommendations"]}
    on_sale = [i for i in ids(plain) if int(i[1:]) % 2]
    assert on_sale and ids(plain)[0] not in on_sale
    await put(client, "sale", {"strategy": "session", "k": 8, "rules": {"explain": True},
                               "boosts": [{"filter": {"tags": ["sale"]}, "factor": 100}]})
    boosted = await ask(client, {"user_interactions": SEED, "placement": "sale"})
    rows = boosted["recommendations"]
    assert len(rows) == 8 and ids(boosted)[0] in on_sale
    assert all(row.get("boost") == 100 for row in rows if int(row["id"][1:]) % 2)
    assert all("boost" not in row for row in rows if not int(row["id"][1:]) % 2)
    assert all(0 < row["score"] <= 1 for row in rows)
    # scores keep their proportions: a boosted item against an unboosted one
    top = ids(boosted)[0]
    plain_item = next(i for i in ids(boosted) if not int(i[1:]) % 2 and i in scores)
    assert top in scores
    ratio = {r["id"]: r["score"] for r in rows}
    assert ratio[top] / ratio[plain_item] == pytest.approx(
        100 * scores[top] / scores[plain_item], rel=1e-3)
    # a boost never brings back what a rule leaves out
    ruled = await ask(client, {"user_interactions": SEED, "placement": "sale",
                               "filter": {"categories": ["hats"]}})
    assert all(int(i[1:]) >= 10 for i in ids(ruled)) and len(ids(ruled)) == 8


async def test_a_popular_placement_boosts_trending_items(client: Client,
                                                         settings: Settings) -> None:
    await learned(client, settings)
    trending = ids(await (await client.get("/popular?k=4&filter=" +
                                           '{"categories":["shoes"]}')).json())
    await put(client, "top", {"strategy": "popular", "k": 4,
                              "rules": {"filter": {"categories": ["shoes"]}},
                              "boosts": [{"filter": {"tags": ["sale"]}, "factor": 100}]})
    boosted = ids(await (await client.get("/popular?placement=top")).json())
    assert len(boosted) == 4 and boosted != trending
    assert int(boosted[0][1:]) % 2 == 1 and all(int(i[1:]) < 10 for i in boosted)


async def test_promotions_fill_their_slots_first_within_the_rules(
        client: Client, settings: Settings) -> None:
    await learned(client, settings)
    plain = ids(await ask(client, {"user_interactions": SEED, "k": 3}))
    assert not any(int(i[1:]) >= 10 for i in plain)  # no hat among the session's answer
    await put(client, "hats", {"strategy": "session", "k": 4, "rules": {"explain": True},
                               "promote": {"filter": {"categories": ["hats"]}, "slots": 2}})
    answer = await ask(client, {"user_interactions": SEED, "placement": "hats"})
    rows = answer["recommendations"]
    assert len(rows) == 4 and len(set(ids(answer))) == 4
    assert [int(r["id"][1:]) >= 10 for r in rows] == [True, True, False, False]
    assert [r.get("promoted", False) for r in rows] == [True, True, False, False]
    assert ids(answer)[2:] == plain[:2]
    excluded = ids(answer)[:2]
    again = await ask(client, {"user_interactions": SEED, "placement": "hats",
                               "exclude": excluded})
    assert not set(excluded) & set(ids(again)) and len(ids(again)) == 4
    capped = await ask(client, {"user_interactions": SEED, "placement": "hats",
                                "max_per_category": 1})
    assert [int(i[1:]) >= 10 for i in ids(capped)] == [True, False]  # one hat, one shoe
    # the similar strategy promotes as well, and k holds
    await put(client, "product", {"strategy": "similar", "k": 3,
                                  "promote": {"filter": {"tags": ["sale"]}, "slots": 1}})
    like = ids(await (await client.get("/items/p0/similar?placement=product")).json())
    assert len(like) == 3 and int(like[0][1:]) % 2 == 1


async def test_rerank_orders_exactly_the_given_items(client: Client,
                                                     settings: Settings) -> None:
    await learned(client, settings)
    given = ["zz-new", "p19", "p3", "unknown-2", "p2", "p12"]
    answer = await ask(client, {"user_interactions": SEED, "items": given,
                                "explain": True}, "/rerank")
    rows = answer["recommendations"]
    assert sorted(ids(answer)) == sorted(given)
    assert ids(answer)[-2:] == ["zz-new", "unknown-2"]  # unknown last, in their given order
    sources = [r["source"] for r in rows]
    assert sources[:2] == ["session", "session"] and set(ids(answer)[:2]) == {"p2", "p3"}
    assert sources[-2:] == ["unknown", "unknown"] and "popular" in sources
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    assert all(0 <= r["score"] <= 1 for r in rows) and answer["recommendation_id"]
    ruled = await ask(client, {"user_interactions": SEED, "items": given, "k": 3,
                               "exclude": ["p2"]}, "/rerank")
    assert ids(ruled) == [i for i in ids(answer) if i != "p2"][:3]
    filtered = await ask(client, {"user_interactions": SEED, "items": given,
                                  "filter": {"categories": ["hats"]}}, "/rerank")
    assert sorted(ids(filtered)) == ["p12", "p19"]  # unknown items have no record
    assert (await client.post("/admin/items/p3/hide")).status == 200
    hidden = await ask(client, {"user_interactions": SEED, "items": given}, "/rerank")
    assert "p3" not in ids(hidden) and len(ids(hidden)) == 5


async def test_rerank_reads_the_live_session_and_takes_a_placement(
        client: Client, settings: Settings) -> None:
    await learned(client, settings)
    assert (await client.post("/events", json={"events": [
        {"session_id": "visitor", "item_id": "p0"},
        {"session_id": "visitor", "item_id": "p1"}]})).status == 202
    by_id = await ask(client, {"session_id": "visitor", "items": ["p12", "p2", "p3"]},
                      "/rerank")
    by_seed = await ask(client, {"user_interactions": SEED, "items": ["p12", "p2", "p3"]},
                        "/rerank")
    assert ids(by_id) == ids(by_seed) and ids(by_id)[-1] == "p12"
    await put(client, "category", {"strategy": "rerank", "k": 2,
                                   "boosts": [{"filter": {"categories": ["hats"]},
                                               "factor": 100}]})
    placed = await ask(client, {"user_interactions": SEED, "items": ["p12", "p2", "p3"],
                                "placement": "category"}, "/rerank")
    assert ids(placed)[0] == "p12" and len(ids(placed)) == 2
    assert placed["placement"] == "category"


@pytest.mark.parametrize(("body", "field"), [
    ({"user_interactions": {}}, "items"),
    ({"items": ["a"]}, "user_interactions"),
    ({"user_interactions": {}, "items": []}, "items"),
    ({"user_interactions": {}, "items": "a"}, "items"),
    ({"user_interactions": {}, "items": ["a", ""]}, "items[1]"),
    ({"user_interactions": {}, "items": ["a", "b", "a"]}, "items[2]"),
    ({"user_interactions": {}, "items": ["a", 7]}, "items[1]"),
    ({"user_interactions": {}, "items": [None, "a"]}, "items[0]"),
    ({"user_interactions": {}, "items": ["a", ["b"]]}, "items[1]"),
    ({"user_interactions": {}, "items": ["a", "x" * 10_000]}, "items[1]"),
    ({"user_interactions": {}, "items": [str(n) for n in range(1001)]}, "items"),
    ({"user_interactions": {}, "items": ["a"], "k": 0}, "k"),
    ({"user_interactions": {}, "items": ["a"], "placement": ""}, "placement"),
    ({"user_interactions": {}, "items": ["a"], "filter": {"price": {"min": 2, "max": 1}}},
     "filter.price"),
    ({"user_interactions": {}, "items": ["a"], "extra": 1}, "extra"),
])
async def test_a_bad_rerank_field_is_a_400_naming_it(client: Client, body: dict[str, Any],
                                                     field: str) -> None:
    found = await ask(client, body, "/rerank", status=400)
    assert found["error"]["field"] == field


async def test_rerank_of_invented_ids_never_grows_the_frequency_cache(
        client: Client, settings: Settings) -> None:
    """A list to rerank is the client's: ids no session holds are read, never cached (the
    cache is cleared only every few minutes, and it would grow by every id sent)."""
    await learned(client, settings)
    await ask(client, {"user_interactions": SEED, "items": ITEMS}, "/rerank")
    frequencies = client.app[RECOMMENDER].store.reads.frequencies
    size = frequencies.size
    for n in range(5):
        invented = [f"invented-{n}-{m}" for m in range(1000)]
        answer = await ask(client, {"user_interactions": SEED, "items": invented}, "/rerank")
        assert ids(answer) == invented  # all unknown: their given order
    assert frequencies.size == size


def test_a_conjunction_holds_where_both_filters_do() -> None:
    records = [Record(f"i{n}", categories=("a" if n % 2 else "b",),
                      tags=("t",) if n % 3 == 0 else (), price=float(n)) for n in range(12)]
    index = CatalogueIndex()
    hashes = []
    for record in records:
        h = int.from_bytes(item_hash(record.item_id), "little")
        hashes.append(h)
        index.put(h, record)
    first = Filter(categories=("a",), price_max=8.0)
    second = Filter(tags=("t",), price_min=2.0)
    both = conjunction(first, second)
    expected = [first.holds(r) and second.holds(r) for r in records]
    assert [both.holds(r) for r in records] == expected == [
        n % 2 == 1 and n % 3 == 0 and 2 <= n <= 8 for n in range(12)]
    assert index.admits(both, np.array(hashes, np.uint64)).tolist() == expected
    empty = conjunction(Filter(price_min=5.0), Filter(price_max=4.0))
    assert not index.admits(empty, np.array(hashes, np.uint64)).any()
    assert conjunction(None, second) is second


async def test_feedback_is_counted_per_placement(client: Client, settings: Settings) -> None:
    """Impressions and clicks count toward the placement of the answer they act on, and only
    it; answers are counted per placement; /metrics and the dashboard show them."""
    await learned(client, settings)
    await put(client, "home", {"strategy": "session", "k": 4})
    await put(client, "category", {"strategy": "rerank"})
    home = await ask(client, {"user_interactions": SEED, "placement": "home",
                              "session_id": "v1"})
    ranked = await ask(client, {"user_interactions": SEED, "placement": "category",
                                "items": ["p7", "p8", "p9"], "session_id": "v1"}, "/rerank")
    plain = await ask(client, {"user_interactions": SEED, "session_id": "v1"})
    events = []
    for answer, clicked in ((home, 1), (ranked, 2), (plain, 1)):
        rid = answer["recommendation_id"]
        events += [{"session_id": "v1", "item_id": item, "type": "impression",
                    "recommendation_id": rid} for item in ids(answer)]
        events += [{"session_id": "v1", "item_id": item, "type": "click",
                    "recommendation_id": rid} for item in ids(answer)[:clicked]]
    # again: counted once per (answer, item, kind)
    assert (await client.post("/events", json={"events": events + events})).status == 202
    await drain(settings)
    report = (await (await client.get("/admin/placements/home")).json())["report"]
    assert report["answers"] == 1
    assert (report["impressions"], report["clicks"], report["ctr"]) == (4, 1, 0.25)
    listed = {p["name"]: p["report"] for p in
              (await (await client.get("/admin/placements")).json())["placements"]}
    assert (listed["category"]["impressions"], listed["category"]["clicks"]) == (3, 2)
    assert listed["home"] == report
    stats = await (await client.get("/stats")).json()
    assert (stats["impressions"], stats["attributed_clicks"]) == (4 + 3 + len(ids(plain)), 4)
    metrics = await (await client.get("/metrics")).text()
    assert 'sessionrec_placement_impressions{placement="category"} 3.0' in metrics
    assert 'sessionrec_placement_answers{placement="home"} 1.0' in metrics
    data = await (await client.get("/admin/dashboard/data")).json()
    assert [(p["name"], p["strategy"], p["clicks"]) for p in data["placements"]] == [
        ("category", "rerank", 2), ("home", "session", 1)]


async def test_a_placements_answers_count_only_those_recorded(
        aiohttp_client: Any, client: Client, settings: Settings) -> None:
    """Answers count toward a placement's report as an experiment's do: recorded ones only.
    A page cannot raise a placement's count without limit, neither with answers that carry no
    session nor with sessions past its address's share of recorded answers."""
    await learned(client, settings)
    await put(client, "category", {"strategy": "rerank"})
    page = await shop(aiohttp_client, settings.replace(feedback_client_answers=8), PUBLISHABLE)
    recommender = page.app[RECOMMENDER]
    for n in range(30):
        await ask(page, {"user_interactions": SEED, "placement": "category",
                         "items": ["p7", "p8"], "session_id": f"v{n}"}, "/rerank")
    for _ in range(5):
        await ask(page, {"user_interactions": SEED, "placement": "category",
                         "items": ["p7", "p8"]}, "/rerank")
    recorded = 30 - recommender.unrecorded
    assert 0 < recorded <= 8
    await recommender.store.feedback.add_placement_answers(recommender.placement_answers)
    report = (await (await client.get("/admin/placements/category")).json())["report"]
    assert report["answers"] == recorded


async def test_an_experiment_may_run_within_one_placement(client: Client,
                                                          settings: Settings) -> None:
    await learned(client, settings)
    await put(client, "home", {"strategy": "session"})
    await put(client, "other", {"strategy": "session"})
    two = {"variants": {"A": {"params": {}}, "B": {"params": {"neighbours": 5}}}}
    refused = await client.put("/admin/experiments/x", json={**two, "placement": "nowhere"})
    assert refused.status == 400 and (await refused.json())["error"]["field"] == "placement"
    started = await client.put("/admin/experiments/x", json={**two, "placement": "home"})
    assert started.status == 200 and (await started.json())["placement"] == "home"
    for n in range(5):
        body = {"user_interactions": SEED, "session_id": f"v{n}"}
        assert "variant" in await ask(client, {**body, "placement": "home"})
        assert "variant" not in await ask(client, {**body, "placement": "other"})
        assert "variant" not in await ask(client, body)
    again = await client.put("/admin/experiments/x", json=two)  # another placement: not it
    assert again.status == 409


def test_ids_carry_their_placement_and_earlier_ids_still_verify() -> None:
    key = os.urandom(32)
    code = placement_code("home")
    rid, nonce = recommendation_id(key, "s", 3, 1, 1000.0, code)
    assert len(rid) == ID_LENGTH
    found = attribution(key, rid, "s")
    assert found is not None and (found.nonce, found.placement) == (nonce, code)
    assert attribution(key, rid, "t") is None
    plain, _ = recommendation_id(key, "s", 0, 0, 1000.0)
    assert attribution(key, plain, "s").placement == NO_PLACEMENT  # type: ignore[union-attr]
    # an id of version 2 (no placement), as answers gave before
    payload = bytes((2, 1)) + b"n" * 8 + (3).to_bytes(4, "little") + bytes((1,)) \
        + (1000).to_bytes(4, "little")
    tag = hashlib.blake2b(payload + b"s", key=key, digest_size=8).digest()
    old = base64.urlsafe_b64encode(payload + tag).decode()
    earlier = attribution(key, old, "s")
    assert earlier is not None and (earlier.nonce, earlier.experiment, earlier.placement) == (
        b"n" * 8, 3, NO_PLACEMENT)
    assert attribution(key, old[:-1] + ("A" if old[-1] != "A" else "B"), "s") is None
    assert placement_code("home") != placement_code("cart") != NO_PLACEMENT


async def test_a_placement_created_again_counts_afresh(client: Client,
                                                      settings: Settings) -> None:
    """Deleted and created again under the same name, a placement's report starts at zero,
    and what the answers of its former self were shown and clicked counts toward neither."""
    await learned(client, settings)
    await put(client, "home", {"strategy": "session", "k": 3})
    before = await ask(client, {"user_interactions": SEED, "placement": "home",
                                "session_id": "v1"})
    events = [{"session_id": "v1", "item_id": item, "type": kind,
               "recommendation_id": before["recommendation_id"]}
              for item in ids(before) for kind in ("impression", "click")]
    assert (await client.post("/events", json={"events": events[:2]})).status == 202
    await drain(settings)
    report = (await (await client.get("/admin/placements/home")).json())["report"]
    assert (report["answers"], report["impressions"], report["clicks"]) == (1, 1, 1)
    await put(client, "home", {"strategy": "session", "k": 4})  # replaced: counts go on
    assert (await (await client.get("/admin/placements/home")).json())["report"] == report
    assert (await client.delete("/admin/placements/home")).status == 200
    await put(client, "home", {"strategy": "session", "k": 3})
    assert (await client.post("/events", json={"events": events[2:]})).status == 202
    await drain(settings)
    fresh = (await (await client.get("/admin/placements/home")).json())["report"]
    assert (fresh["answers"], fresh["impressions"], fresh["clicks"]) == (0, 0, 0)
    await ask(client, {"user_interactions": SEED, "placement": "home", "session_id": "v2"})
    listed = (await (await client.get("/admin/placements")).json())["placements"]
    assert listed[0]["report"]["answers"] == 1


async def test_an_experiment_runs_only_within_a_placement_it_can_change(
        client: Client) -> None:
    """Variants differ in scoring parameters: a popular or similar placement's answers do not
    depend on them, so an experiment within one is refused rather than assigning nothing."""
    two = {"variants": {"A": {"params": {}}, "B": {"params": {"neighbours": 5}}}}
    for strategy in ("popular", "similar"):
        await put(client, strategy, {"strategy": strategy})
        refused = await client.put("/admin/experiments/x", json={**two, "placement": strategy})
        assert refused.status == 400 and (await refused.json())["error"]["field"] == "placement"
    await put(client, "category", {"strategy": "rerank"})
    assert (await client.put("/admin/experiments/x", json={
        **two, "placement": "category"})).status == 200


async def test_a_placements_explore_share_brings_new_items_that_fit_the_session(
        client: Client, settings: Settings) -> None:
    store = Store(settings)
    try:  # the shop's items were put a month ago (a replaced record keeps its first-seen)
        await store.items.put([Record(item, categories=("shoes" if n < 10 else "hats",))
                               for n, item in enumerate(ITEMS)], now=time.time() - 30 * 86400)
    finally:
        await store.close()
    await learned(client, settings)
    assert (await client.put("/items/fresh-shoe", json={"categories": ["shoes"]})).status == 200
    assert (await client.put("/items/fresh-hat", json={"categories": ["hats"]})).status == 200
    await put(client, "home", {"strategy": "session", "k": 4,
                               "explore": {"share": 0.25, "max_age_days": 7}})
    answer = await ask(client, {"user_interactions": SEED, "placement": "home",
                                "session_id": "v1"})
    rows = answer["recommendations"]
    assert len(rows) == 4 and rows[-1]["id"] == "fresh-shoe"
    assert rows[-1]["source"] == "new" and "fresh-hat" not in ids(answer)
    plain = await ask(client, {"user_interactions": SEED, "k": 4})
    assert ids(answer)[:3] == ids(plain)[:3]
    # its impressions and clicks count: the answer's record lists the new item
    rid = answer["recommendation_id"]
    assert (await client.post("/events", json={"events": [
        {"session_id": "v1", "item_id": "fresh-shoe", "type": kind, "recommendation_id": rid}
        for kind in ("impression", "click")]})).status == 202
    await drain(settings)
    report = (await (await client.get("/admin/placements/home")).json())["report"]
    assert (report["impressions"], report["clicks"]) == (1, 1)
    excluded = await ask(client, {"user_interactions": SEED, "placement": "home",
                                  "exclude": ["fresh-shoe"]})
    assert "fresh-shoe" not in ids(excluded) and len(ids(excluded)) == 4


@pytest.mark.parametrize(("body", "field"), [
    ({"strategy": "rerank", "explore": {"share": 0.1}}, "explore"),
    ({"strategy": "session", "explore": {"share": 2}}, "explore.share"),
    ({"strategy": "session", "explore": {"max_age_days": 0}}, "explore.max_age_days"),
    ({"strategy": "session", "explore": {"days": 1}}, "explore.days"),
    ({"strategy": "session", "explore": []}, "explore"),
])
async def test_a_bad_explore_is_a_400_naming_it(client: Client, body: dict[str, Any],
                                                field: str) -> None:
    found = await put(client, "bad", body, status=400)
    assert found["error"]["field"] == field


async def test_a_cart_placement_answers_what_goes_with_the_cart(
        client: Client, settings: Settings) -> None:
    """A bought_together placement takes the request's interactions as the cart, through
    POST /iid_recommend and GET /items/{id}/bought-together alike."""
    await learned(client, settings)
    carts = [{"session_id": f"c{s}", "item_id": item, "type": "add_to_cart",
              "timestamp": 5000 + s * 10 + n}
             for s in range(6) for n, item in enumerate(("p10", "p11" if s % 2 else "p12"))]
    assert (await client.post("/events", json={"events": carts})).status == 202
    await drain(settings)
    await put(client, "cart", {"strategy": "bought_together", "k": 3,
                               "rules": {"explain": True}})
    asked = await ask(client, {"user_interactions": {"p10": {}}, "placement": "cart",
                               "session_id": "v1"})
    assert asked["placement"] == "cart" and len(asked["recommendations"]) == 3, asked
    assert set(ids(asked)[:2]) == {"p11", "p12"}
    assert [r["source"] for r in asked["recommendations"][:2]] == ["bought_together"] * 2
    direct = await (await client.get("/items/p10/bought-together?placement=cart")).json()
    assert ids(direct) == ids(asked) and direct["placement"] == "cart"
    refused = await client.get("/items/p10/bought-together?placement=nowhere")
    assert refused.status == 400 and (await refused.json())["error"]["field"] == "placement"
    for name, value in (("boosts", [{"filter": {"tags": ["sale"]}, "factor": 2}]),
                        ("promote", {"filter": {"tags": ["sale"]}, "slots": 1})):
        found = await put(client, "bad", {"strategy": "bought_together", name: value},
                          status=400)
        assert found["error"]["field"] == name
