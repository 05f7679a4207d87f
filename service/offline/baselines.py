"""Well-known session-based baselines, run in the evaluator's harness beside the served model.

Each learns incrementally (``learn`` one event at a time, as a stream would deliver it) and
answers ``predict(prefix, k)`` with item ids best first, padded with the most popular items,
so the static and the streaming protocol treat every model alike. Implementations follow
session-rec (Ludewig et al.) at their usual settings; they are references, not served.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Sequence


class Baseline:
    name = "baseline"

    def __init__(self) -> None:
        self.popularity: Counter[str] = Counter()
        self._session: str | None = None
        self._items: list[str] = []
        self._popular_cache: list[str] | None = None

    def learn(self, session: str, item: str) -> None:
        if session != self._session:
            self._session, self._items = session, []
        self.popularity[item] += 1
        self._popular_cache = None
        self._learn(self._items, item)
        self._items.append(item)

    def _learn(self, before: list[str], item: str) -> None:
        """Update the model with ``item`` following ``before`` in the same session."""

    def popular(self, k: int) -> list[str]:
        if self._popular_cache is None or len(self._popular_cache) < k:
            self._popular_cache = [i for i, _ in self.popularity.most_common(max(k, 100))]
        return self._popular_cache[:k]

    def scores(self, prefix: Sequence[str]) -> dict[str, float]:
        return {}

    def predict(self, prefix: Sequence[str], k: int) -> list[str]:
        scores = self.scores(prefix)
        best = heapq.nlargest(k, scores.items(), key=lambda kv: (kv[1], kv[0]))
        out = [i for i, s in best if s > 0]
        if len(out) < k:
            taken = set(out)
            out += [i for i in self.popular(k + len(out)) if i not in taken][:k - len(out)]
        return out


class Popular(Baseline):
    """POP: the most clicked items, whatever the session."""

    name = "POP"


class CoOccurrence(Baseline):
    """Last-item co-occurrence: items that shared a session with the last item, by count."""

    name = "co-occurrence"

    def __init__(self) -> None:
        super().__init__()
        self.pairs: defaultdict[str, Counter[str]] = defaultdict(Counter)

    def _learn(self, before: list[str], item: str) -> None:
        for other in set(before):
            if other != item:
                self.pairs[other][item] += 1
                self.pairs[item][other] += 1

    def scores(self, prefix: Sequence[str]) -> dict[str, float]:
        return dict(self.pairs.get(prefix[-1], {})) if prefix else {}


class SequentialRules(Baseline):
    """SR: rule a -> b for b following a within ``steps`` clicks, weighted 1/distance."""

    name = "SR"

    def __init__(self, steps: int = 10) -> None:
        super().__init__()
        self.steps = steps
        self.rules: defaultdict[str, defaultdict[str, float]] = defaultdict(
            lambda: defaultdict(float))

    def _learn(self, before: list[str], item: str) -> None:
        for distance, prev in enumerate(reversed(before[-self.steps:]), start=1):
            self.rules[prev][item] += 1.0 / distance

    def scores(self, prefix: Sequence[str]) -> dict[str, float]:
        return dict(self.rules.get(prefix[-1], {})) if prefix else {}


class VSKNN(Baseline):
    """V-SKNN: the ``k`` most similar of the ``sample`` most recent sessions sharing an item
    with the prefix; similarity sums linear position weights of the shared prefix items."""

    name = "V-SKNN"

    def __init__(self, k: int = 100, sample: int = 500) -> None:
        super().__init__()
        self.k = k
        self.sample = sample
        self.sessions_of: defaultdict[str, list[int]] = defaultdict(list)
        self.items_of: list[set[str]] = []
        self.ids: dict[str, int] = {}

    def _learn(self, before: list[str], item: str) -> None:
        assert self._session is not None
        sid = self.ids.get(self._session)
        if sid is None:
            sid = self.ids[self._session] = len(self.items_of)
            self.items_of.append(set())
        if item not in self.items_of[sid]:
            self.items_of[sid].add(item)
            self.sessions_of[item].append(sid)  # session ids grow with time: sorted

    def scores(self, prefix: Sequence[str]) -> dict[str, float]:
        weight: dict[str, float] = {}
        n = len(prefix)
        for pos, item in enumerate(prefix, start=1):
            weight[item] = pos / n  # a repeated item keeps its latest position
        candidates: set[int] = set()
        for item in weight:
            candidates.update(self.sessions_of.get(item, [])[-self.sample:])
        recent = heapq.nlargest(self.sample, candidates)
        sims = []
        for sid in recent:
            items = self.items_of[sid]
            sim = sum(w for it, w in weight.items() if it in items)
            sims.append((sim, sid))
        scores: defaultdict[str, float] = defaultdict(float)
        for sim, sid in heapq.nlargest(self.k, sims):
            for item in self.items_of[sid]:
                scores[item] += sim
        return scores


BASELINES = {"pop": Popular, "cooc": CoOccurrence, "sr": SequentialRules, "vsknn": VSKNN}
