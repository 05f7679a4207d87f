"""A tuning run's holdout (``livetune``): the sessions that arrived last, and their
predictions scored as the state stood when each session started.

The holdout follows what the server saw, not what clients claim (docs/THREATS.md):
sessions are ordered by when their first event was accepted, never by the events' timestamps
(which a client backdates at will), and one arrival window gives at most a
``HOLDOUT_WINDOWS``-th of the holdout, so a burst one client sends is a small part of it.

The holdout is honest. Each holdout session's prefixes predict its next item (HR@20 and
MRR@20, as ``sessionrec eval``), scored only with what was learned before the session
started: a neighbour index counts only entries older than the session's first event, of
sessions that reached the server before it did (the session itself excluded), and a
neighbour's history only its events before that moment. So no holdout session is predicted
from itself, from a session that began or arrived after it, or from a neighbour's later
clicks; nor from a burst sent after it with backdated timestamps, which would otherwise
be every holdout session's neighbour and weigh in every arrival slice. Item frequencies
(idf, and the learned order's session counts) are as they stood before the holdout's first
session arrived: today's, less what every session that arrived since added (a burst of
sessions holding popular items, sent in or after the holdout's span, would otherwise move
every prediction's idf, in every slice). Trending completes answers whatever the
parameters, so the runs compare the session-based part of the answer, the part the
parameters decide.

Offline tool: the serving path never imports it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from service.core import reorder, scoring
from service.core.layout import ENTRY_BYTES, HISTORY_DTYPE, INDEX_DTYPE, entries_of
from service.core.modelparams import HOLDOUT_WINDOWS
from service.core.scoring import Params
from service.core.sequence import SequenceModel
from service.offline import fitorder
from service.offline.timeline import Timeline
from service.store import tuning
from service.store.state import Store

HOLDOUT_SESSIONS = 3000
"""Most recently arrived sessions (of two events or more) a run holds out."""

HOLDOUT_PREDICTIONS = 12_000
"""At most this many predictions (prefixes) in the holdout: the newest sessions are taken
until their prefixes reach it. A run's time grows with its predictions, not its sessions, and
a shop whose sessions run to dozens of clicks would otherwise hold out ten times DIGINETICA's
and search for hours."""

K = 20

NEIGHBOURHOODS_KEPT = 3
"""A holdout keeps its predictions' neighbourhoods for this many settings of the neighbour
search (the best so far's among them, which a search asks for most, while it tries
others): the query, the neighbours and their similarities, a few kilobytes per prediction
each (their histories are the holdout's, read once)."""


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
class Ranked:
    """One holdout prediction as the served order ranks it."""

    query: scoring.Query
    best: scoring.U64
    values: scoring.F64
    target: int
    found: scoring.Candidates  # what the answers were ranked from
    start: int  # its session's first event's time key
    session: int  # its session (the fit bounds a session's weight)


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
                entries = entries_of(blob, HISTORY_DTYPE)
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



@dataclass(frozen=True, slots=True)
class Neighbourhood:
    """What scoring a holdout prediction finds before its items are scored: its query, its
    neighbour sessions and their similarities (none: no neighbours). Their histories are
    the holdout's, asked again at each use: copies of them kept per prediction would grow
    with the neighbours' lengths, which clients choose."""

    query: scoring.Query
    sessions: scoring.U64
    similarity: scoring.F64


class Holdout:
    """The holdout sessions and what scoring them reads, read once and kept for the run."""

    def __init__(self, store: Store, sessions: Sequence[HoldoutSession]) -> None:
        self.store = store
        self.sessions = sessions
        self.indexes: dict[bytes, Timeline] = {}
        self.histories: dict[int, Timeline] = {}
        self.sequence: SequenceModel | None = None
        """The sequence model its predictions read (``order_sequence``): one trained only on
        events older than ``sequence_from`` (``sequencerun.fit_before``), never the stored
        one, which has seen them; a session that started before that reads none (its
        feature is 0 for every candidate alike), so no prediction reads a model that saw
        its session or a later event."""
        self.sequence_from = 0
        self._neighbourhoods: OrderedDict[tuple[float, ...], list[Neighbourhood]] = \
            OrderedDict()
        self._late_items = np.zeros(0, np.uint64)
        self._late_counts = np.zeros(0)
        self._late_sessions = 0

    @property
    def predictions(self) -> int:
        return sum(len(s.items) - 1 for s in self.sessions)

    @property
    def fitted_predictions(self) -> int:
        """The predictions an order is fitted on (``examples``), those whose click is not
        among their answers included."""
        return sum(len(s.items) - 1 for s in self.sessions if self._teaches_order(s.start))

    def _teaches_order(self, start: int) -> bool:
        """Whether a session that started at ``start`` teaches the order (``examples``): it
        reads the run's sequence model, or the run has none."""
        return self.sequence is None or start >= self.sequence_from

    async def load_indexes(self) -> None:
        """The indexes of the holdout's items, with when their entries' sessions arrived,
        and what the sessions arrived since the holdout's first added to item
        frequencies."""
        items = sorted({i for s in self.sessions for i in s.items} - set(self.indexes))
        blobs: list[bytes | None] = []
        for start in range(0, len(items), 1000):
            blobs += await self.store.reads.indexes(scoring.as_u64(items[start:start + 1000]))
        sessions = sorted({s for blob in blobs
                           for s in entries_of(blob, INDEX_DTYPE)["s"].tolist()})
        found = await tuning.arrivals_of(self.store.redis, self.store.keys,
                                         [scoring.to_hash(s) for s in sessions])
        arrivals = {s: ms for s, ms in zip(sessions, found, strict=True) if ms is not None}
        self.indexes.update((item, Timeline(blob, INDEX_DTYPE, arrivals))
                            for item, blob in zip(items, blobs, strict=True))
        await self._load_late()

    async def _load_late(self) -> None:
        """What the sessions that arrived from the holdout's first on added to the item
        frequencies: the holdout reads them as they stood before it (``_doc_freq``). A burst
        sent during or after the holdout's span, of sessions all holding popular items,
        would otherwise move every prediction's idf and session counts, in every arrival
        slice, as it moved no neighbourhood."""
        if not self.sessions:
            return
        oldest = min(held.arrival for held in self.sessions)
        arrived = await tuning.arrived_in(self.store.redis, self.store.keys, repr(oldest),
                                          "+inf")
        distinct: list[scoring.U64] = [np.zeros(0, np.uint64)]  # each session's items, once
        for at in range(0, len(arrived), 500):
            chunk = np.array([int.from_bytes(s, "little") for s, _ in arrived[at:at + 500]],
                             np.uint64)
            distinct += [np.unique(entries_of(blob, HISTORY_DTYPE)["i"]).astype(np.uint64)
                         for blob in await self.store.reads.histories(chunk)]
        items, counts = np.unique(np.concatenate(distinct), return_counts=True)
        self._late_items, self._late_counts = items, counts.astype(np.float64)
        self._late_sessions = len(arrived)

    async def _doc_freq(self, items: scoring.U64) -> tuple[scoring.F64, float]:
        """Sessions holding each item, and sessions in all, as they stood before the
        holdout's first session arrived (``_load_late``)."""
        df, sessions = await self.store.reads.doc_freq(items)
        if not len(self._late_items) or not len(items):
            return df, max(sessions - self._late_sessions, 0.0)
        at = np.minimum(np.searchsorted(self._late_items, items), len(self._late_items) - 1)
        late = np.where(self._late_items[at] == items, self._late_counts[at], 0.0)
        return np.maximum(df - late, 0.0), max(sessions - self._late_sessions, 0.0)

    async def _load_histories(self, sessions: scoring.U64) -> None:
        """The sessions' histories, read once per run."""
        missing = [s for s in sessions.tolist() if s not in self.histories]
        if missing:
            blobs = await self.store.reads.histories(np.array(missing, np.uint64))
            self.histories.update((session, Timeline(blob, HISTORY_DTYPE))
                                  for session, blob in zip(missing, blobs, strict=True))

    def _histories(self, sessions: scoring.U64, start: int) -> list[bytes | None]:
        """The (loaded) sessions' histories before ``start``."""
        return [self.histories[s].before(start) for s in sessions.tolist()]

    def _index_before(self, item: bytes, held: HoldoutSession) -> bytes | None:
        timeline = self.indexes.get(item)
        return None if timeline is None else timeline.before(held.start, held.arrival)

    async def _neighbourhood(self, held: HoldoutSession, cut: int, params: Params
                             ) -> Neighbourhood:
        """A prediction's query and neighbours as ``held`` started (their histories read)."""
        query = scoring.build_query(held.items[:cut], held.times[:cut], [1.0] * cut, params)
        blobs = [self._index_before(scoring.to_hash(i), held) for i in query.items.tolist()]
        sessions, similarity = scoring.neighbours(query, blobs, params, held.session)
        await self._load_histories(sessions)
        return Neighbourhood(query, sessions, similarity)

    async def ranked(self, params: Params, k: int = K) -> AsyncIterator[Ranked]:
        """Every prefix of every holdout session, scored by ``params`` before any learned
        order: its query, the ``k`` best answers and their scores (none without neighbours),
        and the next item. The neighbourhoods of the last few settings that find them are
        kept: most candidates of a search differ from the best so far only in how the
        neighbours' items are scored."""
        key = scoring.query_settings(params) + scoring.neighbour_settings(params)
        kept = self._neighbourhoods.get(key)
        found_now: list[Neighbourhood] = []
        at = 0
        for held in self.sessions:
            await asyncio.sleep(0)  # the lease's renewals run between sessions
            for cut in range(1, len(held.items)):
                if kept is None:
                    hood = await self._neighbourhood(held, cut, params)
                    found_now.append(hood)
                else:
                    hood = kept[at]
                at += 1
                query, target = hood.query, int.from_bytes(held.items[cut], "little")
                if not len(hood.sessions):
                    yield Ranked(query, np.zeros(0, np.uint64), np.zeros(0), target,
                                 scoring.NO_CANDIDATES, held.start, held.session)
                    continue
                found = scoring.score(query, self._histories(hood.sessions, held.start),
                                      hood.similarity, params)
                df, n_sessions = await self._doc_freq(found.items) \
                    if params.idf_weight else (np.zeros(0), 0.0)
                best, values = scoring.rank(found.items, found.scores, df, n_sessions, query,
                                            params, True, np.zeros(0, np.uint64), k)
                yield Ranked(query, best, values, target, found, held.start, held.session)
        if kept is None:  # kept only once whole: a run that stopped midway left a partial list
            self._neighbourhoods[key] = found_now
        self._neighbourhoods.move_to_end(key)
        while len(self._neighbourhoods) > NEIGHBOURHOODS_KEPT:
            self._neighbourhoods.popitem(last=False)

    async def examples(self, params: Params) -> fitorder.Examples:
        """The predictions as the served order of ``params`` (any learned order left out)
        ranks them, with their answers' features: what ``fitorder.fit`` learns from. A
        prediction whose next click is not among its ``reorder.DEPTH`` answers teaches no
        order, and is left out; so is one that may not read the run's sequence model (its
        session started before the model's cut) while there is one. Serving reads the model
        on every request: an order fitted with a share of predictions that lack its values
        learns to do without them, and weighs them too little where they are there."""
        rows: list[scoring.F64] = []
        targets: list[int] = []
        owners: list[int] = []
        async for got in self.ranked(fitorder.unordered(params), reorder.DEPTH):
            if not self._teaches_order(got.start):
                continue
            at = np.flatnonzero(got.best == np.uint64(got.target))
            if len(at):
                df, sessions = await self._doc_freq(got.best)
                rows.append(reorder.features(got.best, got.values, df, sessions, got.query,
                                             got.found, self._sequence(got, got.best)))
                targets.append(int(at[0]))
                owners.append(got.session)
        return fitorder.Examples(rows, targets, owners)

    def _sequence(self, got: Ranked, best: scoring.U64) -> scoring.F64:
        """The sequence model's values of a prediction's answers, if it may read it."""
        if got.start < self.sequence_from:
            return reorder.NO_VALUES
        return reorder.sequence_values(self.sequence, got.query, best)

    async def score(self, params: Params) -> Score:
        """HR@20 and MRR@20 of ``params`` over every prefix of every holdout session."""
        ranks: list[int] = []
        async for got in self.ranked(params, reorder.depth(params, K)):
            best = got.best
            if reorder.active(params) and len(best):
                df, n_sessions = await self._doc_freq(best)
                sequence = self._sequence(got, best) if reorder.reads_sequence(params) \
                    else reorder.NO_VALUES
                best, _ = reorder.reorder(best, got.values, df, n_sessions, got.query, got.found,
                                          params, K, sequence)
            found = np.flatnonzero(best[:K] == np.uint64(got.target))
            ranks.append(int(found[0]) + 1 if len(found) else 0)
        r = np.asarray(ranks)
        hit = r > 0
        reciprocal = np.where(hit, 1.0 / np.maximum(r, 1), 0.0)
        return Score(float(hit.mean()) if len(r) else 0.0,
                     float(reciprocal.mean()) if len(r) else 0.0,
                     hit.astype(np.float64) + reciprocal)
