"""Tuning on the live state, against a real Redis (standalone and cluster): the holdout is
honest (no session is predicted from itself or from one that started after it), a run
promotes only a better candidate and never changes a pinned value, and a run starts from
the command line or from POST /admin/tune, one at a time."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import subprocess
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from service.api.app import create_app
from service.core.layout import session_hash
from service.core.model import Event
from service.core.modelparams import (
    HOLDOUT_SLICES,
    HOLDOUT_WINDOWS,
    latest_run,
    tuning_due,
    tuning_may_be_due,
    window_of,
)
from service.core.scoring import Params
from service.offline.holdout import Holdout, Score, recent_sessions
from service.offline.livetune import PROMOTION_Z, gain, tune_live
from service.settings import Settings
from service.store.state import Store
from service.store.tuning import RUN_COMMAND
from tests.conftest import Client
from tests.helpers import arrive, drain, running_workers

SECRET = "sk_test_tune"
HOUR = 3600.0
T0 = 472_222 * HOUR  # November 2023, at the start of an hour (an arrival window)

Sessions = Sequence[tuple[str, float, list[str]]]


def events_of(sessions: Sessions) -> list[Event]:
    """Sessions as (id, start time, items), one event a second."""
    return [Event(sid, item, start + n) for sid, start, items in sessions
            for n, item in enumerate(items)]


async def learn(settings: Settings, sessions: Sessions) -> None:
    """Sessions that reached the server when their timestamps say (hours apart in a test
    that takes a second), applied by a worker."""
    await arrive(settings, events_of(sessions))


async def post(client: Client, settings: Settings, sessions: Sessions) -> None:
    """Sessions sent now through POST /events, whatever their timestamps say: one burst."""
    events = [{"session_id": ev.session_id, "item_id": ev.item_id, "timestamp": ev.timestamp}
              for ev in events_of(sessions)]
    for at in range(0, len(events), 500):
        assert (await client.post("/events", json={"events": events[at:at + 500]})).status == 202
    await drain(settings)


@pytest.fixture
async def shop(aiohttp_client: Any, settings: Settings) -> Client:
    client: Client = await aiohttp_client(create_app(settings.replace(secret_keys=SECRET)),
                                          headers={"X-API-Key": SECRET})
    return client


async def test_the_holdout_sees_only_sessions_that_started_before(
        shop: Client, settings: Settings) -> None:
    """H and F both go a -> z, F after H. H's prefix may use neither F (later) nor itself:
    a miss. F's may use H: a hit. A session E sent after both, backdated before H, is not
    H's neighbour either: it reached the server after H (a burst so sent would be every
    holdout session's neighbour, in every arrival slice)."""
    await learn(settings, [("H", T0 + 3000, ["a", "z"]), ("F", T0 + 4000, ["a", "z"])])
    store = Store(settings)
    try:
        held = await recent_sessions(store, 2)
        assert [h.start for h in held] == [round((T0 + 3000) * 10**6),
                                           round((T0 + 4000) * 10**6)]  # oldest first
        holdout = Holdout(store, held)
        await holdout.load_indexes()
        got = await holdout.score(Params())
        # F's hit is second: as in `sessionrec eval`, seen items may come back, and a comes
        # back first (repeat_weight)
        assert (got.hr_at_20, got.mrr_at_20) == (0.5, 0.25)
        # E is sent now, backdated: it precedes H by its timestamp, but arrived after H and
        # F; it arrived last, so the holdout takes it instead of H
        await post(shop, settings, [("E", T0 + 1000, ["a", "z"])])
        again = Holdout(store, held)
        await again.load_indexes()
        assert (await again.score(Params())).hr_at_20 == 0.5
        assert [h.session for h in await recent_sessions(store, 2)] == [
            int.from_bytes(session_hash(s), "little") for s in ("F", "E")]
    finally:
        await store.close()


async def test_the_holdout_sees_a_session_that_arrived_and_started_before(
        settings: Settings) -> None:
    """D arrived before H and is dated before it: H's neighbour, so H's prefix is a hit.
    (D an hour before H: the holdout of two takes one session an arrival window, H and F.)"""
    await learn(settings, [("D", T0 - 2000, ["a", "z"]), ("H", T0 + 3000, ["a", "z"]),
                           ("F", T0 + 4000, ["a", "z"])])
    store = Store(settings)
    try:
        held = await recent_sessions(store, 2)
        assert [h.session for h in held] == [
            int.from_bytes(session_hash(s), "little") for s in ("H", "F")]
        holdout = Holdout(store, held)
        await holdout.load_indexes()
        assert (await holdout.score(Params())).hr_at_20 == 1.0
    finally:
        await store.close()


async def test_the_holdout_takes_the_newest_arrival_windows_a_share_each(
        shop: Client, settings: Settings) -> None:
    """By arrival windows, newest first, until the budget of predictions; one window gives at
    most a HOLDOUT_WINDOWS-th of the holdout, so a burst is a small part of it."""
    await learn(settings, [(f"L{n}", T0 + n * HOUR, [f"i{n}-{m}" for m in range(11)])
                           for n in range(1, 7)])  # 10 prefixes each, an hour apart
    store = Store(settings)
    try:
        wanted = 2 * HOLDOUT_WINDOWS
        assert [h.session for h in await recent_sessions(store, wanted)] == [
            int.from_bytes(session_hash(f"L{n}"), "little") for n in range(1, 7)]
        held = await recent_sessions(store, wanted, predictions=25)  # three sessions reach it
        assert [h.start for h in held] == [round((T0 + n * HOUR) * 10**6) for n in (4, 5, 6)]
        assert Holdout(store, held).predictions == 30
        await post(shop, settings, [(f"burst{n}", time.time(), ["b1", "b2"]) for n in range(100)])
        held = await recent_sessions(store, wanted)
        assert len(held) == 2 + 6  # two of the hundred (the window's share), the six before
        assert {h.window for h in held[-2:]} == {window_of(time.time() * 1000)}
    finally:
        await store.close()


def hub_sessions() -> list[tuple[str, float, list[str]]]:
    """x is followed by y, but a hub h sits in every session: without idf weighting h
    outranks y after x. Learned over three hours; then one new session x -> y an hour for
    eight hours: the holdout (the newest, one a window)."""
    learned = [(f"xh{n}", T0 + 100 * n, ["x", "h"]) for n in range(30)]
    learned += [(f"xhy{n}", T0 + HOUR + 100 * n, ["x", "h", "y"]) for n in range(15)]
    learned += [(f"hw{n}", T0 + 2 * HOUR + 100 * n, ["h", f"w{n}"]) for n in range(30)]
    return learned + [(f"new{n}", T0 + (3 + n) * HOUR, ["x", "y"]) for n in range(8)]


HUB_HOLDOUT = 8  # a session a window: the eight new ones


async def test_a_run_promotes_a_better_candidate_and_records_itself(
        shop: Client, settings: Settings) -> None:
    await learn(settings, hub_sessions())
    assert (await shop.put("/admin/model", json={"params": {"idf_weight": 0}})).status == 200
    store = Store(settings)
    try:
        run = await tune_live(store, Params.from_settings(settings), trigger="cli",
                              holdout_sessions=HUB_HOLDOUT)
    finally:
        await store.close()
    assert run["holdout_sessions"] == HUB_HOLDOUT and run["promoted"] is True
    assert run["held_back"] is None and run["best"]["mrr_at_20"] > run["current"]["mrr_at_20"]
    # the judging half's four sessions arrived in four windows: a slice each, each better
    assert len(run["slices"]) == HOLDOUT_SLICES
    assert all(piece["gain"] > 0 and piece["predictions"] == 1 for piece in run["slices"])
    model = await (await shop.get("/model")).json()
    # the hand-made change, then the run's result
    assert model["version"] == 2 and model["params"]["idf_weight"] > 0
    assert model["params"] == run["best"]["params"] and model["tuned_at"] is not None
    assert model["tuning"]["last_run"] == run and model["tuning"]["state"] == "idle"


async def test_a_run_never_changes_a_pinned_value_nor_promotes_a_worse_one(
        shop: Client, settings: Settings) -> None:
    await learn(settings, hub_sessions())
    assert (await shop.put("/admin/model", json={"params": {"idf_weight": 0},
                                                 "pin": True})).status == 200
    store = Store(settings)
    try:
        first = await tune_live(store, Params.from_settings(settings), trigger="cli",
                                holdout_sessions=HUB_HOLDOUT)
        assert first["best"]["params"]["idf_weight"] == 0.0  # not searched
        # the second run starts from the first one's promotion (if any): nothing better
        second = await tune_live(store, Params.from_settings(settings), trigger="cli",
                                 holdout_sessions=HUB_HOLDOUT)
    finally:
        await store.close()
    assert second["promoted"] is False
    assert second["best"]["mrr_at_20"] == second["current"]["mrr_at_20"]
    model = await (await shop.get("/model")).json()
    assert model["params"]["idf_weight"] == 0.0 and model["pinned"] == ["idf_weight"]
    assert model["version"] == 1 + 1 + 1  # each run is recorded, promoted or not
    assert model["tuning"]["last_run"]["id"] == second["id"]


async def test_the_same_sessions_in_one_burst_promote_nothing(shop: Client,
                                                              settings: Settings) -> None:
    """The sessions of the test above, all sent now by one client whatever their timestamps
    say: a burst, which decides no promotion (before: the newest by timestamp were held out,
    and the run promoted as above)."""
    await post(shop, settings, hub_sessions())
    assert (await shop.put("/admin/model", json={"params": {"idf_weight": 0}})).status == 200
    store = Store(settings)
    try:
        run = await tune_live(store, Params.from_settings(settings), trigger="cli",
                              holdout_sessions=HUB_HOLDOUT)
    finally:
        await store.close()
    assert run["promoted"] is False and run["held_back"]
    assert (await (await shop.get("/model")).json())["params"]["idf_weight"] == 0


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RUN_COMMAND, "--log-level", "WARNING", "tune", *args],
                          env={**os.environ, **settings.to_env()}, capture_output=True,
                          text=True, timeout=120)


async def test_sessionrec_tune_apply_runs_once_under_the_lease(
        shop: Client, settings: Settings) -> None:
    await learn(settings, hub_sessions())
    store = Store(settings)
    try:
        assert await store.scripts.lease(store.keys.tune_lease(), "another", 30_000, "take")
        busy = await asyncio.to_thread(cli, settings, "--apply")
        assert busy.returncode == 1 and "running already" in busy.stderr
        await store.scripts.lease(store.keys.tune_lease(), "another", 30_000, "release")
        done = await asyncio.to_thread(cli, settings, "--apply")
        assert done.returncode == 0, done.stderr
        run = json.loads(done.stdout)
        assert run["trigger"] == "cli" and run["holdout_sessions"] > 0
        assert await store.redis.get(store.keys.tune_lease()) is None  # released
    finally:
        await store.close()
    model = await (await shop.get("/model")).json()
    assert model["tuning"]["last_run"]["id"] == run["id"]
    assert (await asyncio.to_thread(cli, settings)).returncode == 2  # neither --train nor --apply


async def test_post_admin_tune_starts_one_run_and_get_model_follows_it(
        shop: Client, settings: Settings) -> None:
    await learn(settings, hub_sessions())
    first = await shop.post("/admin/tune")
    assert first.status == 202
    run_id = (await first.json())["run"]
    again = await shop.post("/admin/tune")  # the lease is the run's before its process runs
    assert again.status == 202 and (await again.json())["run"] == run_id
    started = time.monotonic()
    while True:
        model = await (await shop.get("/model")).json()
        last = model["tuning"]["last_run"]
        if last is not None and last["id"] == run_id and model["tuning"]["state"] == "idle":
            break
        assert time.monotonic() - started < 60, model
        await asyncio.sleep(0.2)
    assert last["trigger"] == "admin" and last["finished_at"] >= last["started_at"]
    assert set(last) >= {"current", "best", "promoted", "holdout_sessions"}


async def test_tuning_needs_the_secret_key_and_a_redis(aiohttp_client: Any,
                                                       settings: Settings) -> None:
    keyed = settings.replace(secret_keys=SECRET, publishable_keys="pk_test_tune")
    public: Client = await aiohttp_client(create_app(keyed),
                                          headers={"X-API-Key": "pk_test_tune"})
    assert (await public.post("/admin/tune")).status == 403
    embedded: Client = await aiohttp_client(
        create_app(dataclasses.replace(keyed, redis_url="memory://")),
        headers={"X-API-Key": SECRET})
    refused = await embedded.post("/admin/tune")
    assert refused.status == 409 and "memory://" in (await refused.json())["error"]["message"]


@pytest.mark.parametrize(("sessions", "last", "now", "due"), [
    (499, None, 0.0, False), (500, None, 0.0, True),
    (1000, {"sessions_learned": 400, "finished_at": 100.0}, 100.0 + 3599, False),
    (1000, {"sessions_learned": 400, "finished_at": 100.0}, 100.0 + 3600, True),
    (899, {"sessions_learned": 400, "finished_at": 100.0}, 10_000.0, False),
    # a large state needs a tenth more than it had
    (10_500, {"sessions_learned": 10_000, "finished_at": 0.0}, 10_000.0, False),
    (11_000, {"sessions_learned": 10_000, "finished_at": 0.0}, 10_000.0, True),
    # a run that died (never finished) counts from its start
    (2000, {"sessions_learned": 400, "started_at": 9000.0, "finished_at": None}, 10_000.0,
     False)])
def test_an_automatic_run_may_be_due_after_enough_new_sessions_and_time(
        sessions: int, last: dict[str, Any] | None, now: float, due: bool) -> None:
    assert tuning_may_be_due(sessions, last, now, min_sessions=500, min_interval=3600) is due


@pytest.mark.parametrize(("arrived", "last", "due"), [
    ({1: 500}, None, False),  # one window's burst, however large, is a quarter of 500
    ({1: 125, 2: 125, 3: 125}, None, False),
    ({1: 125, 2: 125, 3: 125, 4: 125}, None, True),
    ({n: 10 for n in range(50)}, None, True),  # a quiet shop: many windows, few each
    ({1: 1000, 2: 1000, 3: 1000, 4: 1000}, {"sessions_learned": 10_000, "finished_at": 0.0},
     True),
    ({1: 10_000, 2: 10_000}, {"sessions_learned": 10_000, "finished_at": 0.0}, False),
    # the interval holds whatever arrived
    ({n: 1000 for n in range(9)}, {"sessions_learned": 0, "finished_at": 9000.0}, False)])
def test_an_automatic_run_is_due_when_its_sessions_arrived_over_several_windows(
        arrived: dict[int, int], last: dict[str, Any] | None, due: bool) -> None:
    assert tuning_due(arrived, last, 10_000.0, min_sessions=500, min_interval=3600) is due


async def test_workers_start_one_automatic_run_when_one_is_due(
        shop: Client, settings: Settings) -> None:
    await learn(settings, hub_sessions())
    auto = settings.replace(auto_tune=True, tune_min_sessions=20, tune_min_interval=0)
    async with running_workers(auto, 2, auto_tune_every=0.1):
        started = time.monotonic()
        while True:
            model = await (await shop.get("/model")).json()
            last = model["tuning"]["last_run"]
            if last is not None and last["finished_at"] is not None:
                break
            assert time.monotonic() - started < 60, model
            await asyncio.sleep(0.2)
        assert last["trigger"] == "auto" and last["sessions_learned"] == len(hub_sessions())
        await asyncio.sleep(1.0)  # both workers check again: nothing new was learned
        again = await (await shop.get("/model")).json()
        assert again["tuning"]["last_run"]["id"] == last["id"]
        assert again["tuning"]["state"] == "idle"


async def test_a_burst_alone_never_starts_an_automatic_run(shop: Client,
                                                           settings: Settings) -> None:
    """The same sessions sent at once: many more than the threshold, from one window, which
    counts for a quarter of it at most (before: a run started within the workers' check)."""
    await post(shop, settings, hub_sessions())
    auto = settings.replace(auto_tune=True, tune_min_sessions=20, tune_min_interval=0)
    store = Store(settings)
    try:
        async with running_workers(auto, 2, auto_tune_every=0.1):
            await asyncio.sleep(3.0)  # thirty checks each
            assert await store.redis.get(store.keys.tune_started()) is None
            assert (await (await shop.get("/model")).json())["tuning"]["state"] == "idle"
    finally:
        await store.close()


def test_a_gain_within_the_noise_of_the_holdout_is_not_enough() -> None:
    """Paired per prediction: a mean gain that a few predictions going either way explain is
    not a promotion; the same mean gain on every prediction is."""
    current = Score(0.5, 0.2, np.array([1.0, 0.0, 1.5, 0.0, 1.0, 0.5]))
    noisy = Score(0.6, 0.2, current.each + np.array([1.0, -1.0, 1.0, -1.0, 1.0, 0.2]))
    mean, error = gain(noisy, current)
    assert mean > 0 and not mean > PROMOTION_Z * error
    steady = Score(0.6, 0.2, current.each + 0.2)
    mean, error = gain(steady, current)
    assert mean > PROMOTION_Z * error
    assert gain(Score(1, 1, np.ones(1)), Score(0, 0, np.zeros(1))) == (0.0, math.inf)


async def test_a_run_killed_midway_changes_nothing_and_the_next_one_proceeds(
        shop: Client, settings: Settings) -> None:
    """SIGKILL while a run searches: the model record (version, values) is as it was, the
    lease lapses, and the next run takes it and finishes."""
    rng = np.random.default_rng(5)
    sessions = [(f"long{n}", T0 + 20 * n, [f"i{k}" for k in rng.integers(0, 150, 6)])
                for n in range(1500)]
    await learn(settings, sessions)
    assert (await shop.put("/admin/model", json={"params": {"neighbours": 150}})).status == 200
    before = await (await shop.get("/model")).json()
    quick = settings.replace(tune_lease_ms=3000)  # lapses soon after the kill
    run = subprocess.Popen([*RUN_COMMAND, "--log-level", "WARNING",
                            "tune", "--apply", "--run-id", "killed"],
                           env={**os.environ, **quick.to_env()}, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    store = Store(quick)
    try:
        started = time.monotonic()
        while await store.redis.get(store.keys.tune_started()) is None:
            assert run.poll() is None and time.monotonic() - started < 30
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # searching now: thousands of predictions per candidate
        assert run.poll() is None, "the run ended before it could be killed"
        run.kill()
        run.wait()
        after = await (await shop.get("/model")).json()
        assert {k: after[k] for k in ("version", "params", "pinned", "tuned_at")} == \
            {k: before[k] for k in ("version", "params", "pinned", "tuned_at")}
        assert after["tuning"]["last_run"] is None
        lease = store.keys.tune_lease()
        while not await store.scripts.lease(lease, "next", quick.tune_lease_ms, "take"):
            assert time.monotonic() - started < 30
            await asyncio.sleep(0.1)
        done = await tune_live(store, Params.from_settings(quick), trigger="cli",
                               run_id="next", holdout_sessions=20)
        await store.scripts.lease(lease, "next", quick.tune_lease_ms, "release")
    finally:
        if run.poll() is None:
            run.kill()
        await store.close()
    final = await (await shop.get("/model")).json()
    assert final["version"] == before["version"] + 1
    assert final["tuning"]["last_run"]["id"] == done["id"] == "next"
    assert final["tuning"]["state"] == "idle"


def test_the_next_automatic_run_counts_from_the_last_one_started() -> None:
    finished = {"id": "a", "started_at": 100.0, "finished_at": 200.0}
    killed = {"id": "b", "started_at": 300.0}
    assert latest_run(None, None) is None
    assert latest_run(finished, None) is finished
    assert latest_run(finished, {"id": "a", "started_at": 100.0}) is finished
    assert latest_run(finished, killed) is killed
    assert latest_run(None, killed) is killed
