"""The learned order of the top answers: its features and ordering (pure), its fit (a convex
conditional logit: deterministic, honest about constant features, bounded by the limits),
serving it once the record holds weights, and a tuning run that fits and promotes it."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest

from service.core import reorder
from service.core.scoring import NO_CANDIDATES, Candidates, Params, Query
from service.offline import fitorder, livetune
from service.offline.holdout import Holdout, Score, recent_sessions
from service.offline.livetune import SEARCHED, Search, tune_live
from service.settings import Settings
from service.store.state import Store
from tests.conftest import Client
from tests.test_livetune import HOUR, T0, learn, shop  # noqa: F401  (fixture)

U = np.uint64


def query(items: list[int], weights: list[float]) -> Query:
    return Query(np.array(items, U), np.array(weights), np.array(items, U))


DAY = reorder.DAY_KEYS


def test_the_features_of_each_answer() -> None:
    best = np.array([7, 3, 9], U)
    values = np.array([2.0, 1.0, 0.5])
    # 9 was last touched by a neighbour 2 days before the newest neighbour event, 3 (one of
    # the session's own items, as 7) never
    found = Candidates(np.array([9, 11], U), np.array([1.0, 1.0]),
                       np.array([8 * DAY, 10 * DAY], np.int64))
    got = reorder.features(best, values, np.array([10.0, 0.0, 100.0]), 1000.0,
                           query([3, 7], [0.25, 1.0]), found)
    assert got.shape == (3, len(reorder.COLUMNS))
    np.testing.assert_allclose(got[:, 0], np.log([1.0, 0.5, 0.25]))  # score / best
    np.testing.assert_allclose(got[:, 1], np.log1p(1000.0 / np.array([10.0, 1.0, 100.0])))
    np.testing.assert_allclose(got[:, 2], np.log1p([10.0, 0.0, 100.0]))
    np.testing.assert_allclose(got[:, 3], [1.0, 0.25, 0.0])  # its weight in the session
    np.testing.assert_allclose(got[:, 4], [1.0, 0.0, 0.0])  # 7 is the session's last item
    np.testing.assert_allclose(got[:, 5], np.log1p([reorder.AGE_CAP, reorder.AGE_CAP, 2.0]))
    assert got[:, 7].tolist() == [1.0, 1.0, 0.0]  # 7 and 3 are the session's items
    assert got[:, 8].tolist() == [np.log(2.0)] * 3  # two items: the session's length
    assert reorder.features(best, values, np.ones(3), 1.0, query([3], [1.0]),
                            NO_CANDIDATES)[:, 5].tolist() == [np.log1p(reorder.AGE_CAP)] * 3


def test_the_seen_feature_marks_every_session_item_not_only_the_querys() -> None:
    """An item of the session older than the query's newest items has no weight in the
    query; the seen feature says the session held it, and a weight on it orders by it."""
    best = np.array([5, 6, 7, 8], U)
    values = np.array([4.0, 3.0, 2.0, 1.0])
    # the session: 8 and 6, long ago; the query holds only its newest two
    session = Query(np.array([2, 3], U), np.array([0.5, 1.0]), np.array([8, 6, 2, 3], U))
    got = reorder.features(best, values, np.ones(4), 10.0, session, NO_CANDIDATES)
    assert got[:, 3].tolist() == [0.0] * 4  # none of them weighs in the query
    assert got[:, reorder.FEATURES.index("order_seen")].tolist() == [0.0, 1.0, 0.0, 1.0]
    kept, _ = reorder.reorder(best, values, np.ones(4), 10.0, session, NO_CANDIDATES,
                              Params(order_score=1.0, order_seen=2.0), 4)
    assert kept.tolist() == [6, 8, 5, 7]
    kept, _ = reorder.reorder(best, values, np.ones(4), 10.0, session, NO_CANDIDATES,
                              Params(order_score=1.0), 4)
    assert kept.tolist() == [5, 6, 7, 8]


def test_the_length_feature_counts_the_sessions_distinct_items_and_weighs_in_products() -> None:
    """The session's length is log of its distinct items (a holdout's learned session may
    repeat one; a served one never does), the same for every answer: a product weight with
    it orders a long session's answers by the other feature and leaves a one-item session's
    in the served order (log 1 = 0)."""
    best = np.array([5, 6, 7], U)
    values = np.array([3.0, 2.0, 1.0])
    df = np.array([1.0, 10.0, 100.0])
    repeated = Query(np.array([2, 3], U), np.array([0.5, 1.0]), np.array([2, 3, 2, 3, 3, 4], U))
    got = reorder.features(best, values, df, 1e3, repeated, NO_CANDIDATES)
    assert got[:, reorder.COLUMNS.index("order_length")].tolist() == [np.log(3.0)] * 3
    assert reorder.features(best, values, df, 1e3, Query(np.zeros(0, U), np.zeros(0),
                                                          np.zeros(0, U)), NO_CANDIDATES
                            )[:, 8].tolist() == [0.0] * 3  # no session: length 0
    weights = Params(order_sessions_x_length=1.0)
    long, _ = reorder.reorder(best, values, df, 1e3, repeated, NO_CANDIDATES, weights, 3)
    assert long.tolist() == [7, 6, 5]  # by sessions
    one = Query(np.array([2], U), np.array([1.0]), np.array([2, 2], U))
    short, _ = reorder.reorder(best, values, df, 1e3, one, NO_CANDIDATES, weights, 3)
    assert short.tolist() == [5, 6, 7]  # length 0: every value 0, ties in the served order
    assert "order_length" not in reorder.WEIGHTS  # alone it would order nothing
    # a session counts at most LENGTH_CAP distinct items: a crafted long session's length
    # lies where honest sessions' do
    many = np.arange(100, 100 + 3 * reorder.LENGTH_CAP, dtype=U)
    capped = Query(many[-2:], np.array([0.5, 1.0]), np.concatenate((many, many)))
    assert reorder.features(best, values, df, 1e3, capped, NO_CANDIDATES)[:, 8].tolist() == \
        [np.log(reorder.LENGTH_CAP)] * 3


def test_no_weight_keeps_the_served_order_and_a_weight_orders_by_its_feature() -> None:
    best = np.array([1, 2, 3, 4], U)
    values = np.array([4.0, 3.0, 2.0, 1.0])
    df = np.array([5.0, 50.0, 500.0, 50.0])
    q = query([9], [1.0])
    kept, scores = reorder.reorder(best, values, df, 1e4, q, NO_CANDIDATES, Params(), 3)
    assert kept.tolist() == [1, 2, 3] and scores.tolist() == [4.0, 3.0, 2.0]
    assert reorder.depth(Params(), 20) == 20
    popular = Params(order_sessions=1.0)
    assert reorder.depth(popular, 20) == reorder.DEPTH
    kept, scores = reorder.reorder(best, values, df, 1e4, q, NO_CANDIDATES, popular, 4)
    assert kept.tolist() == [3, 2, 4, 1]  # by sessions; 2 and 4 tie: the served order
    assert scores[0] == 1.0 and np.all(np.diff(scores) <= 0)
    np.testing.assert_allclose(scores[1], 51 / 501)  # exp of the log difference


def test_whether_an_order_is_in_force_follows_each_parameters_object() -> None:
    """Worked out once per parameters object: requests under an experiment's variants, a
    placement's and the record's alternate, and a tuning run scores a hundred candidates;
    each is answered for itself, never with another's weights."""
    plain, ordered, sequenced = (Params(), Params(order_sessions=1.0),
                                 Params(order_idf_x_sequence=0.5))
    for _ in range(2):
        for params, active, sequence in ((plain, False, False), (ordered, True, False),
                                         (sequenced, True, True)):
            assert (reorder.active(params), reorder.reads_sequence(params)) == \
                (active, sequence)
            assert reorder.weights_of(params).tolist() == [
                float(getattr(params, name)) for name in reorder.WEIGHTS]
    many = [Params(order_last=float(n)) for n in range(3 * reorder.KNOWN_ORDERS)]
    assert [reorder.active(p) for p in many] == [n > 0 for n in range(len(many))]
    assert [reorder.weights_of(p)[reorder.WEIGHTS.index("order_last")] for p in many] == \
        list(range(len(many)))
    assert reorder.active(ordered) and not reorder.active(plain)


def test_answers_past_the_depth_follow_in_the_served_order_below_the_ordered_ones() -> None:
    n = reorder.DEPTH + 5
    best = np.arange(1, n + 1, dtype=U)
    values = np.linspace(2.0, 1.0, n)
    df = np.arange(n, dtype=np.float64)  # the last of the head is the most popular
    kept, scores = reorder.reorder(best, values, df, 1e6, query([999], [1.0]), NO_CANDIDATES,
                                   Params(order_sessions=1.0), n)
    assert kept[0] == reorder.DEPTH and kept[reorder.DEPTH:].tolist() == \
        best[reorder.DEPTH:].tolist()
    assert np.all(np.diff(scores) <= 0) and scores[-1] > 0


def synthetic(seed: int, predictions: int = 400, answers: int = 30, product: float = 0.0
              ) -> fitorder.Examples:
    """Clicks that follow the answers' popularity as much as their score: a conditional
    logit with weight 1 on each, and none on the rest (the last item is never shown);
    ``product``: the weight of the sequence feature times the popularity too."""
    rng = np.random.default_rng(seed)
    rows, targets = [], []
    for _ in range(predictions):
        x = np.zeros((answers, len(reorder.COLUMNS)))
        x[:, 0] = -np.sort(rng.exponential(1.0, answers))  # log score, best first
        x[:, 1] = rng.uniform(1, 8, answers)  # idf: noise
        x[:, 2] = rng.uniform(0, 6, answers)  # log sessions
        x[:, 3] = np.where(rng.random(answers) < 0.1, rng.random(answers), 0.0)
        if product:
            x[:, 6] = -rng.exponential(1.0, answers)  # the sequence model's value
        z = x[:, 0] + x[:, 2] + product * x[:, 2] * x[:, 6]
        p = np.exp(z - z.max())
        rows.append(x)
        targets.append(int(rng.choice(answers, p=p / p.sum())))
    return fitorder.Examples(rows, targets)


def reciprocal(held: fitorder.Examples, scores: list[np.ndarray[Any, Any]]) -> float:
    """The mean reciprocal rank of the held clicks under ``scores`` (one array per
    prediction)."""
    return float(np.mean([1 / (1 + int(np.sum(z > z[y])))
                          for z, y in zip(scores, held.targets, strict=True)]))


def test_the_fit_orders_as_the_weights_that_made_the_clicks() -> None:
    """Fitted, the order ranks held clicks as well as the model that made them. The weights
    themselves are not that model's: a feature and its square or product with another are
    near one another, and the ridge spreads an effect over such columns."""
    weights = fitorder.fit(synthetic(1, 2000))
    assert weights is not None
    held = synthetic(6, 1000)
    truth = reciprocal(held, [x[:, 0] + x[:, 2] for x in held.rows])
    assert reciprocal(held, [fitorder.with_pairs(x) @ weights for x in held.rows]) > \
        0.97 * truth
    names = dict(zip(reorder.WEIGHTS, weights.tolist(), strict=True))
    assert names["order_score"] > 0.3 and names["order_sessions"] > 0.3
    # never vary: the ridge keeps them and every product with them at 0
    assert all(names[name] == 0.0 for name in reorder.WEIGHTS if "last" in name or "age" in name)
    # convex: the same weights from any start, so the same examples give the same fit
    again = fitorder.fit(synthetic(1, 2000))
    assert again is not None and np.array_equal(weights, again)


def test_the_fitted_order_finds_more_clicks_than_the_served_one() -> None:
    weights = fitorder.fit(synthetic(2))
    assert weights is not None
    held = synthetic(3)

    def rank(order: np.ndarray[Any, Any], target: int) -> int:
        return int(np.flatnonzero(order == target)[0])

    served = [y for y in held.targets]  # the rows are in the served order
    fitted = [rank(np.argsort(-(fitorder.with_pairs(x) @ weights), kind="stable"), y)
              for x, y in zip(held.rows, held.targets, strict=True)]
    assert np.mean(1 / (np.array(fitted) + 1)) > 1.2 * np.mean(1 / (np.array(served) + 1))


def owned(found: fitorder.Examples) -> fitorder.Examples:
    """``found`` with each prediction a session of its own (0, 1, ...)."""
    return fitorder.Examples(found.rows, found.targets, list(range(len(found.targets))))


def noise(seed: int, predictions: int) -> fitorder.Examples:
    """``synthetic``'s answers, clicked at random: nothing in them tells the click."""
    rng = np.random.default_rng(seed)
    found = synthetic(seed, predictions)
    return fitorder.Examples(found.rows, [int(rng.integers(0, len(rows)))
                                          for rows in found.rows])


def worth(rows: np.ndarray[Any, Any], click: int, weights: np.ndarray[Any, Any]) -> float:
    """HR@20 + MRR@20 of one prediction ordered by ``weights`` (ties in the served order)."""
    order = np.argsort(-(fitorder.with_pairs(rows) @ weights), kind="stable")
    rank = int(np.flatnonzero(order == click)[0])
    return (1 + 1 / (rank + 1)) if rank < 20 else 0.0


def in_sample(found: fitorder.Examples, predictions: int) -> float:
    """HR@20 + MRR@20 of an order fitted on ``found`` and scored on it."""
    weights = fitorder.fit(found)
    assert weights is not None
    return sum(worth(rows, y, weights)
               for rows, y in zip(found.rows, found.targets, strict=True)) / predictions


def test_a_cross_fitted_order_is_scored_on_predictions_it_did_not_learn_from() -> None:
    """Clicks at random: an order fitted on them and scored on them finds order in the
    noise; cross-fitted, each fold ordered by what the other taught, it is worth no more
    than the served order (less: what it learned by heart misleads it). Where the clicks
    follow the features, it is worth nearly what the fit scores in sample. Misses
    (``predictions`` beyond the examples) count as 0."""
    random, real = noise(11, 120), synthetic(12, 400)
    folds = [n % 2 for n in range(400)]
    served = sum((1 + 1 / (y + 1)) for y in random.targets if y < 20) / 120
    crossed = fitorder.cross_fitted(random, folds[:120], 120, 20)
    assert in_sample(random, 120) > crossed + 0.05
    assert crossed < served + 0.02
    real_crossed = fitorder.cross_fitted(real, folds, 400, 20)
    assert real_crossed > fitorder.cross_fitted(
        fitorder.Examples(real.rows, real.targets), folds, 400, 20) - 1e-12
    assert in_sample(real, 400) - 0.05 < real_crossed
    assert fitorder.cross_fitted(real, folds, 800, 20) == pytest.approx(real_crossed / 2)
    # each fold by the other's weights, ties in the served order: by hand
    by_hand = 0.0
    for part in (0, 1):
        weights = fitorder.fit(fitorder.Examples(
            [r for r, f in zip(real.rows, folds, strict=True) if f != part],
            [y for y, f in zip(real.targets, folds, strict=True) if f != part]))
        assert weights is not None
        by_hand += sum(worth(rows, y, weights) for rows, y, f in
                       zip(real.rows, real.targets, folds, strict=True) if f == part)
    assert real_crossed == pytest.approx(by_hand / 400)


def test_the_fit_finds_how_much_one_feature_counts_by_another() -> None:
    """Clicks where the sequence model's value counts by the item's popularity: the fit
    weighs that product most of all products, and orders held clicks better than one
    weight per feature can, nearly as well as the model that made them."""
    weights = fitorder.fit(synthetic(4, 2000, product=1.0))
    assert weights is not None
    pairs = dict(zip(reorder.WEIGHTS[len(reorder.FEATURES):],
                     weights[len(reorder.FEATURES):].tolist(), strict=True))
    assert max(pairs, key=lambda name: abs(pairs[name])) == "order_sessions_x_sequence"
    assert pairs["order_sessions_x_sequence"] > 0.3
    linear = fitorder.maximum_likelihood(synthetic(4, 2000, product=1.0))
    assert linear is not None
    held = synthetic(5, 1000, product=1.0)
    quadratic = reciprocal(held, [fitorder.with_pairs(x) @ weights for x in held.rows])
    assert quadratic > reciprocal(held, [x @ linear for x in held.rows]) + 0.003
    assert quadratic > 0.99 * reciprocal(held, [x[:, 0] + x[:, 2] + x[:, 2] * x[:, 6]
                                                for x in held.rows])  # the clicks' model


def test_the_order_weighs_the_products_of_features() -> None:
    """A pair weight alone reorders the answers by the product of its two features, in
    the compiled kernel as in the reference (the test suite runs both)."""
    n = 120
    best = np.arange(1, n + 1, dtype=U)
    values = np.linspace(1.0, 0.5, n)
    df = np.linspace(1.0, 50.0, n)  # later answers held by more sessions
    sequence = -np.abs(np.sin(np.arange(reorder.DEPTH)))  # the sequence model's values
    q = query([999], [1.0])
    plain, _ = reorder.reorder(best, values, df, 1000.0, q, NO_CANDIDATES,
                               Params(order_sessions=1.0), 10, sequence)
    paired, _ = reorder.reorder(best, values, df, 1000.0, q, NO_CANDIDATES,
                                Params(order_sessions_x_sequence=-1.0), 10, sequence)
    product = np.log1p(df[:reorder.DEPTH]) * sequence[:reorder.DEPTH]
    assert paired.tolist() == best[np.argsort(product, kind="stable")[:10]].tolist()
    assert paired.tolist() != plain.tolist()


def test_the_fit_stays_within_the_limits_and_needs_examples() -> None:
    assert fitorder.fit(fitorder.Examples([], [])) is None
    # the click is always the answer with the most sessions: separable, weights unbounded
    # but for the ridge and the limits
    rows = [np.column_stack([np.zeros(3), np.zeros(3), np.array([0.0, 0.001, 0.002]),
                             *[np.zeros(3)] * (len(reorder.COLUMNS) - 3)]) for _ in range(50)]
    weights = fitorder.fit(fitorder.Examples(rows, [2] * 50))
    assert weights is not None and weights[2] == 100.0  # order_sessions' upper limit


def test_a_session_weighs_in_the_fit_as_ten_predictions_at_most() -> None:
    """One session's 99 copies of a prediction pull the fit exactly as ten copies, each a
    session of its own, do: each weighs SESSION_PREDICTIONS / 99. Unbounded (no sessions
    given), the 99 pull harder."""
    honest = synthetic(7, 1000)
    crafted = synthetic(9, 1).rows[0]
    last = len(crafted) - 1  # the served order's last answer, always clicked

    def fitted(copies: int, sessions: list[int] | None) -> np.ndarray[Any, Any]:
        got = fitorder.fit(fitorder.Examples(
            list(honest.rows) + [crafted] * copies, list(honest.targets) + [last] * copies,
            sessions))
        assert got is not None
        return got

    own = list(range(1000))
    assert fitorder.SESSION_PREDICTIONS == 10
    bounded = fitted(99, own + [5000] * 99)
    np.testing.assert_allclose(bounded, fitted(10, own + list(range(5000, 5010))), atol=1e-6)
    assert not np.allclose(fitted(99, None), bounded, atol=1e-3)


def test_crafted_long_sessions_pull_the_lengths_weights_a_little() -> None:
    """Six crafted sessions of 99 predictions each at the capped length, whose click is always
    the served order's last answer (what no honest session does), among 3,000 honest
    predictions whose sessions' lengths are drawn as real ones run (a few reach the cap):
    with each session's weight bounded, the length's weights move a third of what they
    move unbounded (red team: such sessions turned two of them against every honest run)."""
    at = reorder.COLUMNS.index("order_length")
    honest = synthetic(7, 3000)
    rng = np.random.default_rng(7)
    rows, sessions, session, left, length = [], [], 0, 0, 1
    for x in honest.rows:
        if left == 0:
            session, length = session + 1, int(min(1 + rng.geometric(0.3), 30))
            left = max(length - 1, 1)
        x = x.copy()
        x[:, at] = np.log(min(length, reorder.LENGTH_CAP))
        rows.append(x)
        sessions.append(session)
        left -= 1
    crafted = []
    for x in synthetic(9, 6 * 99).rows:
        x = x.copy()
        x[:, at] = np.log(reorder.LENGTH_CAP)
        crafted.append(x)
    clicks = list(honest.targets) + [len(x) - 1 for x in crafted]
    owners = sessions + [10**6 + n // 99 for n in range(len(crafted))]
    alone = fitorder.fit(fitorder.Examples(rows, list(honest.targets), sessions))
    unbounded = fitorder.fit(fitorder.Examples(rows + crafted, clicks, None))
    bounded = fitorder.fit(fitorder.Examples(rows + crafted, clicks, owners))
    assert alone is not None and unbounded is not None and bounded is not None
    lengths = [n for n, name in enumerate(reorder.WEIGHTS) if name.endswith("_x_length")]
    moved = np.abs(bounded - alone)[lengths].max()
    assert moved < 0.4 * np.abs(unbounded - alone)[lengths].max()


async def test_weights_in_the_record_order_every_process_answers(
        shop: Client, settings: Settings) -> None:  # noqa: F811
    """x is followed by a in more sessions than by b, but b is in many more sessions: the
    served order puts a first; a weight on sessions, set by hand, puts b first."""
    await learn(settings, [(f"xa{n}", T0 + 10 * n, ["x", "a"]) for n in range(6)]
                + [(f"xb{n}", T0 + 100 + 10 * n, ["x", "b"]) for n in range(3)]
                + [(f"b{n}", T0 + 200 + 10 * n, ["b", f"w{n}"]) for n in range(30)])
    body = {"user_interactions": {"x": {"timestamp": T0 + 1000}}, "k": 2}

    async def order() -> list[str]:
        resp = await shop.post("/iid_recommend", json=body)
        assert resp.status == 200
        return [r["id"] for r in (await resp.json())["recommendations"]]

    assert await order() == ["a", "b"]
    resp = await shop.put("/admin/model", json={"params": {"order_sessions": 2.0}})
    assert resp.status == 200
    assert await order() == ["b", "a"]
    model = await (await shop.get("/model")).json()
    assert model["params"]["order_sessions"] == 2.0 and model["params"]["order_last"] == 0.0
    bad = await shop.put("/admin/model", json={"params": {"order_idf": 1000}})
    assert bad.status == 400 and "order_idf" in (await bad.json())["error"]["field"]


async def learn_d_after_x_more_than_c(settings: Settings) -> None:
    await learn(settings, [(f"xd{n}", T0 + 10 * n, ["x", "d"]) for n in range(4)]
                + [(f"xc{n}", T0 + 100 + 10 * n, ["x", "c"]) for n in range(2)])


async def c_and_d(client: Client, session: str, items: list[str], query: str = "") -> list[str]:
    """c and d as the live session ``session``, after ``items``, is answered."""
    events = [{"session_id": session, "item_id": item, "timestamp": T0 + 1000 + n}
              for n, item in enumerate(items)]
    assert (await client.post("/events", json={"events": events})).status == 202
    resp = await client.get(f"/sessions/{session}/recommendations?k=5{query}")
    assert resp.status == 200
    return [r["id"] for r in (await resp.json())["recommendations"] if r["id"] in "cd"]


async def test_an_earlier_session_item_moves_only_the_senders_answer(
        shop: Client, settings: Settings) -> None:  # noqa: F811
    """After x, d follows in more sessions than c. A visitor whose live session held c before
    x (the query weighs x alone) gets c first under a weight on the seen feature; another
    whose session did not hold c keeps d first: the feature is the sender's own session,
    kept nowhere."""
    await learn_d_after_x_more_than_c(settings)
    resp = await shop.put("/admin/model", json={"params": {
        "query_items": 1, "order_score": 1.0, "order_seen": 2.0}})
    assert resp.status == 200
    seen = "&recommend_seen=true"
    assert await c_and_d(shop, "S", ["c", "x"], seen) == ["c", "d"]
    assert await c_and_d(shop, "T", ["y", "x"], seen) == ["d", "c"]
    resp = await shop.put("/admin/model", json={"params": {"order_seen": 0.0}})
    assert await c_and_d(shop, "U", ["c", "x"], seen) == ["d", "c"]


async def test_the_sessions_length_orders_only_the_senders_answer(
        shop: Client, settings: Settings) -> None:  # noqa: F811
    """After x, d follows in more sessions than c. Under a weight on the product of the score
    and the session's length, a visitor five items into their session gets the order turned
    (c first); another, at their first click, keeps the served order, before and after: the
    length is the sender's own session's, kept nowhere."""
    await learn_d_after_x_more_than_c(settings)
    resp = await shop.put("/admin/model", json={"params": {
        "query_items": 1, "order_score": 1.0, "order_score_x_length": -3.0}})
    assert resp.status == 200
    assert await c_and_d(shop, "F", ["x"]) == ["d", "c"]
    assert await c_and_d(shop, "L", ["p1", "p2", "p3", "p4", "x"]) == ["c", "d"]
    assert await c_and_d(shop, "G", ["x"]) == ["d", "c"]
    resp = await shop.put("/admin/model", json={"params": {"order_score_x_length": 0.0}})
    assert await c_and_d(shop, "M", ["p1", "p2", "p3", "p4", "x"]) == ["d", "c"]


async def test_a_run_fits_the_order_and_promotes_it(shop: Client,  # noqa: F811
                                                    settings: Settings) -> None:
    """After x, a co-occurs with x in as many sessions as b, but b is in many more sessions,
    and the newest sessions (the holdout, one an hour) go x -> b. With every grid parameter
    pinned, only the learned order can rank b higher: the run fits it and promotes it."""
    learned = [(f"xa{n}", T0 + 100 * n, ["x", "a"]) for n in range(20)]
    learned += [(f"xb{n}", T0 + HOUR + 100 * n, ["x", "b"]) for n in range(20)]
    learned += [(f"bw{n}", T0 + 2 * HOUR + 100 * n, ["b", f"w{n}"]) for n in range(40)]
    await learn(settings, learned + [(f"new{n}", T0 + (3 + n) * HOUR, ["x", "b"])
                                     for n in range(8)])
    base = Params.from_settings(settings)
    pins = {name: getattr(base, name) for name in SEARCHED}
    assert (await shop.put("/admin/model", json={"params": pins, "pin": True})).status == 200
    store = Store(settings)
    try:
        run = await tune_live(store, base, trigger="cli", holdout_sessions=8)
    finally:
        await store.close()
    assert run["promoted"] is True, run
    best = run["best"]["params"]
    assert best["order_sessions"] > 0 or best["order_idf"] < 0
    assert run["best"]["mrr_at_20"] > run["current"]["mrr_at_20"]
    model = await (await shop.get("/model")).json()
    assert {n: model["params"][n] for n in reorder.FEATURES} == \
        {n: best[n] for n in reorder.FEATURES}
    # pinned, the order is left as it is
    assert (await shop.put("/admin/model", json={"params": {"order_last": 0.0},
                                                 "pin": True})).status == 200
    store = Store(settings)
    try:
        again = await tune_live(store, dataclasses.replace(base), trigger="cli",
                                holdout_sessions=8)
    finally:
        await store.close()
    assert {n: again["best"]["params"][n] for n in reorder.FEATURES} == \
        {n: best[n] if n != "order_last" else 0.0 for n in reorder.FEATURES}


async def test_the_fit_learns_only_from_what_preceded_each_session(
        shop: Client, settings: Settings) -> None:  # noqa: F811
    """H and F both go a -> z, F after H: H's prediction may not see F (nor itself), so it
    has no answer to learn an order from; F's sees H, and its click is among its answers."""
    await learn(settings, [("H", T0 + 3000, ["a", "z"]), ("F", T0 + 4000, ["a", "z"])])
    store = Store(settings)
    try:
        holdout = Holdout(store, await recent_sessions(store, 2))
        await holdout.load_indexes()
        found = await holdout.examples(Params(order_sessions=5.0))  # the order left out
    finally:
        await store.close()
    assert len(found.rows) == len(found.targets) == 1
    # F's answers: a (the session's own, first by the repeat boost), then z (H's next click)
    assert found.targets == [1] and found.rows[0].shape == (2, len(reorder.COLUMNS))
    assert found.rows[0][:, 4].tolist() == [1.0, 0.0]  # a is the session's last item


def test_a_learned_weight_may_be_negative_in_flags_and_environment_too() -> None:
    """What a run promotes (order_idf -0.12 on a real log) a flag or the environment may
    set as well (the settings refused every negative number before), within its limits."""
    assert Settings(order_idf=-0.125, order_last=-2.0).order_idf == -0.125
    with pytest.raises(ValueError, match="order_idf: must be between -100 and 100"):
        Settings(order_idf=-1000.0)
    with pytest.raises(ValueError, match="idf_weight: must not be negative"):
        Settings(idf_weight=-1.0)
    assert Params.from_settings(Settings(order_age=-0.5)).order_age == -0.5


class StudiedHoldout:
    """A holdout whose scores are a formula of the parameters: without a learned order the
    best ``query_items`` is 20; with one, 3 (what the order corrects, the neighbourhood need
    not). Its examples make the fit weigh the score feature."""

    def __init__(self) -> None:
        self.scored: list[Params] = []
        self.predictions = self.fitted_predictions = 200
        self.sessions = [SimpleNamespace(session=n) for n in range(self.predictions)]

    async def score(self, params: Params) -> Score:
        self.scored.append(params)
        ordered = reorder.active(params)
        best = 3 if ordered else 20
        value = 0.5 + (0.3 if ordered else 0.0) - 0.01 * abs(params.query_items - best)
        return Score(value, value / 2)

    async def examples(self, params: Params) -> fitorder.Examples:
        return owned(synthetic(7, 200))


class FlatteringHoldout(StudiedHoldout):
    """The same scores, but only under ``query_items`` 5 do its clicks follow the answers'
    features: under any other value an order fitted on them and scored on them (which the
    scores stand for) is flattered, the random clicks' order learned by heart."""

    async def examples(self, params: Params) -> fitorder.Examples:
        return owned(synthetic(7, 200) if params.query_items == 5 else
                     noise(8 + params.query_items, 200))


async def test_the_query_size_is_settled_by_orders_scored_where_they_did_not_learn() -> None:
    """The search half's scores make ``query_items`` 3 the best under the order; orders
    cross-fitted for each value say 5, whose order alone learns what generalises: the run
    keeps 5, with the order fitted for it on the whole search half, and records each
    value's cross-fitted worth."""
    holdout = FlatteringHoldout()
    search = Search(cast(Holdout, holdout), pinned=(), log=lambda line: None)
    best = await search.run(Params())
    assert best.query_items == 5
    weights = fitorder.fit(owned(synthetic(7, 200)))
    assert weights is not None
    assert best == fitorder.with_weights(dataclasses.replace(best, query_items=5), weights)
    worths = search.cross_fitted["query_items"]
    assert set(worths) == {"2", "3", "5", "10", "20"}
    assert max(worths, key=lambda v: worths[v]) == "5"
    # pinned, the value stays the search's
    pinned = await Search(cast(Holdout, FlatteringHoldout()), pinned=("query_items",),
                          log=lambda line: None).run(Params(query_items=3))
    assert pinned.query_items == 3


async def test_a_run_searches_the_grid_again_under_the_learned_order() -> None:
    """The neighbourhood's best parameters under the order are searched for again with the
    order's weights held: the run ends with the order and the query size best under it,
    not the one best without it."""
    holdout = StudiedHoldout()
    search = Search(cast(Holdout, holdout), pinned=(), log=lambda line: None)
    best = await search.run(Params())
    assert reorder.active(best) and best.order_score > 0
    assert best.query_items == 3
    assert any(p.query_items == 20 and not reorder.active(p) for p in holdout.scored)


async def test_the_order_fit_leaves_the_event_loop_free(monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's lease is renewed by a task of its event loop: the order's fit, seconds of
    arithmetic, must not hold the loop (a run so starved lost its lease and all its work)."""
    fit = fitorder.fit

    def slow_fit(found: fitorder.Examples) -> Any:
        time.sleep(0.6)
        return fit(found)

    monkeypatch.setattr(fitorder, "fit", slow_fit)
    monkeypatch.setattr(livetune, "CROSS_FITTED", ())  # its ten fits would only slow this
    ticks = 0

    async def renewals() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.05)
            ticks += 1

    ticker = asyncio.create_task(renewals())
    started = time.monotonic()
    try:
        await Search(cast(Holdout, StudiedHoldout()), pinned=(), log=lambda line: None).run(
            Params())
    finally:
        ticker.cancel()
    elapsed = time.monotonic() - started
    assert elapsed >= 1.2  # two fits
    assert ticks >= elapsed / 0.05 * 0.5
