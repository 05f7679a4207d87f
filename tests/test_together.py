"""Bought together: the carts' update rule (pure, order-free), their scoring (pure), and the
answer over a real Redis (standalone and cluster): ``GET /items/{item_id}/bought-together``
answers from carts, says when it completes from similar, keeps the rules and k, refuses every
bad field naming it; the admin's rewrites reach carts. Exactly-once through worker kills is
held by the state comparisons of tests/test_worker.py, test_cluster.py and test_loader.py,
whose logs cart and whose comparison (``service/offline/statecheck.py``) includes carts and
cart indexes."""

from __future__ import annotations

import json
import random
from typing import Any
from urllib.parse import urlencode

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.answers import together
from service.answers.recommender import Recommender
from service.api.app import create_app
from service.core import carts
from service.core.layout import (
    index_entry,
    item_hash,
    session_hash,
    split_entries,
    time_key,
)
from service.core.model import CART_CAP, Event, apply_events
from service.core.rules import Rules
from service.settings import Settings
from service.store.state import Store
from tests.conftest import Client
from tests.helpers import (
    assert_same_state,
    clean_reference,
    drain,
    ingest,
    interleaved,
    snapshot,
)

# --- the update rule ---------------------------------------------------------------------------


def fold(events: list[Event], batch: int, cap: int = 100) -> dict[str, object]:
    """Apply events batch by batch as a worker does (carts read back between batches)."""
    histories: dict[bytes, bytes] = {}
    stored: dict[bytes, bytes] = {}
    index: dict[bytes, set[bytes]] = {}
    for start in range(0, len(events), batch):
        fx = apply_events(histories, events[start:start + batch], cap, carts=stored)
        histories.update(fx.histories)
        stored.update(fx.carts)
        for item, old, new in fx.cart_index:
            entries = index.setdefault(item, set())
            entries.discard(old)
            entries.add(new)
    return {"carts": stored, "cart_index": index}


def test_a_cart_keeps_distinct_carted_items_at_their_first_time() -> None:
    evs = [Event("s", "a", 10.0, "add_to_cart"), Event("s", "v", 11.0, "view"),
           Event("s", "b", 12.0, "purchase"), Event("s", "a", 13.0, "purchase"),
           Event("s", "b", 9.0, "add_to_cart")]
    fx = apply_events({}, evs, 10)
    s = session_hash("s")
    a, b = item_hash("a"), item_hash("b")
    # views never reach the cart; a repeated item moves to the end, at its first time, and
    # changes no index entry
    assert split_entries(fx.carts[s]) == [(a, time_key(10.0)), (b, time_key(12.0))]
    assert fx.cart_index == [(a, b"", index_entry(time_key(10.0), s)),
                             (b, b"", index_entry(time_key(12.0), s))]
    # every event still reaches the history and the neighbour index as before
    assert len(split_entries(fx.histories[s])) == 5
    assert not apply_events({}, [Event("t", "x", 1.0)], 10).carts


def test_a_cart_keeps_its_newest_distinct_items_only() -> None:
    evs = [Event("s", f"i{n}", float(n), "add_to_cart") for n in range(CART_CAP + 5)]
    kept = split_entries(apply_events({}, evs, 100).carts[session_hash("s")])
    assert [item for item, _ in kept] == [item_hash(f"i{n}") for n in range(5, CART_CAP + 5)]
    # a stored cart is where the next batch starts from
    more = apply_events({}, [Event("s", "i5", 99.0, "purchase")], 100,
                        carts={session_hash("s"): history_of(kept)})
    assert [i for i, _ in split_entries(more.carts[session_hash("s")])][-1] == item_hash("i5")


def history_of(entries: list[tuple[bytes, int]]) -> bytes:
    return b"".join(i + t.to_bytes(8, "big") for i, t in entries)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 30), st.integers(0, 50),
                          st.sampled_from(["view", "add_to_cart", "purchase"])),
                min_size=1, max_size=60), st.randoms(), st.integers(1, 7))
def test_carts_are_order_free_across_sessions_and_batches(
        raw: list[tuple[int, int, int, str]], rnd: random.Random, batch: int) -> None:
    """Sessions interleaved arbitrarily and batches cut anywhere (workers, crashes): the same
    carts and cart indexes as one pass."""
    events = [Event(f"s{s}", f"i{i}", float(t), kind) for s, i, t, kind in raw]
    assert fold(interleaved(events, rnd), batch) == fold(events, len(events))


# --- scoring -----------------------------------------------------------------------------------


def index_of(*entries: tuple[float, str]) -> bytes:
    return b"".join(sorted(index_entry(time_key(t), session_hash(s)) for t, s in entries))


def cart_of(*items: str) -> bytes:
    return history_of([(item_hash(i), time_key(float(n))) for n, i in enumerate(items)])


def u64(*hashes: bytes) -> Any:
    return np.frombuffer(b"".join(hashes), "<u8")


def number(session: str) -> int:
    return int.from_bytes(session_hash(session), "little")


def test_cart_sessions_rank_by_overlap_then_recency_and_count_a_session_once() -> None:
    a = index_of((1.0, "s1"), (2.0, "s2"), (3.0, "s3"), (0.5, "s2"))  # s2 listed twice
    b = index_of((1.5, "s1"), (0.1, "s4"))
    sessions, overlap, masks = carts.cart_sessions([a, None, b], cap=500)
    assert sessions.tolist() == [number("s1"), number("s3"), number("s2"), number("s4")]
    assert overlap.tolist() == [2.0, 1.0, 1.0, 1.0]
    assert masks.tolist() == [0b101, 0b1, 0b1, 0b100]
    # only the newest cap entries of an index count; the limit keeps the best; a session
    # may be left out (the asker's own)
    assert carts.cart_sessions([a], cap=1)[0].tolist() == [number("s3")]
    assert carts.cart_sessions([a, None, b], 500, limit=1)[0].tolist() == [number("s1")]
    assert number("s1") not in carts.cart_sessions([a, b], 500,
                                                   exclude_session=number("s1"))[0].tolist()
    assert len(carts.cart_sessions([None, b""], 500)[0]) == 0


def test_co_carted_spreads_each_sessions_evidence_over_its_other_items() -> None:
    cart = u64(item_hash("a"))
    blobs = [cart_of("a", "b"), cart_of("a", "b", "c"), cart_of("a", "c", "b", "a"), None,
             cart_of("a")]
    overlap = np.array([1.0, 1.0, 2.0, 1.0, 1.0])
    masks = np.array([1, 1, 3, 1, 1], np.uint64)
    items, scores, contributors = carts.co_carted(cart, blobs, overlap, masks)
    assert items.tolist() == [int.from_bytes(item_hash(i), "little") for i in ("b", "c")]
    assert scores.tolist() == [1 + 0.5 + 1.0, 0.5 + 1.0]
    assert contributors.tolist() == [3, 3]
    plain = carts.co_carted(cart, blobs, overlap, masks, spread=False)[1]
    assert plain.tolist() == [4.0, 3.0]
    # thin evidence: an item fewer than MIN_SUPPORT sessions carted is left out
    assert carts.MIN_SUPPORT == 2
    thin = carts.co_carted(cart, [cart_of("a", "b"), cart_of("a", "b", "c")], overlap[:2],
                           masks[:2])[0]
    assert thin.tolist() == [int.from_bytes(item_hash("b"), "little")]


def test_one_session_weighs_at_most_its_overlap_however_much_it_carts() -> None:
    """A crafted session carting its target beside many items moves each of their answers by
    a share of one session (and alone, by nothing: thin evidence); two honest sessions carting
    a pair outweigh it everywhere."""
    cart = u64(item_hash("a"))
    crafted = cart_of("a", "target", *(f"x{n}" for n in range(CART_CAP - 2)))
    honest = cart_of("a", "b")
    items, scores, _ = carts.co_carted(cart, [crafted, honest, honest], np.ones(3),
                                       np.ones(3, np.uint64), min_support=1)
    assert sum(scores[items != u64(item_hash("b"))[0]]) == pytest.approx(1.0 * 19 / 19)
    assert items[0] == u64(item_hash("b"))[0] and scores[0] == 2.0
    # and alone, a session puts nothing in the answer at all
    alone = carts.co_carted(cart, [crafted, honest, honest], np.ones(3), np.ones(3, np.uint64))
    assert alone[0].tolist() == [u64(item_hash("b"))[0]]


def test_cart_query_keeps_the_newest_distinct_items() -> None:
    hashes = [item_hash(f"i{n}") for n in range(20)]
    query = carts.cart_query([hashes[0], hashes[1], hashes[0]])
    assert query == [hashes[1], hashes[0]]
    assert carts.cart_query(hashes) == hashes[-carts.CART_QUERY:]
    assert carts.contributors_of(0b101, ["a", "b", "c"]) == ["c", "a"]


# --- over Redis --------------------------------------------------------------------------------


@pytest.fixture
async def shop(aiohttp_client: Any, settings: Settings) -> Client:
    secret = "sk_test_together"
    app = create_app(settings.replace(publishable_keys="pk_test_together", secret_keys=secret))
    client: Client = await aiohttp_client(app, headers={"X-API-Key": secret})
    return client


def cart_log() -> list[dict[str, Any]]:
    """Carts: a with b (6 sessions), a with c (3), a alone (2); d and e only co-visited with a
    (views), f with d in carts: bought-together of a is b, c; similar adds d, e. g with h
    (2 sessions: just enough evidence)."""
    events: list[dict[str, Any]] = []
    t = 1_000.0

    def session(name: str, *steps: tuple[str, str]) -> None:
        nonlocal t
        for item, kind in steps:
            t += 1
            events.append({"session_id": name, "item_id": item, "timestamp": t, "type": kind})

    for n in range(6):
        session(f"ab{n}", ("a", "view"), ("a", "add_to_cart"), ("b", "add_to_cart"),
                ("b", "purchase"))
    for n in range(3):
        session(f"ac{n}", ("a", "add_to_cart"), ("c", "purchase"))
    for n in range(2):
        session(f"a{n}", ("a", "purchase"))
    for n in range(8):
        session(f"ad{n}", ("a", "view"), ("d", "view"), ("e", "view"))
    session("df", ("d", "add_to_cart"), ("f", "add_to_cart"))
    for n in range(2):
        session(f"gh{n}", ("g", "add_to_cart"), ("h", "add_to_cart"))
    return events


async def learned(shop: Client, settings: Settings) -> None:
    reply = await shop.post("/events", json={"events": cart_log()})
    assert reply.status == 202, await reply.text()
    await drain(settings)


async def ask(shop: Client, item: str, **query: Any) -> dict[str, Any]:
    params: list[tuple[str, Any]] = []
    for name, value in query.items():
        for one in (value if isinstance(value, list) else [value]):
            params.append((name, json.dumps(one) if name == "filter" else one))
    reply = await shop.get(f"/items/{item}/bought-together?{urlencode(params)}")
    assert reply.status == 200, await reply.text()
    body: dict[str, Any] = await reply.json()
    assert set(body) == {"recommendations", "message", "recommendation_id"}
    scores = [row["score"] for row in body["recommendations"]]
    assert scores == sorted(scores, reverse=True) and all(0 < s <= 1 for s in scores)
    return body


def ids(body: dict[str, Any]) -> list[str]:
    return [row["id"] for row in body["recommendations"]]


async def test_bought_together_answers_from_carts_and_says_when_similar_completes(
        shop: Client, settings: Settings) -> None:
    await learned(shop, settings)
    enough = await ask(shop, "a", k=2)
    assert ids(enough) == ["b", "c"] and enough["message"] == together.MSG_TOGETHER
    more = await ask(shop, "a", k=4, explain="true")
    assert ids(more)[:2] == ["b", "c"] and set(ids(more)[2:]) == {"d", "e"}
    assert more["message"] == together.MSG_TOGETHER_SIMILAR
    assert [row["source"] for row in more["recommendations"]] == \
        ["bought_together"] * 2 + ["similar"] * 2
    assert all(row["because"] == ["a"] for row in more["recommendations"])
    # e is in no cart: all from similar; an unknown item: nothing, said so
    only = await ask(shop, "e", k=3)
    assert "a" in ids(only) and only["message"] == together.MSG_ONLY_SIMILAR
    none = await ask(shop, "nope", k=3)
    assert ids(none) == [] and none["message"] == together.MSG_NOTHING
    # the asking session's own cart is no evidence: without gh0's, h is thin (similar's)
    assert (await ask(shop, "g", k=1))["message"] == together.MSG_TOGETHER
    asked = await ask(shop, "g", k=1, session_id="gh0", explain="true")
    assert asked["recommendations"][0]["source"] == "similar"
    assert asked["message"] == together.MSG_ONLY_SIMILAR
    # a cart of several items (the placement's strategy): the items carted with most of them
    store = Store(settings)
    try:
        recommender = Recommender(store, settings)
        answer = await together.bought_together(recommender, ["c", "a"], 3)
        assert answer.rows()[0]["id"] == "b"
        assert answer.recommendation_id
    finally:
        await store.close()


async def test_no_item_of_the_cart_comes_back_however_long_the_cart(
        shop: Client, settings: Settings) -> None:
    """The query reads the cart's newest items only; the answer leaves out all of them (an
    older cart item came back, from carts and from the similar completion: red team)."""
    await learned(shop, settings)
    store = Store(settings)
    try:
        recommender = Recommender(store, settings)
        cart = ["b", *(f"unknown-{n}" for n in range(carts.CART_QUERY)), "a"]
        answer = await together.bought_together(recommender, cart, 6, Rules(explain=True))
        got = [row["id"] for row in answer.rows()]
        assert got and not set(got) & set(cart)
        assert "c" in got  # what goes with a, b itself left out
    finally:
        await store.close()


async def test_rules_hold_and_k_is_kept(shop: Client, settings: Settings) -> None:
    await learned(shop, settings)
    excluded = await ask(shop, "a", k=3, exclude="b")
    assert ids(excluded)[0] == "c" and "b" not in ids(excluded) and len(ids(excluded)) == 3
    reply = await shop.post("/items", json={"items": [
        {"id": "b", "categories": ["mugs"]}, {"id": "c", "categories": ["beans"]},
        {"id": "d", "categories": ["beans"]}, {"id": "e", "categories": ["mugs"]}]})
    assert reply.status == 200, await reply.text()
    beans = await ask(shop, "a", k=3, filter={"categories": ["beans"]})
    assert ids(beans) == ["c", "d"]  # only two beans: fewer than k, said so
    assert "filter" in beans["message"]
    capped = await ask(shop, "a", k=3, max_per_category=1, explain="true")
    assert ids(capped) == ["b", "c"] and "max_per_category" in capped["message"]
    two = await ask(shop, "a", k=4, max_per_category=2)
    assert ids(two)[:2] == ["b", "c"] and sorted(ids(two)[2:]) == ["d", "e"]


@pytest.mark.parametrize(("query", "field"), [
    ("k=0", "k"), ("k=abc", "k"), ("k=100000", "k"), ("filter=%7Bnot-json", "filter"),
    ("filter=%7B%22tags%22%3A%5B1%5D%7D", "filter.tags[0]"),
    ("max_per_category=0", "max_per_category"), ("explain=maybe", "explain"),
    ("exclude=", "exclude[0]"), ("session_id=", "session_id"),
])
async def test_every_bad_field_is_a_400_naming_it(shop: Client, query: str,
                                                  field: str) -> None:
    reply = await shop.get(f"/items/a/bought-together?{query}")
    assert reply.status == 400
    assert (await reply.json())["error"]["field"] == field
    long = await shop.get(f"/items/{'x' * 10_000}/bought-together")
    assert long.status == 400 and (await long.json())["error"]["field"] == "item_id"


async def test_an_item_id_ending_in_the_route_is_still_an_item(shop: Client,
                                                              settings: Settings) -> None:
    """PUT /items/{id} takes no id ending in /bought-together (that path is the route's)."""
    reply = await shop.put("/items/x/bought-together", json={"categories": ["c"]})
    assert reply.status == 405


async def test_forgetting_an_item_and_resetting_a_session_reach_carts(
        shop: Client, settings: Settings) -> None:
    await learned(shop, settings)
    store = Store(settings)
    r: Any = store.redis
    try:
        assert await r.exists(store.keys.cart_index(item_hash("b")))
        assert (await shop.delete("/admin/items/b")).status == 200
        assert not await r.exists(store.keys.cart_index(item_hash("b")))
        cart = split_entries(await r.get(store.keys.cart(session_hash("ab0"))))
        assert [i for i, _ in cart] == [item_hash("a")]
        assert "b" not in ids(await ask(shop, "a", k=2))
        assert (await shop.delete("/admin/sessions/ac0")).status == 200
        assert not await r.exists(store.keys.cart(session_hash("ac0")))
    finally:
        await store.close()


async def test_workers_and_restarts_learn_carts_as_one_clean_pass(settings: Settings) -> None:
    """A cart-heavy log through several workers and batches: the same carts and cart indexes
    as one clean pass (the kill tests of test_worker.py hold them too)."""
    rnd = random.Random(5)
    events = [Event(f"s{n // 6}", f"i{rnd.randrange(40)}", 1_000.0 + n,
                    rnd.choice(["view", "add_to_cart", "purchase"])) for n in range(1500)]
    small = settings.replace(index_cap=8, batch_size=17)
    clean = await clean_reference(small, events)
    await ingest(small, events[:700], batch=50)
    await drain(small, workers=2)
    await ingest(small, events[700:], batch=50)
    await drain(small, workers=3)
    store = Store(small)
    try:
        got = await snapshot(store.redis, small.namespace, 8)
        assert sum(":ch:" in key for key in got) == 250
        assert sum(":cx:" in key for key in got) == 40
        assert_same_state(got, await snapshot(store.redis, clean.namespace, 8))
    finally:
        await store.close()


async def test_a_crowd_of_crafted_carts_weighs_no_more_than_honest_ones(
        shop: Client, settings: Settings) -> None:
    """Three honest sessions cart each of ten items x<n> with its companion b<n>. Twenty
    crafted sessions each cart all ten and a target, and cart the target again and again: the
    target reaches every x<n>'s answer, but below b<n>: outweighing three honest carts of each
    pair would take three crafted sessions per item (30, not 20). Counted whole, each crafted
    session would weigh 1 in all ten answers, and the target would lead them all."""
    events: list[dict[str, Any]] = []
    t = 1_000.0
    for n in range(10):
        for h in range(3):
            for item in (f"x{n}", f"b{n}"):
                t += 1
                events.append({"session_id": f"honest{n}-{h}", "item_id": item,
                               "timestamp": t, "type": "add_to_cart"})
    for c in range(20):
        for item in [f"x{n}" for n in range(10)] + ["target"] * 30:
            t += 1
            events.append({"session_id": f"crafted{c}", "item_id": item, "timestamp": t,
                           "type": "add_to_cart"})
    for start in range(0, len(events), 500):
        assert (await shop.post("/events", json={"events": events[start:start + 500]})
                ).status == 202
    await drain(settings)
    for n in range(10):
        rows = (await ask(shop, f"x{n}", k=11))["recommendations"]
        assert rows[0] == {"id": f"b{n}", "score": 1.0}
        # 20 crafted sessions x 1/10 each, against 3 honest sessions x 1
        assert {"id": "target", "score": 0.666667} in rows
    store = Store(settings)
    try:  # the target carted 30 times by a session is in its cart once
        r: Any = store.redis
        cart = split_entries(await r.get(store.keys.cart(session_hash("crafted0"))))
        assert len(cart) == 11
    finally:
        await store.close()
