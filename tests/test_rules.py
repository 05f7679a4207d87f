"""Per-request rules on every list endpoint, against a real Redis (standalone and cluster):
``exclude``, ``filter`` and ``max_per_category`` keep every answer within the rules, and k
still holds whenever k eligible items exist (rules apply before the k best are chosen, and the
trending fill stays within them); ``explain`` names the session items behind each answer."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import numpy as np
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from service.api.app import create_app
from service.core.catalog import Record
from service.core.catalogueindex import CatalogueIndex
from service.core.layout import item_hash
from service.core.rules import Filter
from service.settings import Settings
from tests.conftest import Client
from tests.helpers import drain

pytestmark = pytest.mark.kernel  # ./dev test runs these on both kernels (the rules use it)

ITEMS = [f"p{n}" for n in range(30)]


@pytest.fixture
async def client(aiohttp_client: Any, settings: Settings) -> Client:
    """A shop's server side: the catalogue routes need its secret key, which also asks for
    recommendations."""
    secret = "sk_test_rules"
    app = create_app(settings.replace(publishable_keys="pk_test_rules", secret_keys=secret))
    shop: Client = await aiohttp_client(app, headers={"X-API-Key": secret})
    return shop


async def learned(client: Client, settings: Settings) -> None:
    """Sessions over 30 items: p0..p9 co-visited densely, the rest in a long tail."""
    events = []
    for s in range(40):
        for step in range(5):
            item = ITEMS[(s + step * 3) % (10 if s % 2 else 30)]
            events.append({"session_id": f"s{s}", "item_id": item, "timestamp": 100 + s * 10
                           + step})
    assert (await client.post("/events", json={"events": events})).status == 202
    await drain(settings)


async def answers(client: Client, k: int, exclude: list[str],
                  rules: dict[str, Any] | None = None) -> dict[str, list[str]]:
    """The ids each list endpoint answers, the rules sent in the body or the query."""
    return {name: [r["id"] for r in rows]
            for name, rows in (await answer_rows(client, k, exclude, rules)).items()}


async def answer_rows(client: Client, k: int, exclude: list[str],
                      rules: dict[str, Any] | None = None) -> dict[str, list[dict[str, Any]]]:
    """The rows each list endpoint answers, the rules sent in the body or the query."""
    rules = rules or {}
    params: list[tuple[str, Any]] = [("k", k), *(("exclude", e) for e in exclude)]
    if "filter" in rules:
        params.append(("filter", json.dumps(rules["filter"])))
    if "max_per_category" in rules:
        params.append(("max_per_category", rules["max_per_category"]))
    if "explain" in rules:
        params.append(("explain", "true" if rules["explain"] else "false"))
    query = urlencode(params)
    replies = {
        "iid_recommend": await client.post("/iid_recommend", json={
            "user_interactions": {"p0": {"timestamp": 1}, "p3": {"timestamp": 2}}, "k": k,
            "exclude": exclude, **rules}),
        "iid_seen": await client.post("/iid_recommend", json={
            "user_interactions": {"p0": {"timestamp": 1}, "p3": {"timestamp": 2}}, "k": k,
            "exclude": exclude, "recommend_seen": True, **rules}),
        "session": await client.get(f"/sessions/s1/recommendations?{query}"),
        "similar": await client.get(f"/items/p0/similar?{query}"),
        "popular": await client.get(f"/popular?{query}"),
    }
    out = {}
    for name, reply in replies.items():
        assert reply.status == 200, (name, await reply.text())
        out[name] = (await reply.json())["recommendations"]
    return out


async def test_excluded_items_never_come_back_and_k_holds(client: Client,
                                                          settings: Settings) -> None:
    await learned(client, settings)
    before = await answers(client, 5, [])
    assert all(len(ids) == 5 for ids in before.values()), before
    exclude = sorted({ids[0] for ids in before.values()} | {"p1", "p2"})
    after = await answers(client, 5, exclude)
    for name, ids in after.items():
        assert not set(ids) & set(exclude), (name, ids)
        # the endpoints that fill from trending keep k; similar has only co-visited items
        assert len(ids) == 5 or name == "similar", (name, ids)
    # excluding everything but three items leaves exactly those three where trending fills
    rest = await answers(client, 10, ITEMS[3:])
    assert sorted(rest["popular"]) == ["p0", "p1", "p2"]


@pytest.mark.parametrize(("body", "field"), [
    ({"exclude": "p1"}, "exclude"),
    ({"exclude": [{"id": "p1"}]}, "exclude[0]"),
    ({"exclude": [""]}, "exclude[0]"),
    ({"exclude": ["x" * 300]}, "exclude[0]"),
    ({"exclude": [f"p{n}" for n in range(10_000)]}, "exclude"),
])
async def test_bad_exclusions_are_a_400_naming_the_field(client: Client, body: dict[str, Any],
                                                         field: str) -> None:
    reply = await client.post("/iid_recommend", json={"user_interactions": {}, **body})
    assert reply.status == 400 and (await reply.json())["error"]["field"] == field
    if isinstance(body["exclude"], list) and all(isinstance(e, str) for e in body["exclude"]):
        # over the limit by one in a query (10,000 would pass the HTTP line limit first)
        ids = body["exclude"][:1001]
        query = urlencode([("exclude", e) for e in ids])
        reply = await client.get(f"/popular?{query}")
        assert reply.status == 400 and (await reply.json())["error"]["field"] == field


@hsettings(max_examples=25, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(k=st.integers(1, 12), exclude=st.lists(st.sampled_from(ITEMS), max_size=20,
                                               unique=True))
async def test_random_exclusions_on_every_endpoint(client: Client, settings: Settings, k: int,
                                                   exclude: list[str]) -> None:
    if not (await (await client.get("/stats")).json())["events_processed"]:
        await learned(client, settings)
    # what each endpoint may return: not excluded, and not the session's own items
    seen = {"iid_recommend": {"p0", "p3"}, "iid_seen": set(),
            "session": {"p1", "p4", "p7", "p0", "p3"},
            "similar": {"p0"}, "popular": set()}
    for name, ids in (await answers(client, k, exclude)).items():
        assert not set(ids) & (set(exclude) | seen[name]), (name, ids)
        assert len(ids) == len(set(ids)) <= k
        if name != "similar":  # trending fills the rest within the rules: exactly k
            eligible = len(set(ITEMS) - set(exclude) - seen[name])
            assert len(ids) == min(k, eligible), (name, k, len(exclude), len(ids))


# --- filters and max_per_category over generated catalogues ---------------------------------
UNLEARNED = [f"q{n}" for n in range(5)]  # in the catalogue, never visited: not trending
CATEGORIES, TAGS = ["a", "b", "c", "d"], ["x", "y", "z"]
SEEN = {"iid_recommend": {"p0", "p3"}, "iid_seen": set(), "session": {"p1", "p4", "p7", "p0", "p3"},
        "similar": {"p0"}, "popular": set()}

records = st.fixed_dictionaries({
    "categories": st.lists(st.sampled_from(CATEGORIES), max_size=2, unique=True),
    "tags": st.lists(st.sampled_from(TAGS), max_size=2, unique=True),
    "available": st.sampled_from([True] * 9 + [False]),
}, optional={
    "price": st.sampled_from([5, 10, 20.5]),
    "attributes": st.fixed_dictionaries({}, optional={
        "color": st.sampled_from(["red", "blue"]), "size": st.sampled_from([1, 2]),
        "new": st.booleans()}),
})
catalogues = st.dictionaries(st.sampled_from(ITEMS + UNLEARNED), records, max_size=35)
filters = st.fixed_dictionaries({}, optional={
    "categories": st.lists(st.sampled_from(CATEGORIES), min_size=1, max_size=2, unique=True),
    "tags": st.lists(st.sampled_from(TAGS), min_size=1, max_size=2, unique=True),
    "price": st.sampled_from([{"min": 6}, {"max": 12}, {"min": 5, "max": 10}]),
    "attributes": st.sampled_from([{"color": "red"}, {"size": [1, 2]}, {"new": True},
                                   {"size": 2.0, "color": ["red", "blue"]}]),
})
rule_sets = st.fixed_dictionaries({}, optional={
    "filter": filters, "max_per_category": st.integers(1, 3), "explain": st.booleans()})
# what each endpoint's request names: where explanations may point
REQUEST_ITEMS = {"iid_recommend": {"p0", "p3"}, "iid_seen": {"p0", "p3"},
                 "session": {"p1", "p4", "p7", "p0", "p3"}, "similar": {"p0"}, "popular": set()}


def allowed(record: dict[str, Any] | None, rule: dict[str, Any]) -> bool:
    """The README's filter, spelled out independently of the service's code."""
    if record is None or not record["available"]:
        return False
    if "categories" in rule and not set(rule["categories"]) & set(record["categories"]):
        return False
    if "tags" in rule and not set(rule["tags"]) & set(record["tags"]):
        return False
    if "price" in rule:
        price = record.get("price")
        if price is None or not rule["price"].get("min", 0) <= price \
                <= rule["price"].get("max", 1e12):
            return False
    attributes = record.get("attributes", {})
    for name, wanted in rule.get("attributes", {}).items():
        values = wanted if isinstance(wanted, list) else [wanted]
        if name not in attributes or not any(
                type(v) is type(attributes[name]) or {type(v), type(attributes[name])}
                <= {int, float} for v in values if v == attributes[name]):
            return False
    return True


async def use_catalogue(client: Client, catalogue: dict[str, dict[str, Any]]) -> None:
    """Exactly ``catalogue``: every other item's record deleted."""
    for item in ITEMS + UNLEARNED:
        if item not in catalogue:
            assert (await client.delete(f"/items/{item}")).status == 200
    if catalogue:
        reply = await client.post("/items", json={
            "items": [{"id": item, **record} for item, record in catalogue.items()]})
        assert reply.status == 200, await reply.text()


@hsettings(max_examples=40, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(catalogue=catalogues, rules=rule_sets, k=st.integers(1, 12),
       exclude=st.lists(st.sampled_from(ITEMS + UNLEARNED), max_size=6, unique=True))
async def test_every_answer_satisfies_every_rule_and_k_holds(
        client: Client, settings: Settings, catalogue: dict[str, dict[str, Any]],
        rules: dict[str, Any], k: int, exclude: list[str]) -> None:
    if not (await (await client.get("/stats")).json())["events_processed"]:
        await learned(client, settings)
    await use_catalogue(client, catalogue)
    cap = rules.get("max_per_category")
    # no rules: similar's co-visited items in order (the rows completed from the record left)
    deep = {"similar": [r["id"] for r in (await answer_rows(client, 1000, [], {
        "explain": True}))["similar"] if r["source"] == "session"]}
    for name, rows in (await answer_rows(client, k, exclude, rules)).items():
        ids = [r["id"] for r in rows]
        assert len(ids) == len(set(ids)) <= k
        for row in rows:
            if rules.get("explain"):
                assert set(row["because"]) <= REQUEST_ITEMS[name] and len(row["because"]) <= 3
                assert row["source"] in (("session", "record") if name == "similar"
                                         else ("session", "trending"))
                assert bool(row["because"]) == (row["source"] == "session")
            else:
                assert set(row) == {"id", "score"}
        categories: dict[str, int] = {}
        for item in ids:
            record = catalogue.get(item)
            assert item not in exclude and item not in SEEN[name], (name, item)
            assert record is None or record["available"], (name, item)
            if "filter" in rules:
                assert allowed(record, rules["filter"]), (name, item, record, rules)
            if cap is not None and record and record["categories"]:
                first = record["categories"][0]
                categories[first] = categories.get(first, 0) + 1
                assert categories[first] <= cap, (name, ids, rules)

        def eligible(item: str, name: str = name) -> bool:
            record = catalogue.get(item)
            if item in exclude or item in SEEN[name] or (record and not record["available"]):
                return False
            return "filter" not in rules or allowed(record, rules["filter"])

        if name == "similar":
            # the co-visited items, filtered in their order, then capped: never top-k filtered
            expected: list[str] = []
            counts: dict[str, int] = {}
            for item in deep["similar"]:
                record = catalogue.get(item)
                first = record["categories"][0] if record and record["categories"] else None
                if not eligible(item):
                    continue
                if cap is not None and first is not None:
                    if counts.get(first, 0) >= cap:
                        continue
                    counts[first] = counts.get(first, 0) + 1
                expected.append(item)
            # then, fewer than k, completed from the record (within the rules: checked above)
            assert ids[:len(expected[:k])] == expected[:k], (ids, expected, rules)
            if rules.get("explain"):
                assert all(r["source"] == "record" for r in rows[len(expected[:k]):]), rows
            continue
        # the endpoints that fill from trending: exactly k whenever k eligible items exist
        pool = [i for i in ITEMS + (UNLEARNED if "filter" in rules else []) if eligible(i)]
        per_category: dict[str | None, int] = {}
        for item in pool:
            record = catalogue.get(item)
            first = record["categories"][0] if record and record["categories"] else None
            per_category[first] = per_category.get(first, 0) + 1
        most = sum(n if first is None or cap is None else min(n, cap)
                   for first, n in per_category.items())
        assert len(ids) == min(k, most), (name, k, len(ids), most, rules, exclude)


async def test_a_rule_no_item_satisfies_says_so(client: Client, settings: Settings) -> None:
    await learned(client, settings)
    await use_catalogue(client, {"p1": {"categories": ["a"]}, "p2": {"categories": ["a"]}})
    reply = await client.post("/iid_recommend", json={
        "user_interactions": {"p0": {}}, "k": 5, "filter": {"categories": ["a"]}})
    body = await reply.json()
    assert sorted(r["id"] for r in body["recommendations"]) == ["p1", "p2"]
    assert "Only 2 of the k=5" in body["message"] and "filter" in body["message"]
    reply = await client.get("/popular?k=3&" + urlencode(
        {"filter": json.dumps({"categories": ["nowhere"]})}))
    body = await reply.json()
    assert body["recommendations"] == [] and "Only 0 of the k=3" in body["message"]


async def test_explanations_name_the_request_items(client: Client, settings: Settings) -> None:
    await learned(client, settings)
    interactions = {"p0": {"timestamp": 1}, "p3": {"timestamp": 2}, "p9": {"timestamp": 3}}
    for seen in (False, True):
        reply = await client.post("/iid_recommend", json={
            "user_interactions": interactions, "k": 30, "explain": True,
            "recommend_seen": seen})
        rows = (await reply.json())["recommendations"]
        assert len(rows) == (30 if seen else 27)
        sources = {r["source"] for r in rows}
        assert sources == {"session", "trending"} or sources == {"session"}, sources
        for row in rows:
            assert set(row["because"]) <= set(interactions), row
            assert len(row["because"]) <= 3
            if row["source"] == "session":
                assert row["because"], row  # a neighbour shared one of the session's items
            else:
                assert row["because"] == []
            if seen and row["id"] in interactions:
                assert row["because"][0] == row["id"]
    # without explain, the rows are as before
    plain = (await (await client.post("/iid_recommend", json={
        "user_interactions": interactions, "k": 5})).json())["recommendations"]
    assert all(set(r) == {"id", "score"} for r in plain)
    similar = (await (await client.get("/items/p0/similar?k=3&explain=true")).json())
    assert all(r["because"] == ["p0"] and r["source"] == "session"
               for r in similar["recommendations"])
    popular = (await (await client.get("/popular?k=3&explain=1")).json())["recommendations"]
    assert all(r["because"] == [] and r["source"] == "trending" for r in popular)
    session = (await (await client.get("/sessions/s1/recommendations?k=4&explain=true")
                      ).json())["recommendations"]
    assert all(set(r["because"]) <= {"p1", "p4", "p7", "p0", "p3"} for r in session)


@pytest.mark.parametrize(("rules", "field"), [
    ({"filter": {"brand": ["x"]}}, "filter.brand"),
    ({"filter": []}, "filter"),
    ({"filter": {"categories": "a"}}, "filter.categories"),
    ({"filter": {"categories": []}}, "filter.categories"),
    ({"filter": {"categories": [f"c{n}" for n in range(10_000)]}}, "filter.categories"),
    ({"filter": {"tags": [1]}}, "filter.tags[0]"),
    ({"filter": {"tags": ["x" * 300]}}, "filter.tags[0]"),
    ({"filter": {"price": {"min": 10, "max": 5}}}, "filter.price"),
    ({"filter": {"price": {}}}, "filter.price"),
    ({"filter": {"price": {"min": "5"}}}, "filter.price.min"),
    ({"filter": {"price": {"above": 5}}}, "filter.price.above"),
    ({"filter": {"attributes": {"color": {"is": "red"}}}}, "filter.attributes.color"),
    ({"filter": {"attributes": {"color": []}}}, "filter.attributes.color"),
    ({"filter": {"attributes": {}}}, "filter.attributes"),
    ({"max_per_category": 0}, "max_per_category"),
    ({"max_per_category": "2"}, "max_per_category"),
    ({"explain": "yes"}, "explain"),
])
async def test_bad_rules_are_a_400_naming_the_field(client: Client, rules: dict[str, Any],
                                                    field: str) -> None:
    reply = await client.post("/iid_recommend", json={"user_interactions": {}, **rules})
    assert reply.status == 400 and (await reply.json())["error"]["field"] == field
    if (field.startswith("filter") and field != "filter.categories") or field == "filter":
        query = urlencode({"filter": json.dumps(rules["filter"])})
        reply = await client.get(f"/popular?{query}")
        assert reply.status == 400 and (await reply.json())["error"]["field"] == field


@pytest.mark.parametrize(("query", "field"), [
    ("filter=%7Bnot-json", "filter"),
    ("max_per_category=none", "max_per_category"),
    ("explain=maybe", "explain"),
])
async def test_bad_rules_in_a_query_are_a_400_naming_the_field(client: Client, query: str,
                                                              field: str) -> None:
    for path in ("/popular", "/items/p0/similar", "/sessions/s1/recommendations"):
        reply = await client.get(f"{path}?{query}")
        assert reply.status == 400 and (await reply.json())["error"]["field"] == field


# --- the per-process copy against the filter's specification ----------------------------------
def as_record(item: str, fields: dict[str, Any]) -> Record:
    attributes = {name: float(v) if isinstance(v, int) and not isinstance(v, bool) else v
                  for name, v in fields.get("attributes", {}).items()}
    return Record(item, None, tuple(fields["categories"]), fields["available"],
                  fields.get("price"), tuple(fields["tags"]), attributes)


def as_filter(rule: dict[str, Any]) -> Filter:
    price = rule.get("price", {})
    return Filter(tuple(rule["categories"]) if "categories" in rule else None,
                  tuple(rule["tags"]) if "tags" in rule else None,
                  price.get("min"), price.get("max"),
                  tuple((name, tuple(v if isinstance(v, list) else [v]))
                        for name, v in rule.get("attributes", {}).items()))


@hsettings(max_examples=200, deadline=None)
@given(writes=st.lists(st.tuples(st.sampled_from(ITEMS + UNLEARNED), st.none() | records),
                       max_size=60),
       rule=filters)
def test_the_index_admits_exactly_what_the_filter_allows(
        writes: list[tuple[str, dict[str, Any] | None]], rule: dict[str, Any]) -> None:
    """Puts, replacements and deletions in any order (compactions included: a low threshold
    below), then admits() equals the filter applied record by record, and equals the
    independent spelling in ``allowed``; the fill order gives every admitted item once,
    trending ones first by their score."""
    index = CatalogueIndex()
    last: dict[str, dict[str, Any] | None] = {}
    compiled = as_filter(rule)
    for n, (item, fields) in enumerate(writes):
        index.put(hash_of(item), as_record(item, fields) if fields is not None else None)
        last[item] = fields
        if index.dead > 5:
            index._compact()
        if n == len(writes) // 2:  # the price order sorted halfway: later rows kept aside
            list(index.fill_order(compiled, []))
    expected = sorted(item for item, fields in last.items()
                      if fields is not None and fields["available"]
                      and compiled.holds(as_record(item, fields)))
    assert expected == sorted(item for item, fields in last.items()
                              if allowed(fields, rule))
    probe = np.array([hash_of(i) for i in ITEMS + UNLEARNED], dtype=np.uint64)
    assert [i for i, ok in zip(ITEMS + UNLEARNED, index.admits(compiled, probe), strict=True)
            if ok] == sorted(expected, key=(ITEMS + UNLEARNED).index)
    trending = [(i, hash_of(i), float(-n)) for n, i in enumerate(ITEMS[::2])]
    order = list(index.fill_order(compiled, trending))
    assert sorted(name for name, _, _ in order) == expected
    ranked = [name for name, _, _ in order]
    trending_first = [i for i, _, _ in trending if i in expected]
    assert ranked[:len(trending_first)] == trending_first
    assert all(share == 0.0 for _, _, share in order[len(trending_first):])
    for item, fields in last.items():
        first = fields["categories"][0] if fields and fields["categories"] else None
        assert index.first_category.get(hash_of(item)) == first


def hash_of(item: str) -> int:
    return int.from_bytes(item_hash(item), "little")
