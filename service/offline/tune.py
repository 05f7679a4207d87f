"""``sessionrec tune``: choose the model's parameters on a validation split of the training
log, never on the test split.

The validation split is the last ``valid_fraction`` of training sessions (the log is in time
order), so tuning predicts the future from the past like the test does. State parameters
(``index_cap``, ``history_cap``) need the state rebuilt; query-time ones reuse it. The search
is coordinate ascent from the current defaults over each parameter's grid, optimising
``HR@20 + MRR@20`` (HR alone rewards long tails, MRR alone the head). The best setting is
written as an env file (``SESSIONREC_...=...``) that every command reads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from service.offline.clicklog import ClickLog
from service.offline.evaluate import Result, ServedModel, run_static
from service.offline.progress import above_bars, bar
from service.settings import ENV_PREFIX, Settings

STATE = ("index_cap", "history_cap")
GRID: dict[str, Sequence[float]] = {
    "idf_weight": (0.0, 1.0, 2.0, 3.0, 4.0),
    "repeat_weight": (0.0, 0.25, 0.5, 1.0, 2.0),
    "neighbours": (50, 100, 200),
    "query_items": (2, 3, 5, 10, 20),
    "sequence_weight": (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 12.0),
    "before_weight": (0.0, 0.5, 1.0, 2.0, 3.0),
    "position_decay": (0.5, 1.0, 2.0),
    "sample_sessions": (250, 500, 1000),
    # off, a day, a week, 30 and 120 days
    "neighbour_half_life": (0.0, 86_400.0, 604_800.0, 2_592_000.0, 10_368_000.0),
    "index_cap": (250, 500, 1000),
}


def split_validation(train: ClickLog, valid_fraction: float) -> tuple[ClickLog, ClickLog]:
    bounds = train.session_bounds()
    cut = bounds[int((len(bounds) - 1) * (1 - valid_fraction))]
    part = [ClickLog(train.sessions[a:b], train.items[a:b], train.times[a:b])
            for a, b in ((0, cut), (cut, len(train)))]
    return part[0], part[1]


def objective(result: Result) -> float:
    r = np.asarray(result.ranks)
    hit = (r > 0) & (r <= 20)
    return float(hit.mean() + np.where(hit, 1.0 / np.maximum(r, 1), 0.0).mean())


@dataclass
class Trial:
    values: dict[str, float]
    score: float


async def tune(settings: Settings, train: ClickLog, *, valid_fraction: float = 0.1,
               limit: int | None = 20000, params: Sequence[str] | None = None,
               rounds: int = 2, log: Callable[[str], None] = print) -> tuple[Settings,
                                                                             list[Trial]]:
    fit, valid = split_validation(train, valid_fraction)
    log = above_bars(log)
    names = list(params or GRID)
    best = settings
    trials: list[Trial] = []
    cache: dict[tuple[float, ...], float] = {}
    loaded: dict[tuple[float, ...], str] = {}

    async def score(candidate: Settings) -> float:
        key = tuple(getattr(candidate, n) for n in GRID)
        if key in cache:
            return cache[key]
        state_key = tuple(getattr(candidate, n) for n in STATE)
        namespace = loaded.get(state_key)
        model = ServedModel(candidate.replace(
            namespace=namespace or f"{settings.namespace}-tune{len(loaded)}"), http=False)
        try:
            if namespace is None:
                await model.learn_train(fit)
                loaded[state_key] = model.settings.namespace
            result = await run_static(_Reuse(model), fit, valid, 20, limit, progress=False)
        finally:
            await model.close()
        cache[key] = objective(result)
        values = {n: getattr(candidate, n) for n in GRID}
        trials.append(Trial(values, cache[key]))
        log(f"  {values} -> HR@20+MRR@20 = {cache[key]:.4f}")
        return cache[key]

    best_score = await score(best)
    for round_ in range(1, rounds + 1):
        improved = False
        with bar(f"round {round_}", sum(len(GRID[n]) for n in names), "candidates") as shown:
            for name in names:
                for value in GRID[name]:
                    kind = type(getattr(best, name))
                    candidate = best.replace(**{name: kind(value)})
                    s = await score(candidate)
                    shown.update()
                    if s > best_score + 1e-6:
                        best, best_score, improved = candidate, s, True
                        log(f"best so far: {name}={value} ({best_score:.4f})")
        if not improved:
            break
    return best, trials


class _Reuse:
    """A served model whose state is already loaded: learning the training log is a no-op."""

    def __init__(self, model: ServedModel) -> None:
        self.model = model
        self.name = model.name

    async def learn_train(self, train: ClickLog) -> None:
        return None

    async def predict(self, case: object, k: int) -> list[str]:
        return await self.model.predict(case, k)  # type: ignore[arg-type]

    async def observe(self, event: object) -> None:
        raise NotImplementedError("tuning uses the static protocol")

    async def predict_live(self, case: object, k: int) -> list[str]:
        raise NotImplementedError("tuning uses the static protocol")

    async def close(self) -> None:
        return None


def env_file(best: Settings, names: Sequence[str] = tuple(GRID)) -> str:
    lines = ["# written by `sessionrec tune`; read with `set -a; . FILE; set +a` or env_file:"]
    for f in dataclasses.fields(best):
        if f.name in names:
            lines.append(f"{ENV_PREFIX}{f.name.upper()}={getattr(best, f.name)}")
    return "\n".join(lines) + "\n"
