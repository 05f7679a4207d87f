"""Feedback (README, "Feedback and experiments"): recommendation ids, impressions that never feed
the model, attributed clicks counted exactly once, experiments with deterministic assignment and a
report with CTR intervals and p-values; on a real Redis, standalone and cluster."""

from __future__ import annotations

import asyncio
import math
import random
import signal
import time
from collections import Counter
from typing import Any

import hypothesis
import pytest
from hypothesis import strategies as st

from service.api.app import create_app
from service.core.feedback import (
    CLICKED_IMPRESSION,
    COUNTED,
    FEEDBACK_POSITIONS,
    FEEDBACK_WINDOW,
    FLAG,
    Claim,
    Experiment,
    Variant,
    answer_record,
    attribution,
    claim,
    counter_field,
    hour_of,
    new_key,
    recommendation_id,
    tally,
)
from service.core.layout import item_hash
from service.core.model import Event
from service.core.reports import comparisons, two_proportion_p, variant_report, wilson
from service.settings import Settings
from service.store.state import Store
from tests.conftest import Client
from tests.helpers import drain, ingest, wait_drained
from tests.test_worker import spawn_worker

SECRET = "sk_test_feedback"
ADMIN = {"X-API-Key": SECRET}
TWO = {"variants": {"A": {"weight": 1, "params": {}},
                    "B": {"weight": 1, "params": {"neighbours": 1, "query_items": 1}}}}


# --- pure ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("weights", [(1.0, 1.0), (1.0, 3.0), (2.0, 1.0, 1.0)])
def test_assignment_is_deterministic_and_follows_the_weights(weights: tuple[float, ...]) -> None:
    experiment = Experiment("exp", 7, tuple(Variant(f"v{n}", w) for n, w in enumerate(weights)),
                            0.0)
    sessions = [f"session-{n}" for n in range(10_000)]
    got = Counter(experiment.assign(s) for s in sessions)
    total = sum(weights)
    for n, weight in enumerate(weights):
        assert abs(got[n] / len(sessions) - weight / total) < 0.02
    again = Experiment("exp", 7, experiment.variants, 99.0)  # another process' copy
    assert [again.assign(s) for s in sessions[:500]] == [experiment.assign(s)
                                                          for s in sessions[:500]]
    other = Experiment("exp2", 8, experiment.variants, 0.0)  # a new experiment reshuffles
    assert [other.assign(s) for s in sessions[:500]] != [experiment.assign(s)
                                                          for s in sessions[:500]]


def test_a_recommendation_id_is_unique_signed_and_bound_to_its_session() -> None:
    key = new_key()
    stamps = [recommendation_id(key, "visitor", 3, 1) for _ in range(1000)]
    assert len({rid for rid, _ in stamps}) == 1000 and len({n for _, n in stamps}) == 1000
    rid, nonce = stamps[0]
    signed = attribution(key, rid, "visitor")
    assert signed is not None and signed.bound and signed.nonce == nonce
    assert (signed.experiment, signed.variant) == (3, 1)
    assert abs(signed.issued - time.time()) < 5
    assert attribution(key, rid, "someone else") is None  # another session cannot use it
    assert attribution(key, rid) is None
    assert attribution(new_key(), rid, "visitor") is None  # another key: a made-up id
    tampered = rid[:-1] + ("A" if rid[-1] != "A" else "B")
    assert attribution(key, tampered, "visitor") is None
    for junk in ("", "x", "!" * 36, rid + "A", rid[:-1] + "=", "A" * 30):
        assert attribution(key, junk, "visitor") is None
    unbound, _ = recommendation_id(key, None, 3, 1)
    found = attribution(key, unbound, "anyone")
    assert found is not None and not found.bound
    assert claim(key, "click", unbound, "anyone", "a", time.time()) is None  # counts nowhere


def _claims(key: bytes, events: list[tuple[str, str, str, str, float]]) -> list[Claim]:
    found = [claim(key, *event) for event in events]
    return [c for c in found if c is not None]


def test_a_claim_counts_once_per_answer_item_and_kind_for_listed_items_in_time() -> None:
    key, now = new_key(), 1_700_000_000.0
    rid, nonce = recommendation_id(key, "s", 4, 1, now=now)
    other, other_nonce = recommendation_id(key, "s", 4, 0, now=now)
    record = answer_record(b"".join(item_hash(i) for i in ("a", "b", "c")))
    events = [("impression", rid, "s", "a", now + 1), ("impression", rid, "s", "a", now + 2),
              ("impression", rid, "s", "b", now + 3), ("click", rid, "s", "a", now + 4),
              ("click", rid, "s", "a", now + 5), ("click", rid, "s", "zzz", now + 6),
              ("click", rid, "intruder", "b", now + 7), ("purchase", rid, "s", "c", now + 8),
              ("view", rid, "s", "c", now + 9),  # a view is not feedback
              ("click", rid, "s", "c", now + FEEDBACK_WINDOW + 1),  # too late
              ("impression", other, "s", "a", now + 1)]  # no record: not recorded or expired
    counted = tally(_claims(key, events), {nonce: record, other_nonce: None}, {4: None})
    field = counter_field
    assert counted.counts == {"impressions": 2, "attributed_clicks": 1,
                              field(4, 1, "impression"): 2, field(4, 1, "click"): 1,
                              field(4, 1, CLICKED_IMPRESSION): 1, field(4, 1, "purchase"): 1}
    assert counted.flags == {nonce: (24, bytes((FLAG["impression"] | FLAG["click"],
                                                FLAG["impression"], FLAG["purchase"])))}
    # what the record says was counted is not counted again (a later batch, a redelivery)
    again = tally(_claims(key, events), {nonce: record[:24] + counted.flags[nonce][1]},
                  {4: None})
    assert again.counts == {} and again.flags == {}
    # after the experiment's end: still in the totals, no longer in its variants' counts
    ended = tally(_claims(key, events), {nonce: record}, {4: now + 3.5})
    assert ended.counts == {"impressions": 2, "attributed_clicks": 1,
                            field(4, 1, "impression"): 2}
    # an experiment Redis does not know (lost with its data): totals only
    assert set(tally(_claims(key, events), {nonce: record}, {}).counts) == \
        {"impressions", "attributed_clicks"}


def test_an_answer_of_a_flooded_hour_counts_nothing_and_records_a_pages_worth() -> None:
    key, now = new_key(), 1_700_000_000.0
    rid, nonce = recommendation_id(key, "s", 4, 1, now=now)
    record = answer_record(b"".join(item_hash(f"i{n}") for n in range(150)))
    assert len(record) == FEEDBACK_POSITIONS * 9  # the first hundred items, a flag byte each
    found = _claims(key, [("impression", rid, "s", "i0", now + 1),
                          ("impression", rid, "s", "i120", now + 1)])  # past the hundredth
    assert tally(found, {nonce: record}, {4: None}).counts["impressions"] == 1
    assert tally(found, {nonce: record}, {4: None}, flooded={hour_of(now)}).counts == {}
    assert tally(found, {nonce: record}, {4: None}, flooded={hour_of(now) + 1}).counts


@hypothesis.given(st.dictionaries(st.sampled_from(COUNTED), st.integers(-5, 10**9)),
                  st.integers(0, 10**9))
def test_a_variant_report_never_fails_and_its_ctr_lies_within_0_and_1(
        counts: dict[str, int], sessions: int) -> None:
    report = variant_report(counts, sessions)
    if report["ctr"] is not None:
        assert 0.0 <= report["ctr_interval"][0] <= report["ctr"] <= report["ctr_interval"][1] \
            <= 1.0
    versus = comparisons(["A", "B"], [report, variant_report({"impression": 3, "click": 9,
                                                              CLICKED_IMPRESSION: 7}, 1)])
    p = versus["B"]["p_value"]
    assert p is None or 0.0 <= p <= 1.0


def test_the_report_statistics() -> None:
    low, high = wilson(50, 1000)
    assert low < 0.05 < high and math.isclose(low, 0.0381, abs_tol=1e-3) \
        and math.isclose(high, 0.0654, abs_tol=1e-3)
    assert wilson(0, 10)[0] == 0.0 and math.isclose(wilson(10, 10)[1], 1.0)
    assert wilson(3, 1) == wilson(1, 1)  # more successes than trials: a report never fails
    # 50/1000 against 80/1000: z = 2.7, two-sided p = 0.0070
    p = two_proportion_p(50, 1000, 80, 1000)
    assert p is not None and math.isclose(p, 0.0070, abs_tol=5e-4)
    assert two_proportion_p(5, 100, 5, 100) == 1.0
    assert two_proportion_p(0, 0, 1, 10) is None


# --- over HTTP, with workers ---------------------------------------------------------------------
@pytest.fixture
async def shop(aiohttp_client: Any, settings: Settings) -> Client:
    client: Client = await aiohttp_client(create_app(settings.replace(secret_keys=SECRET)),
                                          headers=ADMIN)
    return client


def learned_log() -> list[Event]:
    rnd = random.Random(5)
    events = []
    for s in range(60):
        for n in range(4):
            events.append(Event(f"learn{s}", f"i{rnd.randint(0, 15)}", 1000.0 + 10 * s + n))
    return events


async def ask(client: Client, session: str, items: list[str]) -> dict[str, Any]:
    body = {"user_interactions": {i: {} for i in items}, "k": 5, "session_id": session}
    resp = await client.post("/iid_recommend", json=body)
    assert resp.status == 200
    answer: dict[str, Any] = await resp.json()
    return answer


def listed(answer: dict[str, Any]) -> list[str]:
    return [row["id"] for row in answer["recommendations"]]


async def test_impressions_change_no_recommendation(shop: Client, settings: Settings) -> None:
    await ingest(settings, learned_log())
    await drain(settings)
    asks = [("v1", ["i1", "i2"]), ("v2", ["i3"]), ("v3", [])]
    before = [(await ask(shop, s, items))["recommendations"] for s, items in asks]
    popular = (await (await shop.get("/popular?k=20")).json())["recommendations"]
    answers = [await ask(shop, session, ["i1", "i2"]) for session in ("v1", "v2", "v3")]
    impressions = [{"session_id": session, "item_id": f"i{n % 16}", "type": "impression",
                    "recommendation_id": answer["recommendation_id"]}
                   for n in range(100)
                   for session, answer in zip(("v1", "v2", "v3"), answers, strict=True)]
    assert (await shop.post("/events", json={"events": impressions})).status == 202
    stats = await drain(settings)
    # once per listed item of each answer; the rest (not listed, repeated) counts nowhere
    assert stats["impressions"] == sum(len(listed(a)) for a in answers) > 0
    assert stats["events_processed"] == stats["events_accepted"]
    assert [(await ask(shop, s, items))["recommendations"] for s, items in asks] == before
    assert (await (await shop.get("/popular?k=20")).json())["recommendations"] == popular
    live = await (await shop.get("/sessions/v2/recommendations?k=5")).json()
    assert live["message"].startswith("Trending")  # v2's impressions are no live interaction


async def test_the_report_counts_exactly_what_was_sent(shop: Client, settings: Settings) -> None:
    await ingest(settings, learned_log())
    await drain(settings)
    put = await shop.put("/admin/experiments/decay", json=TWO)
    assert put.status == 200
    started = await put.json()
    assert started["state"] == "running" and list(started["variants"]) == ["A", "B"]
    experiment = await Store(settings).feedback.get("decay")
    assert experiment is not None
    sent: dict[str, Counter[str]] = {"A": Counter(), "B": Counter()}
    sessions: dict[str, set[str]] = {"A": set(), "B": set()}
    events = []
    rnd = random.Random(2)
    for n in range(40):
        session = f"visitor{n}"
        answer = await ask(shop, session, [f"i{n % 16}"])
        variant = answer["variant"]
        assert variant == ["A", "B"][experiment.assign(session)]
        sent[variant]["answers"] += 1
        sessions[variant].add(session)
        rid = answer["recommendation_id"]
        for row in answer["recommendations"]:
            events.append({"session_id": session, "item_id": row["id"], "type": "impression",
                           "recommendation_id": rid})
            sent[variant]["impressions"] += 1
        clicked = False
        for kind, key in (("click", "clicks"), ("add_to_cart", "add_to_cart"),
                          ("purchase", "purchases")):
            if answer["recommendations"] and rnd.random() < 0.5:
                events.append({"session_id": session, "type": kind, "recommendation_id": rid,
                               "item_id": answer["recommendations"][0]["id"]})
                sent[variant][key] += 1
                clicked |= kind == "click"
        sent[variant]["clicked_impressions"] += clicked
    # made-up ids count nowhere; the same events sent again (a retry) count once
    events.append({"session_id": "x", "item_id": "i1", "type": "click",
                   "recommendation_id": "A" * 36})
    events += events[:30]
    rnd.shuffle(events)
    for at in range(0, len(events), 50):
        assert (await shop.post("/events", json={"events": events[at:at + 50]})).status == 202
    await drain(settings)
    report = await (await shop.get("/admin/experiments/decay")).json()
    for name in ("A", "B"):
        got = report["variants"][name]
        assert got["sessions"] == len(sessions[name])
        for key in ("answers", "impressions", "clicks", "clicked_impressions", "add_to_cart",
                    "purchases"):
            assert got[key] == sent[name][key], (name, key)
        if got["impressions"]:
            assert got["ctr"] == got["clicked_impressions"] / got["impressions"]
            assert got["ctr_interval"][0] <= got["ctr"] <= got["ctr_interval"][1]
    assert set(report["comparisons"]) == {"B"} and report["comparisons"]["B"]["against"] == "A"
    stats = await (await shop.get("/stats")).json()
    assert stats["impressions"] == sent["A"]["impressions"] + sent["B"]["impressions"]
    assert stats["attributed_clicks"] == sent["A"]["clicks"] + sent["B"]["clicks"]
    metrics = await (await shop.get("/metrics")).text()
    for name in ("A", "B"):
        labels = f'{{experiment="decay",variant="{name}"}}'
        assert f"sessionrec_experiment_impressions{labels} {float(sent[name]['impressions'])}" \
            in metrics
        assert f"sessionrec_experiment_attributed_clicks{labels} " \
               f"{float(sent[name]['clicks'])}" in metrics
    # ended: no variant any more, the report stays
    assert (await shop.delete("/admin/experiments/decay")).status == 200
    assert "variant" not in await ask(shop, "visitor1", ["i1"])
    ended = await (await shop.get("/admin/experiments/decay")).json()
    assert ended["state"] == "ended" and ended["variants"]["A"]["answers"] == sent["A"]["answers"]


async def test_clicks_without_impressions_leave_every_report_answering(
        shop: Client, settings: Settings) -> None:
    """A page without IntersectionObserver sends clicks and no impressions (and a client may
    send whatever it likes): the report, the dashboard and the experiment's end still answer,
    every CTR within [0, 1]."""
    await ingest(settings, learned_log())
    await drain(settings)
    assert (await shop.put("/admin/experiments/clicks", json=TWO)).status == 200
    answer = await ask(shop, "visitor", ["i1"])
    items = listed(answer)
    assert len(items) >= 3
    rid = answer["recommendation_id"]
    events = [{"session_id": "visitor", "item_id": items[0], "type": "impression",
               "recommendation_id": rid}]
    events += [{"session_id": "visitor", "item_id": item, "type": "click",
                "recommendation_id": rid} for item in items[:3]]
    assert (await shop.post("/events", json={"events": events})).status == 202
    await drain(settings)
    for method, path in (("GET", "/admin/experiments/clicks"), ("GET", "/admin/dashboard/data"),
                         ("GET", "/metrics"), ("DELETE", "/admin/experiments/clicks")):
        resp = await shop.request(method, path)
        assert resp.status == 200, (method, path, await resp.text())
    report = await (await shop.get("/admin/experiments/clicks")).json()
    got = report["variants"][answer["variant"]]
    assert (got["impressions"], got["clicks"], got["clicked_impressions"]) == (1, 3, 1)
    assert got["ctr"] == 1.0 and got["ctr_interval"][1] == 1.0


async def test_forged_feedback_cannot_decide_an_experiment(shop: Client,
                                                            settings: Settings) -> None:
    """The attack: one answer's id per variant, then batches of impressions for one variant and
    clicks for the other, for items the answers never listed, from other sessions, repeated,
    too late, and after the end. What counts is what an honest visitor of the same two answers
    could have sent: each listed item once per kind, from the session the answer was for."""
    await ingest(settings, learned_log())
    await drain(settings)
    assert (await shop.put("/admin/experiments/forged", json=TWO)).status == 200
    ids: dict[str, tuple[str, dict[str, Any]]] = {}
    n = 0
    while len(ids) < 2:
        session = f"attacker{n}"
        answer = await ask(shop, session, ["i1", "i2"])
        ids.setdefault(answer["variant"], (session, answer))
        n += 1
    (session_a, answer_a), (session_b, answer_b) = ids["A"], ids["B"]
    rid_a, rid_b = answer_a["recommendation_id"], answer_b["recommendation_id"]
    forged = []
    for n in range(1000):  # impressions to A: other sessions, items never listed, repeats
        forged.append({"session_id": f"bot{n}" if n % 2 else session_a, "type": "impression",
                       "item_id": f"i{n % 16}" if n % 3 else f"never{n}",
                       "recommendation_id": rid_a})
    for n in range(500):  # impressions and clicks to B
        for kind in ("impression", "click"):
            forged.append({"session_id": f"bot{n}" if n % 2 else session_b, "type": kind,
                           "item_id": f"i{n % 16}" if n % 3 else f"never{n}",
                           "recommendation_id": rid_b})
    for at in range(0, len(forged), 500):
        assert (await shop.post("/events", json={"events": forged[at:at + 500]})).status == 202
    await drain(settings)
    report = await (await shop.get("/admin/experiments/forged")).json()
    a, b = report["variants"]["A"], report["variants"]["B"]
    def honest(session: str, answer: dict[str, Any]) -> int:
        """Listed items the answer's own session sent (once each: the honest share)."""
        return len(set(listed(answer)) & {e["item_id"] for e in forged
                                          if e["session_id"] == session})
    assert 0 < honest(session_a, answer_a) < len(listed(answer_a)) + 1
    assert (a["impressions"], a["clicks"]) == (honest(session_a, answer_a), 0)
    assert (b["impressions"], b["clicks"], b["clicked_impressions"]) == \
        (honest(session_b, answer_b),) * 3
    # ended: events sent after the end move nothing
    assert (await shop.delete("/admin/experiments/forged")).status == 200
    ended = await (await shop.get("/admin/experiments/forged")).json()
    late = [{"session_id": session_a, "item_id": item, "type": kind, "recommendation_id": rid_a}
            for item in listed(answer_a) for kind in ("click", "purchase", "add_to_cart")]
    assert (await shop.post("/events", json={"events": late})).status == 202
    await drain(settings)
    assert (await (await shop.get("/admin/experiments/forged")).json())["variants"] == \
        ended["variants"]


async def test_an_id_counts_only_within_its_window(shop: Client, settings: Settings) -> None:
    """An answer's id counts for FEEDBACK_WINDOW seconds: one minted (with the real key) a day
    and a minute ago, its record still in Redis, counts nothing."""
    store = Store(settings)
    try:
        key = await store.feedback.signing_key()
        then, now = time.time() - FEEDBACK_WINDOW - 60, time.time()
        old, old_nonce = recommendation_id(key, "s", now=then)
        fresh, fresh_nonce = recommendation_id(key, "s", now=now)
        for nonce, issued in ((old_nonce, then), (fresh_nonce, now)):
            assert await store.feedback.record_answer("s", nonce, item_hash("a"), issued, "")
    finally:
        await store.close()
    events = [{"session_id": "s", "item_id": "a", "type": "impression",
               "recommendation_id": rid} for rid in (old, fresh)]
    assert (await shop.post("/events", json={"events": events})).status == 202
    assert (await drain(settings))["impressions"] == 1


async def test_a_flood_past_the_hours_budget_erases_the_hour_for_every_answer(
        aiohttp_client: Any, settings: Settings) -> None:
    """``--feedback-mb`` bounds the answers' records whatever the requests. Past an hour's
    share of a partition, that hour's answers count nothing, those recorded before the flood
    included: a flood can erase an hour's feedback, not leave its sender's answers as the only
    ones that count. /metrics says how many answers were not recorded."""
    limited = settings.replace(feedback_mb=1, feedback_client_answers=1_000_000)
    client: Client = await aiohttp_client(create_app(limited))
    await ingest(limited, learned_log())
    await drain(limited)
    early = await ask(client, "early", ["i1"])  # recorded, before the flood
    answers = [await ask(client, f"flood{n}", ["i1"]) for n in range(600)]
    store = Store(limited)
    try:
        recorded = [key for p in range(limited.partitions) for key in await _keys_of(store, p)]
        size = 0
        for key in recorded:
            size += int(await store.redis.memory_usage(key) or 0)
    finally:
        await store.close()
    budget = (1 << 20) // 25  # an hour's share of 1 MB, over every partition
    assert 0 < len(recorded) < len(answers) + 1 and size <= budget
    metrics = await (await client.get("/metrics")).text()
    assert f"sessionrec_answers_unrecorded {float(len(answers) + 1 - len(recorded))}" \
        in metrics
    # the early answer's own session now acts on it: its hour is flooded, nothing counts
    events = [{"session_id": "early", "item_id": item, "type": "impression",
               "recommendation_id": early["recommendation_id"]} for item in listed(early)]
    assert (await client.post("/events", json={"events": events})).status == 202
    assert (await drain(limited))["impressions"] == 0


async def test_one_client_address_weighs_at_most_its_share(aiohttp_client: Any,
                                                           settings: Settings) -> None:
    """However many sessions one address invents, at most ``--feedback-client-answers``
    answers an hour carry feedback that counts (shared out over the partitions); the shop's
    own servers, asking with the secret key on behalf of many visitors, take no share."""
    shared = settings.replace(feedback_client_answers=8, secret_keys=SECRET)  # 2 a partition
    client: Client = await aiohttp_client(create_app(shared))
    await ingest(shared, learned_log())
    await drain(shared)
    asked = [await ask(client, f"sybil{n}", ["i1"]) for n in range(40)]
    events = [{"session_id": f"sybil{n}", "item_id": item, "type": "impression",
               "recommendation_id": answer["recommendation_id"]}
              for n, answer in enumerate(asked) for item in listed(answer)]
    assert (await client.post("/events", json={"events": events})).status == 202
    stats = await drain(shared)
    per_answer = len(listed(asked[0]))
    assert 0 < stats["impressions"] <= 8 * per_answer
    metrics = await (await client.get("/metrics", headers=ADMIN)).text()
    assert "sessionrec_answers_unrecorded 32.0" in metrics
    server: Client = await aiohttp_client(create_app(shared), headers=ADMIN)
    for n in range(20):
        await ask(server, f"visitor{n}", ["i1"])
    assert "sessionrec_answers_unrecorded 0.0" in await (await server.get("/metrics")).text()


async def test_one_client_address_weighs_at_most_its_share_of_a_reports_answers(
        aiohttp_client: Any, settings: Settings) -> None:
    """Red team: 10,000 asks from one address added 10,000 to a variant's ``answers`` (and
    invented sessions to ``sessions``) while only its share took feedback. A report counts
    the answers that were recorded, so one address weighs there no more than its share."""
    shared = settings.replace(feedback_client_answers=8, secret_keys=SECRET)  # 2 a partition
    server: Client = await aiohttp_client(create_app(shared), headers=ADMIN)
    assert (await server.put("/admin/experiments/share", json=TWO)).status == 200
    client: Client = await aiohttp_client(create_app(shared))
    await ingest(shared, learned_log())
    await drain(shared)
    for n in range(40):
        await ask(client, f"sybil{n}", ["i1"])
    for n in range(3):
        await ask(server, f"visitor{n}", ["i1"])  # the shop's own servers: no share taken
    await asyncio.sleep(2.5)  # the tallies reach Redis every second
    report = await (await server.get("/admin/experiments/share")).json()
    answers = sum(v["answers"] for v in report["variants"].values())
    sessions = sum(v["sessions"] for v in report["variants"].values())
    assert 3 < answers <= 8 + 3 and 3 < sessions <= 8 + 3, report["variants"]


async def test_the_answers_of_one_loop_turn_are_recorded_in_one_call_per_partition(
        settings: Settings) -> None:
    """A call per answer cost the request path a round trip each: the answers gathered in one
    turn of the event loop go together, one script call per partition, and each still gets
    its own outcome (here the client's share: two a partition)."""
    from service.core.layout import partition_of, session_hash

    store = Store(settings.replace(feedback_client_answers=8))  # 4 partitions: 2 each
    await store.prepare()
    calls: list[int] = []
    run_script = store.backend.run_script

    async def counted(script: Any, keys: list[str], args: list[Any]) -> Any:
        calls.append(len(keys))
        return await run_script(script, keys, args)
    store.backend.run_script = counted  # type: ignore[method-assign]
    sessions = [f"turn{n}" for n in range(40)]
    listed = b"".join(item_hash(f"i{n}") for n in range(3))
    recorded = await asyncio.gather(*(
        store.feedback.record_answer(s, n.to_bytes(12, "big"), listed, time.time(), "1.2.3.4")
        for n, s in enumerate(sessions)))
    partitions = {partition_of(session_hash(s), settings.partitions) for s in sessions}
    assert len(calls) == len(partitions) and sum(calls) == 2 * len(partitions) + 2 * 40
    assert sum(recorded) == 2 * len(partitions)
    for p in partitions:  # the first two of each partition, in the order they asked
        mine = [ok for s, ok in zip(sessions, recorded, strict=True)
                if partition_of(session_hash(s), settings.partitions) == p]
        assert mine[:2] == [True, True] and not any(mine[2:])
    await store.close()


async def test_an_answers_record_lists_the_hashes_of_the_ids_it_shows(
        settings: Settings) -> None:
    """The record lists the answer's items by the hashes the answer found them by (session
    rows, trending fill, a filter's fill, similar items, /popular), not by hashing the ids
    again: they must be the same hashes, in the same order."""
    from service import kernel
    from service.answers.recommender import Asker, Recommender
    from service.core.catalog import Record
    from service.core.layout import ITEM_PERSON
    from service.core.rules import Filter, Rules

    await ingest(settings, learned_log())
    await drain(settings)
    store = Store(settings)
    await store.items.put([Record(f"i{n}", categories=("c",)) for n in range(0, 40, 2)])
    recorded: list[bytes] = []
    record = store.feedback.record_answer

    async def capture(session_id: str, nonce: bytes, item_hashes: bytes, issued: float,
                      client: str) -> bool:
        recorded.append(item_hashes)
        return await record(session_id, nonce, item_hashes, issued, client)
    store.feedback.record_answer = capture  # type: ignore[method-assign]
    recommender = Recommender(store, settings)
    visitor = Asker("visitor", "1.2.3.4")
    answers = [await recommender.recommend([("i1", 1.0, 1.0)], 40, False, visitor),
               await recommender.recommend([], 10, False, visitor),
               await recommender.recommend([("i1", 1.0, 1.0)], 15, False, visitor,
                                           Rules(filter=Filter(categories=("c",)))),
               await recommender.similar("i1", 10, asker=visitor),
               await recommender.popular(10, asker=visitor)]
    assert len(recorded) == len(answers)
    for answer, hashes in zip(answers, recorded, strict=True):
        ids = [row["id"] for row in answer.rows()]
        assert ids and hashes == kernel.hashes(ids, ITEM_PERSON)
    await store.close()


async def _keys_of(store: Store, p: int) -> list[bytes]:
    keys: list[bytes] = []
    async for key in store.redis.scan_iter(match=f"{store.keys.ns}:{{p{p}}}:ans:*", count=1000):
        keys.append(key)
    return keys


async def test_counts_are_exact_through_worker_kills(shop: Client, settings: Settings) -> None:
    """Workers SIGKILLed at random moments redeliver what they had not committed: every
    impression and click still counts once per answer and item."""
    await ingest(settings, learned_log())
    await drain(settings)
    assert (await shop.put("/admin/experiments/kills", json=TWO)).status == 200
    answers = [await ask(shop, f"k{n}", [f"i{n % 16}"]) for n in range(20)]
    want: Counter[str] = Counter()
    events = []
    for n in range(3000):
        a = n % 20
        answer = answers[a]
        items = listed(answer)
        kind = "impression" if n % 4 else "click"
        item = items[(n // 20) % len(items)]
        events.append(Event(f"k{a}", item, 2000.0 + n, kind,
                            recommendation_id=answer["recommendation_id"]))
    for a, answer in enumerate(answers):  # each listed item, each kind, once
        kinds = {(ev.item_id, ev.type) for ev in events if ev.session_id == f"k{a}"}
        for _, kind in kinds:
            want[f"{answer['variant']}:{kind}"] += 1
    await ingest(settings, events)
    store = Store(settings)
    rnd = random.Random(4)
    procs = [spawn_worker(settings), spawn_worker(settings)]
    kills = 0
    try:
        deadline = time.monotonic() + 60
        while (await store.stats.read())["pending"] > 0 and time.monotonic() < deadline:
            await asyncio.sleep(rnd.uniform(0.05, 0.3))
            victim = rnd.randrange(len(procs))
            procs[victim].send_signal(signal.SIGKILL)
            procs[victim].wait()
            kills += 1
            procs[victim] = spawn_worker(settings)
        stats = await wait_drained(store, timeout=60)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(15)
        await store.close()
    assert kills >= 2 and stats["events_processed"] == stats["events_accepted"]
    report = await (await shop.get("/admin/experiments/kills")).json()
    for name in ("A", "B"):
        assert report["variants"][name]["impressions"] == want[f"{name}:impression"]
        assert report["variants"][name]["clicks"] == want[f"{name}:click"]
    assert stats["impressions"] == want["A:impression"] + want["B:impression"]
    assert stats["attributed_clicks"] == want["A:click"] + want["B:click"]


async def test_every_serve_process_scores_with_the_variant_within_a_second(
        aiohttp_client: Any, settings: Settings) -> None:
    first: Client = await aiohttp_client(create_app(settings.replace(secret_keys=SECRET)),
                                         headers=ADMIN)
    second: Client = await aiohttp_client(create_app(settings.replace(secret_keys=SECRET)),
                                          headers=ADMIN)
    await ingest(settings, learned_log())
    await drain(settings)
    assert "variant" not in await ask(second, "s1", ["i1"])
    assert (await first.put("/admin/experiments/e", json=TWO)).status == 200
    started = time.monotonic()
    while "variant" not in await ask(second, "s1", ["i1"]):
        assert time.monotonic() - started < 1.5
        await asyncio.sleep(0.05)
    # the weakened variant scores with one neighbour from one query item: its answers differ
    answers: dict[str, list[dict[str, Any]]] = {}
    for n in range(30):
        answer = await ask(second, f"s{n}", ["i1", "i2", "i3"])
        answers.setdefault(answer["variant"], answer["recommendations"])
    assert set(answers) == {"A", "B"} and answers["A"] != answers["B"]
    # one at a time: another experiment is a conflict, the same one again a no-op
    assert (await first.put("/admin/experiments/e", json=TWO)).status == 200
    other = await first.put("/admin/experiments/f", json=TWO)
    error = (await other.json())["error"]
    assert other.status == 409 and "DELETE /admin/experiments/e" in error["message"]
    assert error["field"] == "name"  # the path parameter (issue 27, point 9)


@pytest.mark.parametrize(("body", "field"), [
    ({"variants": {"A": {}, "B": {"params": {"position_decay": "fast"}}}},
     "variants.B.params.position_decay"),
    ({"variants": {"A": {}, "B": {"params": {"neighbours": 0}}}}, "variants.B.params.neighbours"),
    ({"variants": {"A": {}, "B": {"params": {"warp": 1}}}}, "variants.B.params.warp"),
    ({"variants": {"A": {}, "B": {"weight": 0}}}, "variants.B.weight"),
    ({"variants": {"A": {}, "B": {"weight": "x"}}}, "variants.B.weight"),
    ({"variants": {"A": {}}}, "variants"),
    ({"variants": {"A": {}, "B": {"colour": 1}}}, "variants.B.colour"),
    ({}, "variants"),
])
async def test_an_invalid_experiment_is_refused_naming_the_field(
        shop: Client, body: dict[str, Any], field: str) -> None:
    resp = await shop.put("/admin/experiments/bad", json=body)
    assert resp.status == 400
    assert (await resp.json())["error"]["field"] == field
    assert (await shop.get("/admin/experiments/bad")).status == 404
    assert "variant" not in await ask(shop, "s", [])


async def test_impression_events_are_validated(shop: Client) -> None:
    no_rid = await shop.post("/events", json={"session_id": "s", "item_id": "a",
                                              "type": "impression"})
    assert no_rid.status == 400
    assert (await no_rid.json())["error"]["field"] == "recommendation_id"
    bad = await shop.post("/events", json={"session_id": "s", "item_id": "a", "type": "click",
                                           "recommendation_id": "no spaces"})
    assert bad.status == 400 and (await bad.json())["error"]["field"] == "recommendation_id"


@pytest.mark.parametrize("loop", ["feedback", "model"])
async def test_a_follow_loop_stops_when_its_redis_call_turns_the_cancellation_into_an_error(
        loop: str) -> None:
    """redis-py may answer the cancellation of a call it was in with a connection error: the
    loops that outlive Redis failures must still stop (an app's shutdown awaits them)."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from service.api.experiments import follow_feedback
    from service.api.parameters import follow_model
    from service.core.series import MinuteTally

    entered = asyncio.Event()

    async def call_that_converts_cancellation(*_: Any) -> Any:
        entered.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise RedisConnectionError("Connection closed by server.") from None

    class Recorder:
        signing_key = b""
        experiment = None
        record = None

    class FakeStore:
        class feedback:
            current = staticmethod(call_that_converts_cancellation)

        class model:
            version = staticmethod(call_that_converts_cancellation)

    task = asyncio.create_task(
        follow_feedback(Recorder(), FakeStore(), MinuteTally(), every=0.01)  # type: ignore[arg-type]
        if loop == "feedback" else
        follow_model(Recorder(), FakeStore(), every=0.01))  # type: ignore[arg-type]
    await asyncio.wait_for(entered.wait(), 5.0)  # the loop reached its Redis call
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=1.0)
    assert done, "the loop swallowed its cancellation"
    task.cancel()


async def test_a_tuning_runs_candidate_can_be_tried_as_a_variant(shop: Client) -> None:
    """The best parameters a run reports (GET /model: tuning.last_run.best.params, every
    parameter) go into a variant as they are, to be tried before they are promoted."""
    import dataclasses

    from service.core.scoring import Params

    best = dataclasses.asdict(Params(position_decay=0.5, sample_sessions=250, idf_weight=0.0))
    resp = await shop.put("/admin/experiments/candidate", json={"variants": {
        "in force": {}, "candidate": {"params": best}}})
    assert resp.status == 200
    assert (await resp.json())["variants"]["candidate"]["params"] == best
    model = await (await shop.get("/model")).json()
    assert model["params"]["position_decay"] == 2.0  # nothing promoted by trying it
