"""Sequence model runs on the live state (``sessionrec sequence --apply``, which the workers
start every ``--sequence-refresh`` seconds while sessions arrive): the sessions read from
Redis, the model trained (``sequencefit``) off the event loop, stored whole for the serve
processes to follow. Also the tuning run's own model, trained only on what preceded its
holdout.

What a run learns from is public traffic, so it is read the way the holdout reads it: by
arrival window (the server's clock), newest first, each window giving at most a
``WINDOW_SHARE``-th of a run's predictions, drawn at random within it. A burst one client
sends within an hour is at most that share of what the model learns from; honest windows
before and after it keep the rest.

Offline tool: the serving path never imports it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import numpy as np

from service.core.layout import ENTRY_BYTES, HISTORY_DTYPE
from service.core.modelparams import ARRIVAL_WINDOW, HOLDOUT_WINDOWS
from service.core.sequence import U64, SequenceModel
from service.offline import sequencefit
from service.store import tuning
from service.store.state import Store

MOST_PREDICTIONS = 1_000_000
"""Next-click examples a run learns from at most: its time and memory grow with them."""

TUNING_PREDICTIONS = 500_000
"""The same for a tuning run's own model, trained afresh inside the run's time."""

WINDOW_SHARE = HOLDOUT_WINDOWS
"""One arrival window gives at most this fraction (1 / it) of a run's predictions."""

FIRST_EPOCHS = 3
"""Passes over the sessions of a model trained afresh; one resumes a stored model over the
sessions that arrived since."""

CHUNK = 1000


async def sessions(store: Store, *, most: int, since_ms: float | None = None,
                   before: int | None = None, seed: int = 0) -> tuple[list[U64], float]:
    """The item sequences (oldest first) of the sessions that arrived after ``since_ms``,
    newest windows first, until they hold ``most`` predictions; with ``before`` (a time key),
    only each session's events older than it. And the newest arrival read (ms)."""
    per_window = -(-most // WINDOW_SHARE)
    found: list[U64] = []
    held, newest = 0, 0.0
    async for window, low, high in tuning.arrival_windows(store.redis, store.keys, since_ms):
        arrived = await tuning.arrived_in(store.redis, store.keys, low, high)
        newest = max([newest] + [ms for _, ms in arrived])
        order = np.random.default_rng([seed, window]).permutation(len(arrived))
        taken = 0
        for at in range(0, len(order), CHUNK):
            chunk = np.array([int.from_bytes(arrived[n][0], "little")
                              for n in order[at:at + CHUNK].tolist()], np.uint64)
            for blob in await store.reads.histories(chunk):
                if not blob or len(blob) < 2 * ENTRY_BYTES:
                    continue
                entries = np.frombuffer(blob[:len(blob) - len(blob) % ENTRY_BYTES],
                                        HISTORY_DTYPE)
                if before is not None:
                    entries = entries[entries["t"] < before]
                if len(entries) < 2:
                    continue
                entries = entries[np.argsort(entries["t"], kind="stable")]
                found.append(entries["i"].astype(np.uint64))
                taken += len(entries) - 1
                held += len(entries) - 1
                if held >= most or taken >= per_window:
                    break
            if held >= most or taken >= per_window:
                break
        if held >= most:
            break
        await asyncio.sleep(0)
    return found, newest


async def fit_live(store: Store, run_id: str, say: Callable[[str], None] = lambda _: None
                   ) -> dict[str, object]:
    """One run: the stored model resumed over the sessions that arrived since its run (the
    window before included: sessions still clicking), or a model trained afresh over the
    newest sessions; stored. What the run says of the model (its ``facts``)."""
    started = time.time()
    previous, sums = await store.sequence.training_state()
    learned = previous.facts.get("arrived_until") if previous is not None else None
    until = float(learned) if isinstance(learned, int | float) else None
    since_ms = until - ARRIVAL_WINDOW * 1000 if until is not None else None
    seed = int(started)
    found_sessions, newest = await sessions(store, most=MOST_PREDICTIONS, since_ms=since_ms,
                                            seed=seed)
    found = sequencefit.examples(found_sessions)
    facts: dict[str, object] = {"id": run_id, "started_at": started,
                                "sessions": len(found_sessions), "predictions": len(found)}
    if not len(found):
        say(f"sequence run {run_id}: no new sessions of two events or more")
        return {**facts, "stored": False}
    epochs = 1 if previous is not None else FIRST_EPOCHS
    trainer = await asyncio.to_thread(sequencefit.train, found, previous, sums, epochs, seed)
    facts.update({"trained_at": time.time(), "seconds": round(time.time() - started, 1),
                  "epochs": epochs, "resumed": previous is not None,
                  "items": len(trainer.items),
                  "arrived_until": max(newest, until or 0.0)})
    version = await store.sequence.save(trainer.model(facts), trainer.sums)
    say(f"sequence run {run_id}: version {version}, {facts}")
    return {**facts, "stored": True, "version": version}


async def fit_before(store: Store, before: int, seed: int = 0) -> SequenceModel | None:
    """A model trained afresh on the events older than ``before`` (a time key) of the newest
    sessions: a tuning run's, which must not see its holdout's sessions nor any later event.
    None when they hold no prediction."""
    found_sessions, _ = await sessions(store, most=TUNING_PREDICTIONS, before=before, seed=seed)
    found = sequencefit.examples(found_sessions)
    if not len(found):
        return None
    trainer = await asyncio.to_thread(sequencefit.train, found, None, None, FIRST_EPOCHS, seed)
    return trainer.model({"sessions": len(found_sessions), "predictions": len(found),
                          "before": before})
