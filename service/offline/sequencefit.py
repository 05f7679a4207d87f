"""Training the sequence model (``service/core/sequence.py``) in numpy, free of I/O: the
next-click examples of a set of sessions, and passes of a sampled softmax over them.

Each example is a session's prefix (its most recent distinct items, newest first, as a
request's session holds them) and the item clicked next. A full softmax over every item costs
a matrix product per example as wide as the catalogue; the sampled one scores the next item
against ``NEGATIVES`` items drawn for the whole batch by popularity (count^0.75), each score
less the log of its chance of being drawn, which keeps it an estimate of the full softmax's
gradient. The optimiser is Adagrad, row by row: an item's step shrinks with the updates it
has had, so a rare item learns fast, a popular one settles, and a model trained further on
new sessions (``Trainer.resume``) keeps what it knew.

Offline tool: the serving path never imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.core.sequence import DIMENSIONS, F32, I64, U64, WINDOW, SequenceModel

NEGATIVES = 2048
BATCH = 256
LEARNING_RATE = 0.05
L2 = 1e-6
MOST_ITEMS = 100_000
"""Items the model keeps (the most clicked of a run's sessions, then the ones it knew): its
size in every serve process is bounded by it."""

FLOOR = np.float32(1e-6)  # Adagrad's starting sums: a first step of at most lr / sqrt(FLOOR)


@dataclass(frozen=True)
class Examples:
    """Next-click examples: each row of ``windows`` a prefix's items (as hashes, newest first,
    0 past its length), ``targets`` the item that followed."""

    windows: U64
    targets: U64

    def __len__(self) -> int:
        return len(self.targets)


def examples(sessions: Sequence[U64]) -> Examples:
    """Every prefix of every session (items oldest first, repeats kept) with the item after
    it. A prefix holds each item once, at its latest place (a request names each item once,
    with its latest time)."""
    windows: list[list[int]] = []
    targets: list[int] = []
    for session in sessions:
        items = np.asarray(session, np.uint64).tolist()
        for t in range(1, len(items)):
            window: list[int] = []
            for item in reversed(items[:t]):
                if item not in window:
                    window.append(item)
                    if len(window) == WINDOW:
                        break
            windows.append(window + [0] * (WINDOW - len(window)))
            targets.append(items[t])
    if not targets:
        return Examples(np.zeros((0, WINDOW), np.uint64), np.zeros(0, np.uint64))
    return Examples(np.array(windows, np.uint64), np.array(targets, np.uint64))


def vocabulary(found: Examples, known: U64, most: int = MOST_ITEMS) -> U64:
    """The items a model trained on ``found`` keeps, sorted: those clicked in it, the most
    clicked first, then those the model knew (``known``), up to ``most``."""
    clicked, counts = np.unique(np.concatenate((found.windows.ravel(), found.targets)),
                                return_counts=True)
    keep = clicked != 0
    clicked, counts = clicked[keep], counts[keep]
    ranked = clicked[np.argsort(-counts, kind="stable")]
    extra = np.setdiff1d(np.asarray(known, np.uint64), ranked)
    return np.sort(np.concatenate((ranked, extra))[:most]).astype(np.uint64)


class Trainer:
    """A model's weights and Adagrad sums, trained in place."""

    def __init__(self, model: SequenceModel, sums: F32) -> None:
        self.items = model.items
        self.inputs, self.last = model.inputs.copy(), model.last.copy()
        self.outputs, self.bias = model.outputs.copy(), model.bias.copy()
        self.positions = model.positions.copy()
        self.sums = sums.copy()  # (4, rows): inputs, last, outputs, bias
        self.position_sums = np.full(len(self.positions), FLOOR, np.float32)

    @classmethod
    def resume(cls, items: U64, previous: SequenceModel | None, sums: F32 | None,
               seed: int = 0) -> Trainer:
        """A trainer over ``items``: rows of items ``previous`` knew (and their sums) carried
        over, the others new (small random vectors, zero bias)."""
        rng = np.random.default_rng(seed)
        rows = len(items) + 1
        scale = 1.0 / np.sqrt(DIMENSIONS)

        def fresh() -> F32:
            out: F32 = (rng.standard_normal((rows, DIMENSIONS)) * scale).astype(np.float32)
            out[0] = 0.0
            return out

        inputs, last, outputs = fresh(), fresh(), fresh()
        bias = np.zeros(rows, np.float32)
        positions = (1.0 / (1.0 + np.arange(WINDOW))).astype(np.float32)
        new_sums = np.full((4, rows), FLOOR, np.float32)
        if previous is not None and previous.size:
            old = previous.rows_of(items)
            kept = np.flatnonzero(old) + 1
            for mine, theirs in ((inputs, previous.inputs), (last, previous.last),
                                 (outputs, previous.outputs)):
                mine[kept] = theirs[old[kept - 1]]
            bias[kept] = previous.bias[old[kept - 1]]
            positions = previous.positions.copy()
            if sums is not None and sums.shape == (4, previous.size + 1):
                new_sums[:, kept] = sums[:, old[kept - 1]]
        model = SequenceModel(np.asarray(items, np.uint64), inputs, last, outputs, bias,
                              positions)
        return cls(model, new_sums)

    def model(self, facts: dict[str, Any]) -> SequenceModel:
        return SequenceModel(self.items, self.inputs, self.last, self.outputs, self.bias,
                             self.positions, facts)

    def rows_of(self, hashes: U64) -> I64:
        return self.model({}).rows_of(hashes)

    def epoch(self, found: Examples, rng: np.random.Generator) -> float:
        """One pass over ``found`` in a random order; the mean loss. Examples whose next item
        the model does not keep teach nothing and are left out."""
        targets = self.rows_of(found.targets)
        keep = np.flatnonzero(targets)
        if not len(keep):
            return 0.0
        windows = self.rows_of(found.windows[keep].ravel()).reshape(len(keep), -1)
        targets = targets[keep]
        counts = np.bincount(targets, minlength=len(self.bias)).astype(np.float64) + 1.0
        counts[0] = 0.0
        chance = counts ** 0.75
        chance /= chance.sum()
        log_drawn = np.log(np.maximum(chance * NEGATIVES, 1e-30)).astype(np.float32)
        cumulative = np.cumsum(chance)
        loss = 0.0
        order = rng.permutation(len(targets))
        for start in range(0, len(order), BATCH):
            at = order[start:start + BATCH]
            drawn = np.minimum(np.searchsorted(cumulative, rng.random(NEGATIVES) *
                                               cumulative[-1]), len(chance) - 1)
            loss += self._step(windows[at], targets[at], drawn, log_drawn)
        return loss / len(targets)

    def _step(self, window: I64, target: I64, drawn: I64, log_drawn: F32) -> float:
        present = (window > 0).astype(np.float32)
        vectors = self.inputs[window]
        state = np.einsum("bw,bwd->bd", self.positions[None, :] * present, vectors) \
            + self.last[window[:, 0]]
        wanted, others = self.outputs[target], self.outputs[drawn]
        right = (state * wanted).sum(1) + self.bias[target] - log_drawn[target]
        wrong = state @ others.T + self.bias[drawn] - log_drawn[drawn]
        wrong[drawn[None, :] == target[:, None]] = -np.inf  # a draw of the answer itself
        logits = np.concatenate((right[:, None], wrong), axis=1)
        logits -= logits.max(axis=1, keepdims=True)
        odds = np.exp(logits)
        odds /= odds.sum(axis=1, keepdims=True)
        loss = float(-np.log(np.maximum(odds[:, 0], 1e-12)).sum())
        odds[:, 0] -= 1.0
        odds /= len(target)
        g_right, g_wrong = odds[:, 0], odds[:, 1:]
        g_state = g_right[:, None] * wanted + g_wrong @ others
        self._rows(2, self.outputs, np.concatenate((target, drawn)),
                   np.concatenate((g_right[:, None] * state, g_wrong.T @ state)))
        self._rows(3, self.bias, np.concatenate((target, drawn)),
                   np.concatenate((g_right, g_wrong.sum(0))))
        g_positions = np.einsum("bwd,bd->w", vectors * present[:, :, None], g_state)
        self.position_sums += g_positions * g_positions
        self.positions -= LEARNING_RATE * g_positions / np.sqrt(self.position_sums)
        g_inputs = (self.positions[None, :, None] * present[:, :, None]) * g_state[:, None, :]
        self._rows(0, self.inputs, window.ravel(), g_inputs.reshape(-1, DIMENSIONS))
        self._rows(1, self.last, window[:, 0], g_state)
        self.inputs[0] = 0.0
        self.last[0] = 0.0
        return loss

    def _rows(self, which: int, weights: F32, rows: I64, grads: F32) -> None:
        """Adagrad on the rows ``rows`` (repeats summed), with an L2 pull towards 0."""
        unique, inverse = np.unique(rows, return_inverse=True)
        summed = np.zeros((len(unique), *grads.shape[1:]), np.float32)
        np.add.at(summed, inverse, grads)
        summed += L2 * weights[unique]
        squares = summed * summed
        self.sums[which, unique] += squares.reshape(len(unique), -1).mean(axis=1)
        step = (LEARNING_RATE / np.sqrt(self.sums[which, unique])).astype(np.float32)
        weights[unique] -= step.reshape((-1,) + (1,) * (summed.ndim - 1)) * summed


def train(found: Examples, previous: SequenceModel | None, sums: F32 | None, epochs: int,
          seed: int = 0) -> Trainer:
    """A trainer after ``epochs`` passes over ``found``, resumed from ``previous``."""
    trainer = Trainer.resume(vocabulary(found, previous.items if previous else
                                        np.zeros(0, np.uint64)), previous, sums, seed)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        trainer.epoch(found, rng)
    return trainer
