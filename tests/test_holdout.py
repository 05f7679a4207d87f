"""A tuning run's holdout reads each index and history once and asks it, for every
prediction of every candidate, for the entries older than the prediction's session: the
answer must be exactly the mask of the blob's entries by time, whatever the blob's order.
What it keeps between candidates never changes a candidate's score (against a real
Redis)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest

from service.core.layout import ENTRY_BYTES, HISTORY_DTYPE, INDEX_DTYPE
from service.core.model import Event
from service.core.scoring import Params
from service.offline import sequencerun
from service.offline.holdout import Holdout, HoldoutSession, recent_sessions
from service.offline.livetune import SEARCHED
from service.offline.timeline import Timeline
from service.settings import Settings
from service.store.state import Store
from tests.conftest import Client
from tests.helpers import arrive
from tests.test_livetune import post, shop  # noqa: F401  (a fixture)


def masked(blob: bytes | None, start: int, dtype: np.dtype) -> bytes | None:
    """What a holdout prediction may read of a blob: its entries older than ``start``, in
    the blob's order (a trailing partial entry dropped)."""
    if not blob:
        return blob
    entries = np.frombuffer(blob[:len(blob) - len(blob) % ENTRY_BYTES], dtype)
    return entries[entries["t"] < start].tobytes()


@pytest.mark.parametrize("dtype", [INDEX_DTYPE, HISTORY_DTYPE], ids=["index", "history"])
def test_a_timeline_answers_the_mask_of_its_blob_by_time(dtype: np.dtype) -> None:
    rng = np.random.default_rng(7)
    for case in range(400):
        n = int(rng.integers(0, 40))
        entries = np.zeros(n, dtype)
        times = rng.integers(-5, 60, n)
        if case % 2:  # appended as they arrived: the prefix path
            times.sort()
        entries["t"] = times
        other = "s" if dtype is INDEX_DTYPE else "i"
        entries[other] = rng.integers(0, 2**63, n, dtype=np.uint64)
        blob = entries.tobytes() + bytes(int(rng.integers(0, 3)) * 5)  # a torn tail
        timeline = Timeline(blob, dtype)
        for start in (-10, -5, 0, 1, 30, 59, 60, 100, *rng.integers(-6, 61, 5).tolist()):
            assert timeline.before(start) == masked(blob, start, dtype), (case, start)


def test_an_index_timeline_keeps_only_sessions_that_arrived_before() -> None:
    """An index's entries count for sessions that arrived before the holdout session did
    (one whose arrival is not kept arrived before every kept one), besides their times."""
    rng = np.random.default_rng(11)
    for case in range(300):
        n = int(rng.integers(1, 30))
        entries = np.zeros(n, INDEX_DTYPE)
        times = rng.integers(0, 50, n)
        if case % 2:
            times.sort()
        entries["t"] = times
        entries["s"] = rng.integers(1, 12, n).astype(np.uint64)  # sessions recur
        arrivals = {s: float(rng.integers(0, 100)) for s in range(1, 12) if rng.random() < 0.8}
        timeline = Timeline(entries.tobytes(), INDEX_DTYPE, arrivals)
        for start, arrival in [(25, 50.0), (25, 50.0), (60, 101.0), (60, 0.0), (0, 50.0),
                               *zip(rng.integers(0, 55, 4).tolist(),
                                    rng.integers(0, 105, 4).astype(float).tolist(), strict=True)]:
            arrived = np.array([arrivals.get(int(s), -np.inf) for s in entries["s"]])
            wanted = entries[(entries["t"] < start) & (arrived < arrival)].tobytes()
            assert timeline.before(start, arrival) == wanted, (case, start, arrival)


def test_a_timeline_of_nothing_answers_nothing() -> None:
    assert Timeline(None, INDEX_DTYPE).before(10) is None
    assert Timeline(b"", INDEX_DTYPE).before(10) == b""


HOUR = 3600.0
T0 = 472_222 * HOUR


def many_sessions() -> list[Event]:
    """Two hundred sessions over a day, on forty items with a few popular ones: enough
    neighbours that each setting of the neighbour search ranks some predictions
    differently."""
    rng = np.random.default_rng(3)
    events = []
    for n in range(200):
        start = T0 + n * 400.0
        length = int(rng.integers(2, 7))
        items = rng.choice(40, length, p=np.arange(40, 0, -1) / 820).tolist()
        events += [Event(f"s{n}", f"i{item}", start + 30 * m) for m, item in enumerate(items)]
    return events


SEARCHED_VALUES: dict[str, Any] = {"idf_weight": 2.0, "repeat_weight": 1.0, "neighbours": 3,
                   "query_items": 1, "sequence_weight": 5.0, "before_weight": 3.0,
                   "position_decay": 4.0, "sample_sessions": 4,
                   "neighbour_half_life": 3600.0}


async def loaded(store: Store, held: Sequence[HoldoutSession]) -> Holdout:
    holdout = Holdout(store, held)
    await holdout.load_indexes()
    return holdout


@asynccontextmanager
async def held_out(settings: Settings
                   ) -> AsyncIterator[tuple[Store, list[HoldoutSession], Holdout]]:
    """``many_sessions`` arrived, and a holdout of 60 of them (the same draw every time) on a
    store closed afterwards."""
    await arrive(settings, many_sessions())
    store = Store(settings)
    try:
        held = await recent_sessions(store, 60, seed=1)
        yield store, held, await loaded(store, held)
    finally:
        await store.close()


async def test_a_holdout_scores_each_candidate_as_a_fresh_one_would(
        settings: Settings) -> None:
    """The neighbourhoods a holdout keeps between candidates are those of the same neighbour
    search only: a candidate scored after others scores what it scores alone, for a change
    in each parameter a run searches (each of which changes the score here)."""
    async with held_out(settings) as (store, held, warm):
        base = await warm.score(Params())
        assert set(SEARCHED_VALUES) == set(SEARCHED)
        for name, value in SEARCHED_VALUES.items():
            candidate = dataclasses.replace(Params(), **{name: value})
            alone = await (await loaded(store, held)).score(candidate)
            assert not np.array_equal(alone.each, base.each), name
            assert np.array_equal((await warm.score(candidate)).each, alone.each), name
            assert np.array_equal((await warm.score(Params())).each, base.each), name


async def test_a_burst_sent_after_the_holdout_changes_none_of_its_scores(
        shop: Client, settings: Settings) -> None:  # noqa: F811
    """Sessions sent after the holdout's, backdated before them and holding its popular
    items, are no holdout session's neighbours, and add nothing to the item frequencies the
    holdout reads: every prediction scores as before, under idf and the order's session
    counts alike (a burst so sent moved every arrival slice, red team)."""
    params = Params(idf_weight=2.0, order_idf=1.0, order_sessions=-1.0, order_score=1.0)
    async with held_out(settings) as (_, held, before):
        scored = await before.score(params)
        await post(shop, settings, [(f"burst{n}", T0 - HOUR, ["i0", "i1", "i2", "i3", f"x{n}"])
                                    for n in range(300)])
        fresh = Store(settings)  # its frequency cache empty: today's counts
        try:
            after = await loaded(fresh, held)
            assert np.array_equal((await after.score(params)).each, scored.each)
        finally:
            await fresh.close()


async def test_an_order_is_fitted_only_on_predictions_that_read_the_runs_model(
        settings: Settings) -> None:
    """With the run's sequence model set, the order's examples are the predictions of the
    sessions that started at its cut or later, those that read it: serving reads the model
    on every request, and an order fitted with predictions that lack its values weighs them
    too little. Without a model, every session teaches."""
    async with held_out(settings) as (store, held, holdout):
        every = await holdout.examples(Params())
        starts = sorted(h.start for h in held)
        cut = starts[len(starts) // 2]
        model = await sequencerun.fit_before(store, cut)
        assert model is not None
        holdout.sequence, holdout.sequence_from = model, cut
        late = await holdout.examples(Params())
    start_of = {h.session: h.start for h in held}
    assert every.sessions is not None and late.sessions is not None
    assert {start_of[s] < cut for s in every.sessions} == {True, False}
    assert late.sessions and all(start_of[s] >= cut for s in late.sessions)
    assert set(late.sessions) == {s for s in every.sessions if start_of[s] >= cut}
    assert holdout.fitted_predictions == sum(len(h.items) - 1 for h in held if h.start >= cut)
    assert holdout.fitted_predictions < holdout.predictions
