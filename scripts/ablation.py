"""Ablation of the signals studied for issue 25 (docs/ACCURACY.md, "Against the strongest
published figures"): what each signal adds in HR@20 / MRR@20 to the served model on one split,
every choice made on a validation split cut from the training log (its last 10 % of
sessions, learned from the rest), the test figure then measured for that choice on the state
of the whole training log. The test split never chooses anything.

The state is built in process by the product's own update rule (``apply_events`` and the
loader's ``build_indexes``: what ``sessionrec load`` writes) and scored by the kernel's stages
(what ``POST /iid_recommend`` runs, ``recommend_seen`` true as ``sessionrec eval`` asks). The
answer's trending fill is left out, so the base row sits within 0.001 of ``sessionrec eval``.
A signal the product does not have is computed here from the same state:

* **sequential rules**: per item, the items that follow it within 10 places in the sessions
  of its neighbour index, each weighing 1/distance (session-rec's SR over the sessions the
  state keeps); the last 1 or 3 session items' rules, scaled to a best of 1, added at a weight
  to the neighbourhood's scores (scaled alike) before idf and repeats;
* **distance exponent**: ``1 + sequence_weight / d^a`` in place of ``/ d``;
* **neighbour length**: a neighbour's similarity over its history's length^b;
* **similarity exponent**: a neighbour's similarity^g;
* **learned order**: the product's learned order (``service/core/reorder.py``: its features, its
  depth, its fit in ``service/offline/fitorder.py``), fitted on the validation predictions
  (next-click labels) and applied to the test's, where a live tuning run fits it on its
  holdout;
* **learned order with the sequence model**: the same with its seventh feature, the sequence
  model's score (``service/core/sequence.py``) trained by the product's trainer
  (``sequencefit``, as a first run trains it) on the sessions the state learned;
* **learned order with recent popularity**: the same plus the item's trending score (log2 of its
  decayed event count, a day's half-life, against the log's best; within one prediction's
  answers any other reference is the same feature). A live tuning run cannot measure it
  honestly: today's trending counts the holdout sessions' own later clicks.

    python scripts/ablation.py --data ../shared/datasets/diginetica-srgnn --out dig.md
    python scripts/ablation.py --data ../shared/datasets/yoochoose1_64-srgnn \
        --params '{"query_items": 3, "sample_sessions": 1000, "sequence_weight": 8,
                   "before_weight": 2, "idf_weight": 0, "repeat_weight": 0.25}'
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.core import reorder, scoring  # noqa: E402
from service.core.layout import (  # noqa: E402
    ENTRY_BYTES,
    HISTORY_DTYPE,
    INDEX_DTYPE,
    item_hash,
)
from service.core.model import apply_events, trending  # noqa: E402
from service.core.scoring import F64, U64, Candidates, Params, Query  # noqa: E402
from service.core.sequence import SequenceModel  # noqa: E402
from service.kernel import reference  # noqa: E402
from service.offline import clicklog, fitorder, sequencefit, sequencerun  # noqa: E402
from service.offline.evaluate import align_times, static_cases  # noqa: E402
from service.offline.loader import build_indexes  # noqa: E402
from service.offline.tune import split_validation  # noqa: E402

K = 20
STEPS = 10  # places after an item its sequential rules count
Case = tuple[list[bytes], list[float], int, int]  # item hashes, times, target, session
Predict = Callable[[Case], U64]


@dataclass(frozen=True)
class State:
    """What ``sessionrec load`` would write for a log, as dicts by hash."""

    histories: dict[bytes, bytes]
    indexes: dict[bytes, bytes]
    doc_freq: dict[bytes, int]
    sessions: int
    trend: dict[int, float]

    @classmethod
    def of(cls, log: clicklog.ClickLog, params: Params, history_cap: int = 100) -> State:
        fx = apply_events({}, log.events(), history_cap)
        trend = {int.from_bytes(item_hash(name), "little"): value
                 for name, value in trending(fx.trend, 86_400.0).items()}
        return cls(fx.histories, build_indexes(fx.index, params.index_cap), fx.doc_freq,
                   fx.new_sessions, trend)

    def df(self, items: U64) -> F64:
        return np.array([self.doc_freq.get(_b(i), 0) for i in items.tolist()], np.float64)


def _b(value: int) -> bytes:
    return int(value).to_bytes(8, "little")


def sequence_model(log: clicklog.ClickLog) -> SequenceModel:
    """The sequence model a first run trains on ``log``'s sessions."""
    bounds = log.session_bounds().tolist()
    hashed = np.array([int.from_bytes(item_hash(i), "little") for i in log.items.tolist()],
                      np.uint64)
    found = sequencefit.examples([hashed[a:b] for a, b in itertools.pairwise(bounds)])
    return sequencefit.train(found, None, None, sequencerun.FIRST_EPOCHS).model({})


def cases_of(log: clicklog.ClickLog) -> list[Case]:
    return [([item_hash(i) for i in c.prefix], c.times,
             int.from_bytes(item_hash(c.target), "little"),
             int.from_bytes(item_hash(c.session), "little")) for c in static_cases(log)]


@dataclass(frozen=True)
class Shape:
    """The score stage's variants (1, 0, 1: the product's)."""

    distance_exponent: float = 1.0
    length_exponent: float = 0.0
    similarity_exponent: float = 1.0

    @property
    def plain(self) -> bool:
        return self == Shape()


def shaped_score(query: Query, blobs: Sequence[bytes | None], similarity: F64, params: Params,
                 shape: Shape) -> tuple[U64, F64]:
    """``scoring.score`` with ``shape``'s variants (the reference's arithmetic)."""
    lengths = np.fromiter((len(b or b"") // ENTRY_BYTES for b in blobs), np.int64, len(blobs))
    items = np.frombuffer(b"".join((b or b"")[:n * ENTRY_BYTES] for b, n in
                                   zip(blobs, lengths.tolist(), strict=True)),
                          HISTORY_DTYPE)["i"].astype(np.uint64)
    if not len(items):
        return np.zeros(0, np.uint64), np.zeros(0)
    owner = np.repeat(np.arange(len(blobs)), lengths)
    sims = similarity ** shape.similarity_exponent / np.maximum(lengths, 1) \
        ** shape.length_exponent
    weight = sims[owner].astype(np.float64)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    position = np.arange(len(items)) - starts[owner]
    anchor = reference._anchors(query.items, query.weights, items, position, lengths)[owner]
    distance = position - anchor
    after = (anchor >= 0) & (distance > 0)
    before = (anchor >= 0) & (distance < 0)
    gap = np.maximum(np.abs(distance), 1).astype(np.float64) ** shape.distance_exponent
    weight = weight * (1.0 + np.where(after, params.sequence_weight / gap, 0.0)
                       + np.where(before, params.before_weight / gap, 0.0))
    candidates, item_id = np.unique(items, return_inverse=True)
    pair = owner.astype(np.int64) * len(candidates) + item_id
    order = np.argsort(pair, kind="stable")
    pair = pair[order]
    first = np.flatnonzero(np.concatenate(([True], pair[1:] != pair[:-1])))
    best = np.maximum.reduceat(weight[order], first)
    return candidates, np.bincount(item_id[order[first]], weights=best,
                                   minlength=len(candidates)).astype(np.float64)


Rules = dict[int, tuple[U64, F64]]


def sequential_rules(state: State) -> Rules:
    """Per item, the items following it within ``STEPS`` places in the sessions its index
    holds, each weighing 1 / distance."""
    members: dict[bytes, set[bytes]] = {}
    for item, blob in state.indexes.items():
        sessions = np.frombuffer(blob, INDEX_DTYPE)["s"].astype("<u8").tobytes()
        members[item] = {sessions[n:n + 8] for n in range(0, len(sessions), 8)}
    rules: dict[int, dict[int, float]] = {}
    for session, blob in state.histories.items():
        items = np.frombuffer(blob, HISTORY_DTYPE)["i"].tolist()
        for p, x in enumerate(items):
            if session not in members.get(_b(x), ()):
                continue
            row = rules.setdefault(x, {})
            for q in range(p + 1, min(len(items), p + STEPS + 1)):
                if items[q] != x:
                    row[items[q]] = row.get(items[q], 0.0) + 1.0 / (q - p)
    return {x: (np.fromiter(row, np.uint64, len(row)),
                np.fromiter(row.values(), np.float64, len(row)))
            for x, row in rules.items() if row}


class Model:
    """The served model's stages on a ``State``, with the studied signals."""

    def __init__(self, state: State, params: Params, shape: Shape = Shape(),
                 rules: Rules | None = None, rules_weight: float = 0.0,
                 rules_items: int = 1, sequence: SequenceModel | None = None) -> None:
        self.state, self.params, self.shape, self.sequence = state, params, shape, sequence
        self.rules, self.rules_weight, self.rules_items = rules or {}, rules_weight, rules_items

    def query(self, case: Case) -> Query:
        return scoring.build_query(case[0], case[1], [1.0] * len(case[0]), self.params)

    def candidates(self, query: Query) -> tuple[U64, F64, Candidates]:
        blobs = [self.state.indexes.get(_b(i)) for i in query.items.tolist()]
        sessions, similarity = scoring.neighbours(query, blobs, self.params, None)
        found = scoring.NO_CANDIDATES
        if len(sessions):
            histories = [self.state.histories.get(_b(s)) for s in sessions.tolist()]
            found = scoring.score(query, histories, similarity, self.params)
        candidates, scores = found.items, found.scores
        if len(sessions) and not self.shape.plain:
            candidates, scores = shaped_score(query, histories, similarity, self.params,
                                              self.shape)
        if self.rules_weight and len(query.items):
            rules = [self.rules[i] for i in query.items[-self.rules_items:].tolist()
                     if i in self.rules]
            if rules:
                ruled = np.concatenate([s for _, s in rules])
                top = scores.max() if len(scores) else 1.0
                merged, inverse = np.unique(np.concatenate([candidates, *[i for i, _ in rules]]),
                                            return_inverse=True)
                values = np.concatenate((scores / top, self.rules_weight * ruled / ruled.max()))
                candidates = merged
                scores = np.bincount(inverse, weights=values,
                                     minlength=len(merged)).astype(np.float64)
        return candidates, scores, found

    def ranked(self, case: Case, k: int = K) -> tuple[Query, U64, F64, Candidates]:
        query = self.query(case)
        candidates, scores, found = self.candidates(query)
        df = self.state.df(candidates) if self.params.idf_weight else np.zeros(0)
        best, values = scoring.rank(candidates, scores, df, float(self.state.sessions), query,
                                    self.params, True, np.zeros(0, np.uint64), k)
        return query, best, values, found

    def predict(self, case: Case) -> U64:
        return self.ranked(case)[1]


POPULARITY = ("trend",)


def features(model: Model, case: Case, popularity: bool) -> tuple[F64, U64] | None:
    """The top ``DEPTH`` answers' features (one row each: the product's and their products,
    then the recent popularity's when asked) and the answers."""
    query, best, values, found = model.ranked(case, reorder.DEPTH)
    if not len(best) or values[0] <= 0:
        return None
    state = model.state
    rows = fitorder.with_pairs(reorder.features(best, values, state.df(best),
                                                float(state.sessions), query, found,
                                                reorder.sequence_values(model.sequence, query,
                                                                        best)))
    if popularity:
        top = max(state.trend.values())
        trend = np.array([state.trend.get(i, top - 60.0) for i in best.tolist()])
        rows = np.column_stack([rows, trend - top])
    return rows, best


Labelled = list[tuple[F64, int, int]]  # features, the target's row (-1: none), session


def labelled(model: Model, cases: Sequence[Case], popularity: bool) -> Labelled:
    out: Labelled = []
    for case in cases:
        got = features(model, case, popularity)
        if got is None:
            out.append((np.zeros((0, 0)), -1, case[3]))
            continue
        rows, best = got
        at = np.flatnonzero(best == np.uint64(case[2]))
        out.append((rows, int(at[0]) if len(at) else -1, case[3]))
    return out


@dataclass(frozen=True)
class Reranker:
    weights: F64

    def order(self, rows: F64) -> npt.NDArray[np.int64]:
        return np.argsort(-(rows @ self.weights), kind="stable")


def fit(data: Labelled) -> Reranker:
    """The product's fit (``fitorder``, a session's weight bounded as a run bounds it),
    unbounded (a study's extra columns have no limits)."""
    found = fitorder.Examples([rows for rows, y, _ in data if y >= 0],
                              [y for _, y, _ in data if y >= 0],
                              [session for _, y, session in data if y >= 0])
    weights = fitorder.maximum_likelihood(found)
    assert weights is not None
    return Reranker(weights)


def measure(predict: Predict, cases: Sequence[Case]) -> tuple[float, float]:
    hits, reciprocal = 0, 0.0
    for case in cases:
        at = np.flatnonzero(predict(case)[:K] == np.uint64(case[2]))
        if len(at):
            hits += 1
            reciprocal += 1.0 / (int(at[0]) + 1)
    return hits / len(cases), reciprocal / len(cases)


def measure_reranked(data: Labelled, reranker: Reranker | None) -> tuple[float, float]:
    hits, reciprocal = 0, 0.0
    for rows, y, _ in data:
        if y < 0:
            continue
        rank = y if reranker is None else int(np.flatnonzero(reranker.order(rows) == y)[0])
        if rank < K:
            hits += 1
            reciprocal += 1.0 / (rank + 1)
    return hits / len(data), reciprocal / len(data)


@dataclass
class Row:
    signal: str
    chosen: str
    valid: tuple[float, float]
    test: tuple[float, float]


def study(data: Path, params: Params, signals: Sequence[str], say: Callable[[str], None]
          ) -> tuple[list[Row], dict[str, Any]]:
    train = clicklog.read(data / "train.tsv")
    test = align_times(train, clicklog.read(data / "test.tsv"))
    fit_log, valid_log = split_validation(train, 0.1)
    started = time.perf_counter()
    valid_state, test_state = State.of(fit_log, params), State.of(train, params)
    valid_cases, test_cases = cases_of(valid_log), cases_of(test)
    say(f"states built in {time.perf_counter() - started:.0f} s: {len(valid_cases)} "
        f"validation and {len(test_cases)} test predictions")
    rows: list[Row] = []

    def base_of(state: State, **kw: Any) -> Model:
        return Model(state, params, **kw)

    valid_base = measure(base_of(valid_state).predict, valid_cases)
    test_base = measure(base_of(test_state).predict, test_cases)
    rows.append(Row("none (the served model)", "", valid_base, test_base))
    say(f"base: validation {valid_base}, test {test_base}")

    def grid(name: str, choices: Sequence[tuple[str, dict[str, Any]]],
             extra: Callable[[State], dict[str, Any]] = lambda s: {}) -> None:
        best: tuple[float, str, dict[str, Any], tuple[float, float]] | None = None
        valid_extra = extra(valid_state)
        for label, kw in choices:
            got = measure(base_of(valid_state, **valid_extra, **kw).predict, valid_cases)
            say(f"{name} {label}: validation {got}")
            if best is None or sum(got) > best[0]:
                best = (sum(got), label, kw, got)
        assert best is not None
        _, label, kw, got = best
        if sum(got) <= sum(valid_base):
            rows.append(Row(name, f"none better on validation (best: {label})", got,
                            test_base))
            return
        tested = measure(base_of(test_state, **extra(test_state), **kw).predict, test_cases)
        rows.append(Row(name, label, got, tested))
        say(f"{name} {label}: test {tested}")

    if "rules" in signals:
        grid("sequential rules", [(f"last {n}, weight {w:g}",
                                   {"rules_items": n, "rules_weight": w})
                                  for n in (1, 3) for w in (0.25, 0.5, 1.0, 2.0)],
             lambda s: {"rules": sequential_rules(s)})
    if "shape" in signals:
        grid("distance exponent", [(f"a = {a:g}", {"shape": Shape(distance_exponent=a)})
                                   for a in (0.5, 1.5, 2.0)])
        grid("neighbour length", [(f"b = {b:g}", {"shape": Shape(length_exponent=b)})
                                  for b in (0.25, 0.5)])
        grid("similarity exponent", [(f"g = {g:g}", {"shape": Shape(similarity_exponent=g)})
                                     for g in (0.5, 2.0)])
    fitted: dict[str, Any] = {}
    models: dict[str, SequenceModel | None] = {"valid": None, "test": None}
    if "sequence" in signals:
        started = time.perf_counter()
        models = {"valid": sequence_model(fit_log), "test": sequence_model(train)}
        say(f"sequence models trained in {time.perf_counter() - started:.0f} s")
    for signal, popularity in (("rerank", False), ("sequence", False), ("popularity", True)):
        if signal not in signals:
            continue
        names = reorder.WEIGHTS + (POPULARITY if popularity else ())
        use = signal != "rerank"  # the sequence model with popularity too, when trained
        valid_data = labelled(base_of(valid_state, sequence=models["valid"] if use else None),
                              valid_cases, popularity)
        # its validation figure: fitted on one half, measured on the other
        half = fit(valid_data[0::2])
        valid_got = measure_reranked(valid_data[1::2], half)
        reranker = fit(valid_data)
        test_got = measure_reranked(labelled(base_of(test_state, sequence=models["test"]
                                                     if use else None), test_cases,
                                             popularity), reranker)
        label = "learned order" + (" with recent popularity" if popularity else
                                   " with the sequence model" if signal == "sequence" else "")
        rows.append(Row(label, f"{len(names)} weights (features and their products), "
                        "fitted on validation", valid_got, test_got))
        fitted[label] = dict(zip(names, reranker.weights.round(3).tolist(), strict=True))
        say(f"{label}: validation (other half) {valid_got} against "
            f"{measure_reranked(valid_data[1::2], None)}, test {test_got}")
    return rows, fitted


def table(rows: Sequence[Row]) -> str:
    base = rows[0].test
    lines = ["| signal | chosen on validation | validation HR@20 / MRR@20 | test HR@20 / MRR@20 "
             "| test gain |", "|---|---|---|---|---|"]
    for row in rows:
        gain = f"{row.test[0] - base[0]:+.4f} / {row.test[1] - base[1]:+.4f}"
        lines.append(f"| {row.signal} | {row.chosen} | {row.valid[0]:.4f} / {row.valid[1]:.4f} "
                     f"| {row.test[0]:.4f} / {row.test[1]:.4f} | {gain} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path,
                        help="a folder with train.tsv and test.tsv (SR-GNN split)")
    parser.add_argument("--params", default="{}",
                        help="JSON: the served parameters to start from (default: defaults)")
    parser.add_argument("--signals", default="rules,shape,rerank,sequence,popularity",
                        help="comma-separated: rules, shape, rerank, sequence, popularity")
    parser.add_argument("--out", type=Path, default=None, help="write the table here too")
    args = parser.parse_args()
    params = dataclasses.replace(Params(), **json.loads(args.params))
    rows, fitted = study(args.data, params, args.signals.split(","),
                         lambda line: print(line, file=sys.stderr, flush=True))
    text = f"{args.data.name}, from {json.loads(args.params) or 'the defaults'}\n\n" \
        f"{table(rows)}\n\nfitted weights (per unit of each feature): {json.dumps(fitted)}\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
