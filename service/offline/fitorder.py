"""Fitting the learned order of the top answers (``service/core/reorder.py``) on a tuning
run's holdout: the next click of each holdout prefix is the label, its ``DEPTH`` best answers
in the served order the choices, and the weights those of a conditional logit (a softmax over
one prediction's answers, with weights shared by all) at its maximum likelihood.

The objective is convex, so the fit ends at the same weights whatever it starts from and
needs no learning rate: Newton steps with a backtracking line search reach it in a few
iterations. The columns are the features and their products (``with_pairs``), standardised
for the fit, with a small ridge penalty that keeps a
feature no holdout answer varies in at weight 0; the weights are returned per unit of each
raw feature (what ``reorder`` multiplies), clipped to the parameters' limits.

The holdout is the run's, so the fit inherits its honesty (``livetune``: a prediction sees
only what was learned before its session started) and its defences: the fitted weights are
one more candidate, promoted like any other only by a gain on the judging half that holds in
every arrival slice. One defence is the fit's own: a session weighs in it at most as much as
``SESSION_PREDICTIONS`` predictions. A few crafted sessions of a hundred clicks each stay
within an hour's share of the holdout's predictions, yet their extreme values (a session's
length above all) would give them the pull of hundreds of honest predictions on the weights
that multiply those values.

Pure: ``livetune`` gathers the examples from its holdout. Offline tool: the serving path
never imports it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from service.core import reorder
from service.core.parameters import PARAMETERS
from service.core.scoring import F64, Params

RIDGE = 1e-2
"""Penalty on the standardised weights, per prediction: it keeps a feature constant over
the holdout at 0 and is small against a real feature's pull."""

SESSION_PREDICTIONS = 10
"""A session's predictions weigh ``min(1, SESSION_PREDICTIONS / its predictions)`` each in
the fit: as many as ten predictions at most, where most sessions have fewer, so honest
sessions keep nearly their whole say."""

STEPS = 50
TOLERANCE = 1e-9
"""A Newton step that lowers the mean loss by less than this ends the fit."""


@dataclass(frozen=True)
class Examples:
    """Per prediction whose next click is among its answers: the answers' features (one row
    each, ``reorder.COLUMNS``), the row of the click and the session it belongs to (None:
    each prediction a session of its own)."""

    rows: Sequence[F64]
    targets: Sequence[int]
    sessions: Sequence[int] | None = None

    def weights(self) -> F64:
        """Each prediction's weight in the fit (``SESSION_PREDICTIONS``)."""
        if self.sessions is None:
            return np.ones(len(self.targets))
        _, owner, counts = np.unique(np.asarray(self.sessions, np.uint64), return_inverse=True,
                                     return_counts=True)
        weights: F64 = np.minimum(1.0, SESSION_PREDICTIONS / counts[owner]).astype(np.float64)
        return weights


def unordered(params: Params) -> Params:
    """``params`` with every learned order weight 0: the served order."""
    return dataclasses.replace(params, **cast(dict[str, Any],
                                              dict.fromkeys(reorder.WEIGHTS, 0.0)))


def with_pairs(rows: F64) -> F64:
    """The columns ``reorder.WEIGHTS`` weighs, in its order, of ``rows`` (one per answer, one
    column per ``reorder.COLUMNS``): the answer features, then the products ``reorder.PAIRS``
    names."""
    pairs = reorder.PAIRS.reshape(-1, 2)
    return np.column_stack([rows[:, :len(reorder.FEATURES)],
                            rows[:, pairs[:, 0]] * rows[:, pairs[:, 1]]])


def fit(found: Examples) -> F64 | None:
    """The learned order's weights (per unit of each raw feature and product of two) that
    maximise the likelihood of the clicks among their predictions' answers, within the
    parameters' limits; None without a prediction to learn from."""
    weights = maximum_likelihood(Examples([with_pairs(rows) for rows in found.rows],
                                          found.targets, found.sessions))
    if weights is None:
        return None
    for n, name in enumerate(reorder.WEIGHTS):
        weights[n] = min(max(weights[n], PARAMETERS[name].low), PARAMETERS[name].high)
    return weights


def maximum_likelihood(found: Examples, ridge: float = RIDGE, steps: int = STEPS
                       ) -> F64 | None:
    """``fit`` for any columns (a study's extra features too), the weights unbounded: the
    weighted mean of the predictions' losses (``Examples.weights``) is minimised."""
    if not found.rows:
        return None
    raw = np.concatenate(found.rows)
    sizes = np.fromiter((len(r) for r in found.rows), np.int64, len(found.rows))
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    owner = np.repeat(np.arange(len(sizes)), sizes)
    share = found.weights()
    share = share / share.sum()  # each prediction's share of the mean loss
    # standardised as the predictions weigh (a bounded session moves the scales no more
    # than the loss)
    rows_share = share[owner] / share[owner].sum()
    mean = rows_share @ raw
    scale = np.sqrt(rows_share @ (raw - mean) ** 2)
    constant = raw.min(axis=0) == raw.max(axis=0)  # exactly 0 after scaling, whatever rounding
    mean[constant], scale[constant] = raw[0, constant], 1.0
    x = (raw - mean) / scale
    chosen = x[starts + np.asarray(found.targets, np.int64)]
    width = x.shape[1]

    def loss(w: F64) -> float:
        z = x @ w
        top = np.maximum.reduceat(z, starts)
        total = np.add.reduceat(np.exp(z - top[owner]), starts)
        return float(share @ (np.log(total) + top - chosen @ w) + 0.5 * ridge * (w @ w))

    w = np.zeros(width)
    current = loss(w)
    for _ in range(steps):
        z = x @ w
        e = np.exp(z - np.maximum.reduceat(z, starts)[owner])
        p = e / np.add.reduceat(e, starts)[owner]
        weighted = x * (p * share[owner])[:, None]  # one array the size of x, as unweighted
        expected = np.add.reduceat(weighted, starts)  # the features' expectation, times share
        gradient = expected.sum(axis=0) - share @ chosen + ridge * w
        hessian = (x.T @ weighted - expected.T @ (expected / share[:, None])
                   + ridge * np.eye(width))
        step = np.linalg.solve(hessian, gradient)
        t, slope = 1.0, float(gradient @ step)
        while True:
            tried = loss(w - t * step)
            if tried <= current - 1e-4 * t * slope or t < 1e-6:
                break
            t /= 2
        if tried > current:
            break
        w, improved = w - t * step, current - tried
        current = tried
        if improved < TOLERANCE:
            break
    weights: F64 = (w / scale).astype(np.float64)
    return weights


def cross_fitted(found: Examples, folds: Sequence[int], predictions: int, k: int) -> float:
    """HR@k + MRR@k of a fitted order on predictions it did not learn from: the examples
    (one per prediction whose click is among its answers; ``predictions`` counts the others
    too, as misses) fall in two ``folds`` (0 or 1, one per example), and each fold is ordered
    by the weights ``fit`` finds on the other (the served order where the other has none). A
    fit scored on its own examples is flattered, the more the more weights it has, so a
    choice between parameters each with its own order fitted needs this estimate."""
    fold = np.asarray(folds, np.int64)
    total = 0.0
    for part in (0, 1):
        learn = np.flatnonzero(fold != part).tolist()
        weights = fit(Examples([found.rows[n] for n in learn],
                               [found.targets[n] for n in learn],
                               None if found.sessions is None else
                               [found.sessions[n] for n in learn]))
        for n in np.flatnonzero(fold == part).tolist():
            rows, target = found.rows[n], found.targets[n]
            if weights is None:
                rank = target
            else:
                values = with_pairs(rows) @ weights
                # ties stay in the served order, as the order's kernel keeps them
                rank = int(np.count_nonzero(values > values[target])
                           + np.count_nonzero(values[:target] == values[target]))
            if rank < k:
                total += 1.0 + 1.0 / (rank + 1)
    return total / max(predictions, 1)


def with_weights(params: Params, weights: F64) -> Params:
    """``params`` with the learned order's ``weights`` (rounded to 6 decimals, as a record
    keeps them readable)."""
    return dataclasses.replace(params, **cast(dict[str, Any], {
        name: round(float(w), 6) for name, w in zip(reorder.WEIGHTS, weights, strict=True)}))
