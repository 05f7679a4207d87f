"""Tuning on the live state (README, "The model tunes itself"): a run
takes the sessions that arrived last as a holdout, searches the scoring parameters on one
half of it, and promotes the best candidate into the shared model record only when it beats
the parameters in force on the other half, by more than chance, in each slice of arrival.

The holdout follows what the server saw, not what clients claim (docs/THREATS.md):
sessions are ordered by when their first event was accepted, never by the events' timestamps
(which a client backdates at will), and one arrival window gives at most a
``HOLDOUT_WINDOWS``-th of the holdout, so a burst one client sends is a small part of it.
A promotion needs the gain in every one of ``HOLDOUT_SLICES`` slices of arrival: the slices
a burst does not reach must show it too.

The holdout is honest. Each holdout session's prefixes predict its next item (HR@20 and
MRR@20, as ``sessionrec eval``), scored only with what was learned before the session
started: a neighbour index counts only entries older than the session's first event (the
session itself excluded), and a neighbour's history only its events before that moment. So
no holdout session is predicted from itself, from a session that began after it, or from a
neighbour's later clicks. Item frequencies (idf) are today's: a global count, not one
session's future. Trending completes answers whatever the parameters, so the runs compare the
session-based part of the answer, the part the parameters decide.

Offline tool: the serving path never imports it (``POST /admin/tune`` starts ``sessionrec
tune --apply`` as a process of its own).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import secrets
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from service.core import scoring
from service.core.layout import ENTRY_BYTES, HISTORY_DTYPE, INDEX_DTYPE
from service.core.modelparams import HOLDOUT_SLICES, HOLDOUT_WINDOWS, ModelRecord
from service.core.parameters import PARAMETERS, Value
from service.core.scoring import Params
from service.offline.progress import above_bars, bar
from service.offline.tune import GRID
from service.store import tuning
from service.store.state import Store

log = logging.getLogger("sessionrec.tune")

HOLDOUT_SESSIONS = 3000
"""Most recently arrived sessions (of two events or more) a run holds out."""

HOLDOUT_PREDICTIONS = 12_000
"""At most this many predictions (prefixes) in the holdout: the newest sessions are taken
until their prefixes reach it. A run's time grows with its predictions, not its sessions, and
a shop whose sessions run to dozens of clicks would otherwise hold out ten times DIGINETICA's
and search for hours."""

K = 20

SEARCHED = tuple(name for name in GRID if name != "index_cap")
"""The parameters a run searches: ``index_cap`` is the stored indexes' size, a state
parameter (``sessionrec tune`` on a log rebuilds the state for it; a live run cannot)."""


@dataclass(frozen=True, slots=True)
class HoldoutSession:
    session: int
    items: list[bytes]  # item hashes, oldest first
    times: list[float]  # seconds
    start: int  # time key of its first event: what its neighbours must precede
    arrival: float  # ms: when the server accepted its first event
    window: int  # its arrival window (``core.modelparams.window_of``)

    @property
    def predictions(self) -> int:
        return len(self.items) - 1


@dataclass(frozen=True, slots=True)
class Score:
    hr_at_20: float
    mrr_at_20: float
    each: npt.NDArray[np.float64] = dataclasses.field(
        default_factory=lambda: np.zeros(0), compare=False, repr=False)
    """Each prediction's hit plus reciprocal rank, in the holdout's order (for the pairing)."""

    @property
    def objective(self) -> float:
        """HR alone rewards long tails, MRR alone the head: the sum, as ``sessionrec tune``."""
        return self.hr_at_20 + self.mrr_at_20


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


async def recent_sessions(store: Store, wanted: int = HOLDOUT_SESSIONS,
                          predictions: int = HOLDOUT_PREDICTIONS, seed: int | None = None
                          ) -> list[HoldoutSession]:
    """The sessions that arrived last (the server's clock, never the events' timestamps),
    among those with two events or more: arrival windows newest first, each giving at most a
    ``HOLDOUT_WINDOWS``-th of ``wanted`` sessions and of ``predictions`` prefixes, drawn at
    random within it (``seed``: the same draw for the same window), until the holdout holds
    ``wanted`` sessions or ``predictions`` prefixes. Oldest first."""
    per_window = -(-wanted // HOLDOUT_WINDOWS), -(-predictions // HOLDOUT_WINDOWS)
    seed = secrets.randbits(64) if seed is None else seed
    out: list[HoldoutSession] = []
    held = 0
    async for window, low, high in tuning.arrival_windows(store.redis, store.keys):
        arrived = await tuning.arrived_in(store.redis, store.keys, low, high)
        order = np.random.default_rng([seed, window]).permutation(len(arrived))
        taken, taken_predictions = 0, 0
        for at in range(0, len(order), 500):
            chunk = [arrived[n] for n in order[at:at + 500].tolist()]
            sessions = np.array([int.from_bytes(s, "little") for s, _ in chunk], np.uint64)
            for (session, arrival), blob in zip(chunk, await store.reads.histories(sessions),
                                                strict=True):
                if blob is None or len(blob) < 2 * ENTRY_BYTES:
                    continue
                entries = np.frombuffer(blob[:len(blob) - len(blob) % ENTRY_BYTES],
                                        HISTORY_DTYPE)
                found = HoldoutSession(int.from_bytes(session, "little"),
                                       [int(i).to_bytes(8, "little") for i in entries["i"]],
                                       (entries["t"] / 1e6).tolist(), int(entries["t"][0]),
                                       arrival, window)
                out.append(found)
                taken, taken_predictions = taken + 1, taken_predictions + found.predictions
                held += found.predictions
                if len(out) >= wanted or held >= predictions:
                    return sorted(out, key=lambda h: (h.arrival, h.session))
                if taken >= per_window[0] or taken_predictions >= per_window[1]:
                    break
            else:
                continue
            break
    return sorted(out, key=lambda h: (h.arrival, h.session))


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


def before(blob: bytes | None, start: int, dtype: np.dtype[Any]) -> bytes | None:
    """The entries of an index or a history blob older than ``start``, in their order (a
    mask, not a cut: the run must not depend on a blob being in time order to be honest)."""
    if not blob:
        return blob
    entries = np.frombuffer(blob[:len(blob) - len(blob) % ENTRY_BYTES], dtype)
    return entries[entries["t"] < start].tobytes()


class Holdout:
    """The holdout sessions and what scoring them reads, read once and kept for the run."""

    def __init__(self, store: Store, sessions: Sequence[HoldoutSession]) -> None:
        self.store = store
        self.sessions = sessions
        self.indexes: dict[bytes, bytes | None] = {}
        self.histories: dict[int, bytes | None] = {}

    @property
    def predictions(self) -> int:
        return sum(len(s.items) - 1 for s in self.sessions)

    async def load_indexes(self) -> None:
        items = sorted({i for s in self.sessions for i in s.items} - set(self.indexes))
        for start in range(0, len(items), 1000):
            chunk = items[start:start + 1000]
            blobs = await self.store.reads.indexes(scoring.as_u64(chunk))
            self.indexes.update(zip(chunk, blobs, strict=True))

    async def _histories(self, sessions: scoring.U64) -> list[bytes | None]:
        missing = [s for s in sessions.tolist() if s not in self.histories]
        if missing:
            wanted = np.array(missing, np.uint64)
            blobs = await self.store.reads.histories(wanted)
            self.histories.update(zip(missing, blobs, strict=True))
        return [self.histories[s] for s in sessions.tolist()]

    async def score(self, params: Params) -> Score:
        """HR@20 and MRR@20 of ``params`` over every prefix of every holdout session."""
        ranks: list[int] = []
        for held in self.sessions:
            await asyncio.sleep(0)  # the lease's renewals run between sessions
            for cut in range(1, len(held.items)):
                query = scoring.build_query(held.items[:cut], held.times[:cut], [1.0] * cut,
                                            params)
                blobs = [before(self.indexes.get(scoring.to_hash(i)), held.start,
                                INDEX_DTYPE) for i in query.items.tolist()]
                sessions, similarity = scoring.neighbours(query, blobs, params, held.session)
                target = int.from_bytes(held.items[cut], "little")
                if not len(sessions):
                    ranks.append(0)
                    continue
                histories = [before(h, held.start, HISTORY_DTYPE)
                             for h in await self._histories(sessions)]
                candidates, scores = scoring.score(query, histories, similarity, params)
                df, n_sessions = await self.store.reads.doc_freq(candidates) if params.idf_weight \
                    else (np.zeros(0), 0.0)
                best, _ = scoring.rank(candidates, scores, df, n_sessions, query, params, True,
                                       np.zeros(0, np.uint64), K)
                found = np.flatnonzero(best == np.uint64(target))
                ranks.append(int(found[0]) + 1 if len(found) else 0)
        r = np.asarray(ranks)
        hit = r > 0
        reciprocal = np.where(hit, 1.0 / np.maximum(r, 1), 0.0)
        return Score(float(hit.mean()) if len(r) else 0.0,
                     float(reciprocal.mean()) if len(r) else 0.0,
                     hit.astype(np.float64) + reciprocal)


@dataclass
class Search:
    """Coordinate ascent from the parameters in force over each unpinned parameter's grid,
    as ``sessionrec tune`` searches a log (the same grid)."""

    holdout: Holdout
    pinned: Sequence[str]
    rounds: int = 2
    log: Callable[[str], None] = log.info
    trials: int = 0

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
        for round_ in range(1, self.rounds + 1):
            improved = False
            with bar(f"search half, round {round_}", sum(len(GRID[n]) for n in names),
                     "candidates") as shown:
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
            if not improved:
                break
        return best


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
