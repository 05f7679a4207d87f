"""Tuning on the live state (README, "The model tunes itself"): a run
takes the sessions that arrived last as a holdout, searches the scoring parameters on one
half of it, and promotes the best candidate into the shared model record only when it beats
the parameters in force on the other half, by more than chance, in each slice of arrival.

The holdout (``service/offline/holdout.py``) follows what the server saw, not what clients
claim, and is honest: a prediction sees only what was learned before its session started.
A promotion needs the gain in every one of ``HOLDOUT_SLICES`` slices of arrival: the slices
a burst does not reach must show it too. Besides the grid, a run fits the learned order of
the top answers (``fitorder``) for the best parameters the grid found.

Offline tool: the serving path never imports it (``POST /admin/tune`` starts ``sessionrec
tune --apply`` as a process of its own).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from service.core import reorder
from service.core.modelparams import HOLDOUT_SLICES, ModelRecord
from service.core.parameters import PARAMETERS, Value
from service.core.scoring import Params
from service.offline import fitorder, sequencerun
from service.offline.holdout import (
    HOLDOUT_SESSIONS,
    Holdout,
    HoldoutSession,
    K,
    Score,
    recent_sessions,
)
from service.offline.progress import above_bars, bar
from service.offline.tune import GRID
from service.store.state import Store

log = logging.getLogger("sessionrec.tune")

SEARCHED = tuple(name for name in GRID if name != "index_cap")
"""The parameters a run searches: ``index_cap`` is the stored indexes' size, a state
parameter (``sessionrec tune`` on a log rebuilds the state for it; a live run cannot)."""


PROMOTION_Z = 1.96
"""The best candidate, found on one half of the holdout, is promoted only when its gain over
the parameters in force on the other half, per prediction and paired, is this many standard
errors above zero. Judged on the half it was found on, the best of fifty candidates beat the
defaults by chance: such a promotion scored worse than the defaults on DIGINETICA's test
split."""


def gain(best: Score, current: Score) -> tuple[float, float]:
    """The mean per-prediction gain of ``best`` over ``current`` and its standard error."""
    d = best.each - current.each
    if len(d) < 2:
        return 0.0, math.inf
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d)))


def slices_of(sessions: Sequence[HoldoutSession], slices: int = HOLDOUT_SLICES) -> list[int]:
    """Each session's slice: its window's, the windows in arrival order and whole, cut into
    ``slices`` runs of about equal predictions (by where each window's middle falls). A window
    that holds more than a slice's share leaves a slice empty: such a holdout has fewer
    slices than asked for."""
    per_window: dict[int, int] = {}
    for held in sessions:
        per_window[held.window] = per_window.get(held.window, 0) + held.predictions
    total = sum(per_window.values()) or 1
    slice_of: dict[int, int] = {}
    before = 0
    for window in sorted(per_window):
        middle = before + per_window[window] / 2
        slice_of[window] = min(slices - 1, int(slices * middle / total))
        before += per_window[window]
    return [slice_of[held.window] for held in sessions]


def slice_gains(best: Score, current: Score, sessions: Sequence[HoldoutSession]
                ) -> list[dict[str, float]]:
    """Per non-empty arrival slice of ``sessions`` (oldest first): its arrival span (Unix
    seconds), its predictions and the mean gain of ``best`` over ``current`` on them."""
    labels = np.repeat(np.asarray(slices_of(sessions), np.int64),
                       [held.predictions for held in sessions])
    arrivals = np.repeat(np.asarray([held.arrival for held in sessions], np.float64),
                         [held.predictions for held in sessions])
    d = best.each - current.each
    out = []
    for label in sorted(set(labels.tolist())):
        mine = labels == label
        out.append({"from": float(arrivals[mine].min()) / 1000,
                    "to": float(arrivals[mine].max()) / 1000,
                    "predictions": int(mine.sum()), "gain": float(d[mine].mean())})
    return out


@dataclass
class Search:
    """Coordinate ascent from the parameters in force over each unpinned parameter's grid,
    as ``sessionrec tune`` searches a log (the same grid); then the learned order's weights
    fitted for the best of them (``fitorder``), kept when they score better, and then one
    more pass over the grid with those weights held (the order fitted again when it moved
    anything)."""

    holdout: Holdout
    pinned: Sequence[str]
    rounds: int = 2
    log: Callable[[str], None] = log.info
    trials: int = 0
    cross_fitted: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    """Per parameter ``CROSS_FITTED`` settled, each value's cross-fitted objective."""

    async def run(self, current: Params) -> Params:
        """The best parameters found (``current`` when nothing beat it on this holdout)."""
        cache: dict[Params, Score] = {}

        async def score(params: Params) -> Score:
            if params not in cache:
                cache[params] = await self.holdout.score(params)
                self.trials += 1
            return cache[params]

        best, best_score = current, await score(current)
        names = [n for n in SEARCHED if n not in self.pinned]

        async def ascend(label: str) -> bool:
            """One pass over each name's grid from ``best``; whether it found better."""
            nonlocal best, best_score
            improved = False
            with bar(label, sum(len(GRID[n]) for n in names), "candidates") as shown:
                for name in names:
                    for value in GRID[name]:
                        checked = PARAMETERS[name].check(value)
                        assert not isinstance(checked, str)
                        candidate = dataclasses.replace(best, **cast(dict[str, Any],
                                                                     {name: checked}))
                        got = await score(candidate)
                        shown.update()
                        if got.objective > best_score.objective + 1e-9:
                            best, best_score, improved = candidate, got, True
                            self.log(f"search half: better {name}={checked} -> HR@20 "
                                     f"{got.hr_at_20:.4f}, MRR@20 {got.mrr_at_20:.4f}")
            return improved

        async def fit_order() -> bool:
            """The learned order fitted for ``best``'s served order; whether it was better."""
            nonlocal best, best_score
            # in a thread: the fit takes seconds, in which the lease's renewals must run
            weights = await asyncio.to_thread(fitorder.fit, await self.holdout.examples(best))
            ordered = None if weights is None else fitorder.with_weights(best, weights)
            if ordered is None or ordered == best:
                return False
            got = await score(ordered)
            if got.objective <= best_score.objective + 1e-9:
                return False
            best, best_score = ordered, got
            self.log(f"search half: better learned order -> HR@20 {got.hr_at_20:.4f}, "
                     f"MRR@20 {got.mrr_at_20:.4f}")
            return True

        for round_ in range(1, self.rounds + 1):
            if not await ascend(f"search half, round {round_}"):
                break
        # the neighbourhood's best parameters under the order may not be those without it
        # (what the order corrects, the grid need not): one more pass with the order's
        # weights held, and the order fitted again for what it found
        if (not set(reorder.WEIGHTS) & set(self.pinned) and await fit_order()
                and await ascend("search half, with the learned order")):
            await fit_order()
        for name in CROSS_FITTED:
            if (reorder.active(best) and not set(reorder.WEIGHTS) & set(self.pinned)
                    and name not in self.pinned):
                best = await self.cross_fit(best, name)
        return best

    async def cross_fit(self, best: Params, name: str) -> Params:
        """``best`` with the value of ``name`` whose own fitted order scores best on the
        search half's predictions it did not learn from (``fitorder.cross_fitted``, the
        folds alternate sessions in arrival order), and the order fitted for that value on
        the whole search half; ``best`` itself when its value is that one."""
        fold_of = {held.session: n % 2 for n, held in enumerate(self.holdout.sessions)}
        found: dict[Value, fitorder.Examples] = {}
        worth: dict[Value, float] = {}
        current = getattr(best, name)
        for raw in sorted({*GRID[name], current}):
            value = PARAMETERS[name].check(raw)
            assert not isinstance(value, str)
            candidate = dataclasses.replace(best, **cast(dict[str, Any], {name: value}))
            found[value] = await self.holdout.examples(candidate)
            folds = [fold_of[int(s)] for s in found[value].sessions or ()]
            worth[value] = await asyncio.to_thread(fitorder.cross_fitted, found[value], folds,
                                                   self.holdout.fitted_predictions, K)
        self.cross_fitted[name] = {str(v): round(w, 6) for v, w in worth.items()}
        chosen = max(worth, key=lambda v: (worth[v], v == current))
        self.log(f"search half, cross-fitted orders by {name}: "
                 + ", ".join(f"{v}: {w:.4f}" for v, w in worth.items()) + f"; {chosen} kept")
        if chosen == current:
            return best
        weights = await asyncio.to_thread(fitorder.fit, found[chosen])
        moved = dataclasses.replace(best, **cast(dict[str, Any], {name: chosen}))
        return moved if weights is None else fitorder.with_weights(moved, weights)


CROSS_FITTED = ("query_items",)
"""Parameters whose value is settled last, each value with an order fitted for it, compared
on predictions that order did not learn from (``Search.cross_fit``). ``query_items`` decides
which of the session's items find neighbours and carry a query weight, one of the order's
features: its best value under the order is not its best without it, which the grid's first
passes choose, and an order fitted and scored on the same predictions flatters whichever
value it was fitted for."""


SEQUENCE_CUT = 0.25
"""A run's own sequence model learns from the events before this quantile of its holdout
sessions' starts, and the sessions that started after it read it. Not the first start:
starts are the events' timestamps, which a client backdates at will, and one backdated
session would leave the model nothing to learn from; to move this quantile a client needs a
quarter of the holdout, six hours of arrival at a 24th each."""


def sequence_cut(starts: Sequence[int]) -> int:
    """The time key a run's sequence model learns before (``SEQUENCE_CUT``)."""
    return int(np.quantile(np.asarray(starts, np.float64), SEQUENCE_CUT, method="lower"))


def changed_values(current: Params, best: Params) -> dict[str, Value]:
    return {f.name: getattr(best, f.name) for f in dataclasses.fields(Params)
            if getattr(best, f.name) != getattr(current, f.name)}


def verdict(values: dict[str, Value], mean_gain: float, error: float,
            slices: Sequence[dict[str, float]]) -> str | None:
    """Why the best candidate is not promoted (None: it is). Its gain must be above chance
    on the judging half, and hold in each of the ``HOLDOUT_SLICES`` arrival slices: a burst
    lies in one or two of them, so it cannot make a promotion on its own."""
    if not values:
        return "no candidate beat the parameters in force on the half searched"
    if not (mean_gain > 0 and mean_gain > PROMOTION_Z * error):
        return "the gain is within the holdout's noise"
    if len(slices) < HOLDOUT_SLICES:
        return (f"the holdout's sessions arrived in fewer than {HOLDOUT_SLICES} slices of "
                "time (a burst, or too little traffic yet)")
    if not all(piece["gain"] > 0 for piece in slices):
        return "the gain does not hold in every arrival slice"
    return None


async def tune_live(store: Store, base: Params, *, trigger: str, run_id: str | None = None,
                    holdout_sessions: int = HOLDOUT_SESSIONS, rounds: int = 2,
                    say: Callable[[str], None] = log.info, seed: int | None = None
                    ) -> dict[str, Any]:
    """One run: holdout, search, promotion if better; the run's record (also in the model
    record as ``last_run``). The caller holds the tuning lease. ``seed``: the holdout's draw
    within each arrival window (random when None)."""
    run_id = run_id or uuid.uuid4().hex[:12]
    say = above_bars(say)
    started = time.time()
    run: dict[str, Any] = {"id": run_id, "trigger": trigger, "started_at": started,
                           "finished_at": None,
                           "sessions_learned": await store.model.sessions_learned()}
    # recorded as it starts, beside the model record (whose version only a finished run
    # moves): a run killed midway still delays the next automatic one
    await store.redis.set(store.keys.tune_started(), json.dumps(run))
    record = await store.model.record()
    held = await recent_sessions(store, holdout_sessions, seed=seed)
    # alternate sessions, so both halves span the same days: one to search on, the other
    # to judge the best candidate on (the best of many on one half is flattered by chance)
    searched, judged = Holdout(store, held[0::2]), Holdout(store, held[1::2])
    await searched.load_indexes()
    await judged.load_indexes()
    fits_order = not set(reorder.WEIGHTS) & set(record.pinned)
    if held and (fits_order or reorder.reads_sequence(record.params(base))):
        # the learned order's sequence feature, read from a model trained before the cut
        cut = sequence_cut([h.start for h in held])
        model = await sequencerun.fit_before(store, cut)
        searched.sequence = judged.sequence = model
        searched.sequence_from = judged.sequence_from = cut
        run["sequence"] = None if model is None else {
            **model.facts, "holdout_sessions": sum(h.start >= cut for h in held)}
        say(f"run {run_id}: sequence model trained on the events before the holdout: "
            f"{run['sequence']}")
    say(f"run {run_id}: {len(held)} holdout sessions in two halves: the search half "
        f"({searched.predictions} predictions) finds the best candidate, the judging half "
        f"({judged.predictions}) compares it with the parameters in force")
    current = record.params(base)
    search = Search(searched, record.pinned, rounds, say)
    best = await search.run(current)
    values = changed_values(current, best)
    with bar("judging half", 2 if values else 1, "candidates") as shown:
        now = await judged.score(current)
        shown.update()
        best_score = await judged.score(best) if values else now
        shown.update(bool(values))
    mean_gain, error = gain(best_score, now)
    slices = slice_gains(best_score, now, judged.sessions)
    held_back = verdict(values, mean_gain, error, slices)
    promote = held_back is None
    run.update({"holdout_sessions": len(held), "predictions": searched.predictions
                + judged.predictions, "candidates": search.trials,
                "cross_fitted": search.cross_fitted,
                # the scores are the judging half's: the search never saw it
                "current": {"hr_at_20": now.hr_at_20, "mrr_at_20": now.mrr_at_20},
                "best": {"hr_at_20": best_score.hr_at_20, "mrr_at_20": best_score.mrr_at_20,
                         "params": dataclasses.asdict(best)},
                "gain": {"per_prediction": mean_gain,
                         "standard_error": error if math.isfinite(error) else None},
                "slices": slices, "promoted": promote, "held_back": held_back})

    def finish(old: ModelRecord) -> ModelRecord:
        finished = run["finished_at"] = time.time()
        if not promote:
            return dataclasses.replace(old, last_run=json.dumps(run))
        # values pinned since the run read the record stay as the operator set them
        kept = {name: value for name, value in values.items() if name not in old.pinned}
        return dataclasses.replace(old, values={**old.values, **kept}, tuned_at=finished,
                                   last_run=json.dumps(run))

    await store.model.update(finish)
    say(f"run {run_id}: judging half: current HR@20 {now.hr_at_20:.4f} MRR@20 "
        f"{now.mrr_at_20:.4f}; best {best_score.hr_at_20:.4f} / {best_score.mrr_at_20:.4f}; "
        + (f"promoted {values}" if promote else f"not promoted: {held_back}"))
    return run
