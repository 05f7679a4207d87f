"""Feedback (SPEC, "Feedback"): recommendation ids, impressions that never feed the model,
attributed clicks counted exactly once, experiments with deterministic assignment and a report
with CTR intervals and p-values; on a real Redis, standalone and cluster."""

from __future__ import annotations

import asyncio
import math
import random
import signal
import time
from collections import Counter
from typing import Any

import pytest

from service.api.app import create_app
from service.core.feedback import (
    Experiment,
    Variant,
    attribution,
    event_counts,
    new_key,
    recommendation_id,
    two_proportion_p,
    wilson,
)
from service.core.model import Event
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


def test_a_recommendation_id_is_unique_and_counts_only_when_signed() -> None:
    key = new_key()
    ids = {recommendation_id(key, 3, 1) for _ in range(1000)}
    assert len(ids) == 1000
    rid = next(iter(ids))
    signed = attribution(key, rid)
    assert signed is not None and (signed.experiment, signed.variant) == (3, 1)
    assert attribution(new_key(), rid) is None  # another key: a made-up id
    tampered = rid[:-1] + ("A" if rid[-1] != "A" else "B")
    assert attribution(key, tampered) is None
    for junk in ("", "x", "!" * 30, rid + "A"):
        assert attribution(key, junk) is None
    counts = event_counts(key, [("impression", rid), ("click", rid), ("click", tampered),
                                ("purchase", rid), ("view", rid), ("click", None)])
    assert counts == {"impressions": 1, "attributed_clicks": 1, "x:3:1:impression": 1,
                      "x:3:1:click": 1, "x:3:1:purchase": 1}


def test_the_report_statistics() -> None:
    low, high = wilson(50, 1000)
    assert low < 0.05 < high and math.isclose(low, 0.0381, abs_tol=1e-3) \
        and math.isclose(high, 0.0654, abs_tol=1e-3)
    assert wilson(0, 10)[0] == 0.0 and math.isclose(wilson(10, 10)[1], 1.0)
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


async def test_impressions_change_no_recommendation(shop: Client, settings: Settings) -> None:
    await ingest(settings, learned_log())
    await drain(settings)
    asks = [("v1", ["i1", "i2"]), ("v2", ["i3"]), ("v3", [])]
    before = [(await ask(shop, s, items))["recommendations"] for s, items in asks]
    popular = (await (await shop.get("/popular?k=20")).json())["recommendations"]
    answer = await ask(shop, "v1", ["i1", "i2"])
    impressions = [{"session_id": f"v{n % 3 + 1}", "item_id": f"i{n % 16}",
                    "type": "impression", "recommendation_id": answer["recommendation_id"]}
                   for n in range(300)]
    assert (await shop.post("/events", json={"events": impressions})).status == 202
    stats = await drain(settings)
    assert stats["impressions"] == 300 and stats["events_processed"] == stats["events_accepted"]
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
        for kind, key in (("click", "clicks"), ("add_to_cart", "add_to_cart"),
                          ("purchase", "purchases")):
            if answer["recommendations"] and rnd.random() < 0.5:
                events.append({"session_id": session, "type": kind, "recommendation_id": rid,
                               "item_id": answer["recommendations"][0]["id"]})
                sent[variant][key] += 1
    # made-up and unsigned ids count nowhere; the same events sent again (a retry) count again
    events.append({"session_id": "x", "item_id": "i1", "type": "click",
                   "recommendation_id": "A" * 30})
    rnd.shuffle(events)
    for at in range(0, len(events), 50):
        assert (await shop.post("/events", json={"events": events[at:at + 50]})).status == 202
    await drain(settings)
    report = await (await shop.get("/admin/experiments/decay")).json()
    for name in ("A", "B"):
        got = report["variants"][name]
        assert got["sessions"] == len(sessions[name])
        for key in ("answers", "impressions", "clicks", "add_to_cart", "purchases"):
            assert got[key] == sent[name][key], (name, key)
        if got["impressions"]:
            assert got["ctr"] == got["clicks"] / got["impressions"]
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


async def test_counts_are_exact_through_worker_kills(shop: Client, settings: Settings) -> None:
    """Workers SIGKILLed at random moments redeliver what they had not committed: every
    impression and click still counts once."""
    assert (await shop.put("/admin/experiments/kills", json=TWO)).status == 200
    answers = [await ask(shop, f"k{n}", []) for n in range(20)]
    want: Counter[str] = Counter()
    events = []
    for n in range(3000):
        answer = answers[n % 20]
        kind = "impression" if n % 4 else "click"
        events.append(Event(f"k{n % 20}", f"i{n % 50}", 2000.0 + n, kind,
                            recommendation_id=answer["recommendation_id"]))
        want[f"{answer['variant']}:{kind}"] += 1
    await ingest(settings, events)
    store = Store(settings)
    rnd = random.Random(4)
    procs = [spawn_worker(settings), spawn_worker(settings)]
    kills = 0
    try:
        deadline = time.monotonic() + 60
        while (await store.stats())["pending"] > 0 and time.monotonic() < deadline:
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
    assert kills >= 2 and stats["events_processed"] == 3000
    report = await (await shop.get("/admin/experiments/kills")).json()
    for name in ("A", "B"):
        assert report["variants"][name]["impressions"] == want[f"{name}:impression"]
        assert report["variants"][name]["clicks"] == want[f"{name}:click"]
    assert stats["impressions"] == 2250 and stats["attributed_clicks"] == 750


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
    assert other.status == 409 and "DELETE /admin/experiments/e" in (
        await other.json())["error"]["message"]


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
    from service.api.model import follow_model
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
        model_version = staticmethod(call_that_converts_cancellation)

    task = asyncio.create_task(
        follow_feedback(Recorder(), FakeStore(), MinuteTally(), every=0.01)  # type: ignore[arg-type]
        if loop == "feedback" else
        follow_model(Recorder(), FakeStore(), every=0.01))  # type: ignore[arg-type]
    await entered.wait()
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
