"""Per-request rules on every list endpoint, against a real Redis (standalone and cluster):
``exclude`` keeps its items out of the answer and k still holds whenever k other items exist
(exclusions apply before the k best are chosen, and the trending fill skips them too)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from service.settings import Settings
from tests.conftest import Client
from tests.helpers import drain

ITEMS = [f"p{n}" for n in range(30)]


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


async def answers(client: Client, k: int, exclude: list[str]) -> dict[str, list[str]]:
    query = urlencode([("k", k), *(("exclude", e) for e in exclude)])
    replies = {
        "iid_recommend": await client.post("/iid_recommend", json={
            "user_interactions": {"p0": {"timestamp": 1}, "p3": {"timestamp": 2}}, "k": k,
            "exclude": exclude}),
        "session": await client.get(f"/sessions/s1/recommendations?{query}"),
        "similar": await client.get(f"/items/p0/similar?{query}"),
        "popular": await client.get(f"/popular?{query}"),
    }
    out = {}
    for name, reply in replies.items():
        assert reply.status == 200, (name, await reply.text())
        out[name] = [r["id"] for r in (await reply.json())["recommendations"]]
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
    seen = {"iid_recommend": {"p0", "p3"}, "session": {"p1", "p4", "p7", "p0", "p3"},
            "similar": {"p0"}, "popular": set()}
    for name, ids in (await answers(client, k, exclude)).items():
        assert not set(ids) & (set(exclude) | seen[name]), (name, ids)
        assert len(ids) == len(set(ids)) <= k
        if name != "similar":  # trending fills the rest within the rules: exactly k
            eligible = len(set(ITEMS) - set(exclude) - seen[name])
            assert len(ids) == min(k, eligible), (name, k, len(exclude), len(ids))
