"""The sequence model: its examples and training (pure), its stored form, when a run is due,
its runs on the live state (resumed, bounded per arrival window, honest for a tuning run),
serving it through the learned order once a weight is set, and serving without it."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import numpy as np
import pytest

from service.core import reorder
from service.core.layout import item_hash
from service.core.model import Event
from service.core.scoring import Params, Query
from service.core.sequence import WINDOW, SequenceModel, run_due
from service.offline import sequencefit, sequencerun
from service.offline.livetune import tune_live
from service.settings import Settings
from service.store.state import Store
from service.store.tuning import RUN_COMMAND
from tests.conftest import Client
from tests.helpers import drain, running_workers
from tests.test_livetune import HOUR, T0, learn, shop  # noqa: F401  (fixture)

U = np.uint64


def h(name: str) -> int:
    return int.from_bytes(item_hash(name), "little")


def hashes(*names: str) -> np.ndarray:
    return np.array([h(n) for n in names], U)


def test_examples_are_each_prefix_newest_first_each_item_once() -> None:
    found = sequencefit.examples([np.array([1, 2, 1, 3], U), np.array([5], U)])
    assert found.targets.tolist() == [2, 1, 3]
    assert found.windows.shape == (3, WINDOW)
    assert found.windows[:, :3].tolist() == [[1, 0, 0], [2, 1, 0], [1, 2, 0]]


def chain_sessions(count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Sessions over items 1..40 where item n is always followed by n + 1 (mod 40)."""
    out = []
    for _ in range(count):
        start = int(rng.integers(1, 41))
        out.append(np.array([(start + k - 1) % 40 + 1 for k in range(4)], U))
    return out


def test_training_learns_what_follows_what() -> None:
    """Item n is followed by n + 1 in every session: trained, the model ranks n + 1 first
    among the answers after a session ending in n, which an untrained one does not."""
    rng = np.random.default_rng(1)
    found = sequencefit.examples(chain_sessions(600, rng))
    untrained = sequencefit.Trainer.resume(sequencefit.vocabulary(found, np.zeros(0, U)),
                                           None, None).model({})
    model = sequencefit.train(found, None, None, epochs=3).model({})
    answers = np.arange(1, 41, dtype=U)
    right = 0
    for n in range(1, 41):
        values = model.values(np.array([n], U), answers)
        assert values.max() == 0.0
        right += int(answers[int(np.argmax(values))]) == n % 40 + 1
    assert right >= 38
    guessed = sum(int(answers[int(np.argmax(untrained.values(np.array([n], U), answers)))])
                  == n % 40 + 1 for n in range(1, 41))
    assert guessed < 10


def test_values_with_unknown_items_and_no_model() -> None:
    model = sequencefit.train(sequencefit.examples(chain_sessions(200, np.random.default_rng(2))),
                              None, None, epochs=1).model({})
    got = model.values(np.array([3], U), np.array([4, 999, 5], U))
    assert got[1] == min(got[0], got[2])  # never learned: the lowest known value
    assert model.values(np.array([999], U), np.array([4, 5], U)).tolist() == [0.0, 0.0]
    assert model.values(np.array([3], U), np.array([998, 999], U)).tolist() == [0.0, 0.0]
    assert reorder.sequence_values(None, Query(np.array([3], U), np.ones(1), np.array([3], U)),
                                   np.array([4], U)).size == 0


def test_the_stored_form_round_trips_and_refuses_anything_else() -> None:
    model = sequencefit.train(sequencefit.examples(chain_sessions(50, np.random.default_rng(3))),
                              None, None, epochs=1).model({"id": "r1", "sessions": 50})
    again = SequenceModel.from_bytes(model.to_bytes())
    assert again.facts == {"id": "r1", "sessions": 50}
    for a, b in ((model.items, again.items), (model.inputs, again.inputs),
                 (model.last, again.last), (model.outputs, again.outputs),
                 (model.bias, again.bias), (model.positions, again.positions)):
        assert np.array_equal(a, b)
    with pytest.raises(ValueError):
        SequenceModel.from_bytes(b"not a model")
    with pytest.raises(ValueError):
        SequenceModel.from_bytes(model.to_bytes()[:-4])
    for header in (b'{"rows": [1]}', b'{"rows": 0, "dimensions": 1, "window": 1}', b'[1]'):
        with pytest.raises(ValueError):
            SequenceModel.from_bytes(b"SRSQ1" + len(header).to_bytes(4, "little") + header)


def test_a_resumed_trainer_keeps_what_it_knew_and_adds_new_items() -> None:
    first = sequencefit.train(sequencefit.examples(chain_sessions(100, np.random.default_rng(4))),
                              None, None, epochs=1)
    known = first.model({})
    more = sequencefit.examples([np.array([1, 77, 78], U)])
    resumed = sequencefit.Trainer.resume(sequencefit.vocabulary(more, known.items), known,
                                         first.sums)
    assert set(resumed.items.tolist()) == set(known.items.tolist()) | {77, 78}
    rows = resumed.rows_of(np.array([5], U))
    assert np.array_equal(resumed.inputs[rows], known.inputs[known.rows_of(np.array([5], U))])
    assert np.array_equal(resumed.sums[:, rows], first.sums[:, first.rows_of(np.array([5], U))])


def test_the_vocabulary_keeps_the_most_clicked_items_then_the_known_up_to_its_cap() -> None:
    """However many items crafted sessions name, a model keeps at most ``most`` (what bounds
    its size in every serve process): the most clicked of the run's sessions first."""
    found = sequencefit.examples([np.array([1, 2, 1, 2, 1, 3], U), np.array([4, 5], U)])
    assert sequencefit.vocabulary(found, np.zeros(0, U), most=2).tolist() == [1, 2]
    assert sequencefit.vocabulary(found, np.array([9], U), most=6).tolist() == [1, 2, 3, 4,
                                                                                  5, 9]
    assert len(sequencefit.vocabulary(found, np.arange(100, 200, dtype=U))) == 105
    assert sequencefit.MOST_ITEMS == 100_000


def test_a_run_is_due_by_its_period_and_new_arrivals() -> None:
    assert not run_due(None, None, None, 1000.0, 300.0)  # nothing arrived
    assert run_due(None, None, 5.0, 1000.0, 300.0)  # no model yet
    assert not run_due(None, None, 5.0, 1000.0, 0.0)  # off
    assert not run_due(900.0, 1.0, 5.0, 1000.0, 300.0)  # started within the period
    assert run_due(600.0, 1.0, 5.0, 1000.0, 300.0)
    assert not run_due(600.0, 5.0, 5.0, 1000.0, 300.0)  # nothing new since its model


def test_the_order_reads_the_sequence_feature_only_under_its_weight() -> None:
    best = np.array([7, 3, 9], U)
    values = np.array([2.0, 1.0, 0.5])
    q = Query(np.array([1], U), np.ones(1), np.array([1], U))
    sequence = np.array([-3.0, -2.0, 0.0])
    from service.core.scoring import NO_CANDIDATES
    kept, _ = reorder.reorder(best, values, np.ones(3), 10.0, q, NO_CANDIDATES,
                              Params(order_score=1.0), 3, sequence)
    assert kept.tolist() == [7, 3, 9]
    kept, _ = reorder.reorder(best, values, np.ones(3), 10.0, q, NO_CANDIDATES,
                              Params(order_score=1.0, order_sequence=5.0), 3, sequence)
    assert kept.tolist() == [9, 3, 7]
    rows = reorder.features(best, values, np.ones(3), 10.0, q, NO_CANDIDATES, sequence)
    assert rows[:, reorder.FEATURES.index("order_sequence")].tolist() == sequence.tolist()


def chain(prefix: str, start: float, count: int) -> list[tuple[str, float, list[str]]]:
    """Sessions one an hour apart going x -> a -> b -> c (a shop's habit)."""
    return [(f"{prefix}{n}", start + n * HOUR, ["x", "a", "b", "c"]) for n in range(count)]


async def test_a_run_stores_a_model_every_serve_process_follows(
        shop: Client, settings: Settings) -> None:  # noqa: F811
    """Without a model a weight on the sequence feature changes nothing (and breaks
    nothing); a run stores one (GET /model says so), the serve process reads it within its
    poll, and the weight then orders the answers as the model says: c after x a b."""
    await learn(settings, chain("s", T0, 30) + [(f"w{n}", T0 + 40 * HOUR + n, ["b", "w", "v"])
                                                 for n in range(30)])
    body = {"user_interactions": {"x": {"timestamp": T0 + 99 * HOUR},
                                  "a": {"timestamp": T0 + 99 * HOUR + 1},
                                  "b": {"timestamp": T0 + 99 * HOUR + 2}}, "k": 3}

    async def order() -> list[str]:
        resp = await shop.post("/iid_recommend", json=body)
        assert resp.status == 200
        return [r["id"] for r in (await resp.json())["recommendations"]]

    before = await order()
    assert (await (await shop.get("/model")).json())["sequence"] is None
    resp = await shop.put("/admin/model", json={"params": {"order_score": 0.001,
                                                           "order_sequence": 10.0}})
    assert resp.status == 200
    unordered = await order()
    assert unordered[:1] == before[:1]  # no model: the feature is 0, the scores decide
    store = Store(settings)
    try:
        facts = await sequencerun.fit_live(store, "run1")
    finally:
        await store.close()
    # the w sessions arrived within one hour: that hour gives at most its share
    assert facts["stored"] is True and facts["sessions"] == 31 and facts["epochs"] == 3
    described = (await (await shop.get("/model")).json())["sequence"]
    assert described["id"] == "run1" and described["items"] == 6
    await asyncio.sleep(2.5)  # the serve process' poll
    assert (await order())[0] == "c"
    # a weight on a product of the feature alone reads the model too: the square of a value
    # against the best's puts the answers the model likes least first (read as 0, the
    # scores' order would stay, c first)
    resp = await shop.put("/admin/model", json={"params": {
        "order_sequence": 0.0, "order_sequence_x_sequence": 10.0}})
    assert resp.status == 200
    assert (await order())[0] != "c"


async def test_a_model_that_cannot_be_read_leaves_answers_to_the_neighbourhood(
        shop: Client, settings: Settings) -> None:  # noqa: F811
    """A stored model this release cannot read (another release's, damaged) is none: the
    serve process keeps answering, the sequence feature 0, and reads the next one."""
    await learn(settings, chain("s", T0, 10))
    body = {"user_interactions": {"x": {"timestamp": T0 + 99 * HOUR}}, "k": 3}
    plain = await (await shop.post("/iid_recommend", json=body)).json()
    assert (await shop.put("/admin/model", json={"params": {"order_score": 1.0,
                                                           "order_sequence": 3.0}})).status \
        == 200
    store = Store(settings)
    try:
        await store.redis.hset(store.keys.sequence(), mapping={"model": b"SRSQ1\xff\xff",
                                                               "version": 7})
        await asyncio.sleep(2.5)
        resp = await shop.post("/iid_recommend", json=body)
        assert resp.status == 200
        assert [r["id"] for r in (await resp.json())["recommendations"]] == \
            [r["id"] for r in plain["recommendations"]]
        await sequencerun.fit_live(store, "next")
        assert await store.sequence.version() == 8
    finally:
        await store.close()


async def test_a_run_resumes_over_what_arrived_since(settings: Settings) -> None:
    await learn(settings, chain("s", T0, 10))
    store = Store(settings)
    try:
        first = await sequencerun.fit_live(store, "r1")
        await learn(settings, [(f"n{n}", T0 + 30 * HOUR + n, ["x", "new"]) for n in range(5)])
        second = await sequencerun.fit_live(store, "r2")
        model, sums = await store.sequence.training_state()
    finally:
        await store.close()
    assert first["epochs"] == 3 and first["sessions"] == 10
    # one pass over the newest sessions, read as a fresh run reads them: 11 hours hold
    # sessions, so the newest (5 sessions of one prediction) gives no more than another
    # (one session of three): 3 of its 5
    assert second["resumed"] is True and second["epochs"] == 1
    assert second["sessions"] == 13 and second["version"] == 2
    assert "arrived_until" not in second
    assert model is not None and sums is not None and model.rows_of(hashes("new"))[0] > 0


def test_the_share_cap_is_a_water_level() -> None:
    cap = sequencerun.share_cap
    assert cap([]) == 0 and cap([0, 0]) == 0
    assert cap([5] * 30) == 5  # every window whole: each is a 30th
    # one window of 10,000 among 30 of 5: it may give no more than a 24th of the total
    level = cap([10_000] + [5] * 30)
    assert level * 24 <= level + 150 and (level + 1) * 24 > level + 1 + 150
    assert cap([100, 3, 7]) == 3  # fewer than 24 windows: at most the smallest's
    assert cap([5] * 30, most=60) == 2  # and the total within ``most``


async def test_one_arrival_window_gives_at_most_its_share(settings: Settings) -> None:
    """A burst of 400 sessions of 40 clicks within one hour (the red team's: 97 % of a
    resumed run's predictions, 62 % of a fresh one's, before the share was a share) among 30
    honest hours: it gives at most a 24th of a run, fresh or resumed, and the honest hours
    all they hold."""
    burst = [(f"burst{n}", T0 + 40 * HOUR + n, ["p", "q"] * 20) for n in range(400)]
    honest = [(f"h{n}-{k}", T0 + n * HOUR + 60 * k, ["x", "a", "b"])
              for n in range(30) for k in range(3)]
    await learn(settings, honest + burst)
    store = Store(settings)
    try:
        for most in (sequencerun.MOST_PREDICTIONS, sequencerun.REFRESH_PREDICTIONS):
            found, _ = await sequencerun.sessions(store, most=most)
            crafted = sum(len(s) - 1 for s in found if int(s[0]) == h("p"))
            total = sum(len(s) - 1 for s in found)
            assert 24 * crafted <= total
            assert total - crafted == 90 * 2  # every honest session
    finally:
        await store.close()


async def test_a_tuning_runs_model_sees_nothing_from_its_holdout_on(
        settings: Settings) -> None:
    """A session planted after the cut (the holdout's first start) teaches the tuning run's
    model nothing: an item only it holds is unknown to the model, and so is its last step."""
    await learn(settings, [*chain("s", T0, 10), ("future", T0 + 50 * HOUR, ["x", "planted"])])
    store = Store(settings)
    try:
        model = await sequencerun.fit_before(store, round((T0 + 20 * HOUR) * 10**6))
        everything = await sequencerun.fit_before(store, round((T0 + 60 * HOUR) * 10**6))
    finally:
        await store.close()
    assert model is not None and everything is not None
    assert model.rows_of(hashes("planted"))[0] == 0
    assert everything.rows_of(hashes("planted"))[0] > 0


async def test_backdated_sessions_do_not_empty_a_tuning_runs_model(
        settings: Settings) -> None:
    """Sessions dated 1970 that arrive now enter the holdout (the newest arrivals) with the
    earliest starts of all: the run's own sequence model still learns from the honest
    sessions before its cut (a quantile of the starts, not the first), and the backdated
    sessions read no model."""
    await learn(settings, chain("s", T0, 40))
    store = Store(settings)
    try:
        events = [Event(f"old{n}", item, float(k)) for n in range(3)
                  for k, item in enumerate(["x", "a"])]
        await store.ingestion.ingest(events)
        await drain(settings)
        run = await tune_live(store, Params.from_settings(settings), trigger="cli",
                              holdout_sessions=12, seed=1)
    finally:
        await store.close()
    assert run["holdout_sessions"] == 12
    assert run["sequence"] is not None and run["sequence"]["predictions"] > 0
    assert run["sequence"]["holdout_sessions"] < 12


async def test_workers_start_a_run_when_one_is_due(settings: Settings) -> None:
    """A worker's check starts ``sessionrec sequence --apply`` (a process of its own) once
    sessions arrived; the stored model follows; the next check within the period starts
    none."""
    await learn(settings, chain("s", T0, 10))
    store = Store(settings)
    try:
        async with running_workers(settings.replace(auto_tune=False, sequence_refresh=3600),
                                   1, auto_tune_every=0.1):
            for _ in range(300):
                if await store.sequence.version() > 0:
                    break
                await asyncio.sleep(0.2)
            await asyncio.sleep(0.5)
        assert await store.sequence.version() == 1
        facts = await store.sequence.facts()
        assert facts is not None and facts["sessions"] == 10
    finally:
        await store.close()


def test_the_command_refuses_the_embedded_store_and_runs_on_a_redis(
        settings: Settings) -> None:
    refused = subprocess.run([*RUN_COMMAND, "sequence", "--apply", "--redis-url", "memory://"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "needs a Redis" in refused.stderr
    empty = subprocess.run([*RUN_COMMAND, "--log-level", "WARNING", "sequence", "--apply",
                            "--redis-url", settings.redis_url, "--namespace",
                            settings.namespace, "--partitions", str(settings.partitions)],
                           capture_output=True, text=True, timeout=120)
    assert empty.returncode == 0, empty.stderr
    assert '"stored": false' in empty.stdout
    assert sys.executable in RUN_COMMAND


def test_the_served_order_answers_as_the_order_and_sequence_values_do() -> None:
    """``reorder.served`` (what a request runs: the frequencies as the cache's bytes, the
    sequence values handed on as the kernel gives them) orders every answer as
    ``reorder.reorder`` over ``reorder.sequence_values`` does: with and without a model,
    under weights that read its values and weights that do not, past the depth and short of
    it."""
    from service.core.scoring import Candidates

    rng = np.random.default_rng(9)
    model = sequencefit.train(sequencefit.examples(chain_sessions(300, rng)), None, None,
                              epochs=1).model({})
    compared = 0
    for case in range(60):
        n = int(rng.integers(0, 130))
        best = rng.choice(np.arange(1, 60, dtype=U), min(n, 59), replace=False)
        best = np.concatenate((best, np.arange(100, 100 + n - len(best), dtype=U)))
        values = np.sort(rng.random(len(best)) * 4)[::-1].copy()
        df = rng.integers(0, 50, len(best)).astype(np.float64)
        items = rng.choice(np.arange(1, 45, dtype=U), int(rng.integers(1, 6)), replace=False)
        q = Query(items, rng.random(len(items)), items)
        found = Candidates(best[::2].copy(), np.ones(len(best[::2])),
                           rng.integers(1, 10**12, len(best[::2])).astype(np.int64))
        params = Params(order_score=1.0, order_last=-0.5) if case % 3 == 0 else \
            Params(order_sequence=0.7, order_score_x_sequence=0.2, order_idf=0.1)
        k = int(rng.integers(1, 40))
        with_model = None if case % 4 == 0 else model
        want = reorder.reorder(best, values, df, 900.0, q, found, params, k,
                               reorder.sequence_values(with_model, q, best)
                               if reorder.reads_sequence(params) else reorder.NO_VALUES)
        got = reorder.served(reorder.order_of(params), with_model, best, values, df.tobytes(),
                             900.0, q, found, k)
        assert got[0].tolist() == want[0].tolist()
        assert got[1].tolist() == want[1].tolist()
        compared += len(got[0])
    assert compared > 500


def test_the_one_call_order_answers_as_rank_then_the_served_order() -> None:
    """``reorder.ranked`` (what a request runs when its frequencies are cached) gives the
    answers ``scoring.rank`` to the order's depth, the table's frequencies and
    ``reorder.served`` give, with and without a model and the idf, repeats on and off; and
    None when an answer's frequency is not in the table (the request then reads it)."""
    from service.core import scoring
    from service.core.scoring import Candidates
    from service.store.caches import FrequencyCache

    rng = np.random.default_rng(12)
    model = sequencefit.train(sequencefit.examples(chain_sessions(300, rng)), None, None,
                              epochs=1).model({})
    frequencies = FrequencyCache()
    frequencies.add(np.arange(1, 200, dtype=U), rng.integers(1, 70, 199).astype(np.float64))
    frequencies.sessions = 5000.0
    table = frequencies.table()
    assert table is not None
    compared = refused = 0
    for case in range(80):
        candidates = rng.choice(np.arange(1, 200, dtype=U), int(rng.integers(1, 180)),
                                replace=False)
        scores = rng.random(len(candidates)) * 3
        items = rng.choice(np.arange(1, 60, dtype=U), int(rng.integers(1, 6)), replace=False)
        if case % 5 == 0:  # a session item no session holds yet: not in the table
            items = np.append(items, U(260))
        q = Query(items, rng.random(len(items)), items)
        found = Candidates(candidates, scores, rng.integers(1, 10**12, len(candidates)))
        params = Params(idf_weight=float(case % 2), repeat_weight=0.5 * (case % 3 != 1),
                        order_score=1.0, order_idf=0.3, order_sequence=0.7 * (case % 4 != 0),
                        order_score_x_sequence=0.2)
        order, k = reorder.order_of(params), int(rng.integers(1, 40))
        exclude = rng.choice(np.arange(1, 200, dtype=U), 5)
        df = (frequencies.known(candidates) or b"") if params.idf_weight else b""
        got = reorder.ranked(order, model, candidates, scores, df, table, q, params, True,
                             exclude, found, k)
        best, values = scoring.rank(candidates, scores, df, 5000.0, q, params, True, exclude,
                                    order.depth(k))
        best_df = frequencies.known(best)
        if best_df is None:
            assert got is None
            refused += 1
            continue
        want = reorder.served(order, model, best, values, best_df, 5000.0, q, found, k)
        assert got is not None
        assert got[0].tolist() == want[0].tolist()
        assert got[1].tolist() == want[1].tolist()
        compared += len(got[0])
    assert compared > 500 and refused > 3
