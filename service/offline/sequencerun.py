"""Sequence model runs on the live state (``sessionrec sequence --apply``, which the workers
start every ``--sequence-refresh`` seconds while sessions arrive): the sessions read from
Redis, the model trained (``sequencefit``) off the event loop, stored whole for the serve
processes to follow. Also the tuning run's own model, trained only on what preceded its
holdout.

What a run learns from is public traffic, so it is read by arrival window (the server's
clock, never the events' timestamps), newest first, drawn at random within each window, and
no window gives more than a ``WINDOW_SHARE``-th of what the run learns from (``share_cap``).
A burst one client sends within an hour is at most that share, however many sessions and
clicks it holds; honest windows before and after it keep the rest.

Offline tool: the serving path never imports it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

import numpy as np

from service.core.layout import ENTRY_BYTES, HISTORY_DTYPE, entries_of
from service.core.modelparams import HOLDOUT_WINDOWS
from service.core.sequence import U64, SequenceModel
from service.offline import sequencefit
from service.store import tuning
from service.store.state import Store

MOST_PREDICTIONS = 1_000_000
"""Next-click examples a fresh run learns from at most: its time and memory grow with them."""

REFRESH_PREDICTIONS = 250_000
"""The same for a run that resumes the stored model: one pass over the newest sessions, read
as a fresh run reads them (so that no hour weighs more in an update than in a fresh model)."""

TUNING_PREDICTIONS = 500_000
"""The same for a tuning run's own model, trained afresh inside the run's time."""

WINDOW_SHARE = HOLDOUT_WINDOWS
"""No arrival window gives more than 1 / this of a run's predictions (1 / the number of
windows read, while fewer than this many hold sessions)."""

FIRST_EPOCHS = 3
"""Passes over the sessions of a model trained afresh; one resumes a stored model."""

CHUNK = 1000


def share_cap(counts: Sequence[int], share: int = WINDOW_SHARE, most: int | None = None
              ) -> int:
    """The most predictions any one window may give so that none gives more than
    ``1 / share`` of the total each gives under it (``1 / len(counts)`` when fewer than
    ``share`` windows hold any: then at most the smallest's), and the total stays within
    ``most``: the largest ``c`` with ``share * c <= sum(min(n, c))`` (a water level; the sum
    is concave in ``c``, so the levels that satisfy it are an interval from 0)."""
    held = sorted((n for n in counts if n > 0), reverse=True)
    if not held:
        return 0
    share = min(share, len(held))
    low, high = 0, held[0]
    while low < high:  # the largest level that satisfies both bounds
        level = (low + high + 1) // 2
        total = sum(min(n, level) for n in held)
        if share * level <= total and (most is None or total <= most):
            low = level
        else:
            high = level - 1
    return low


async def sessions(store: Store, *, most: int, before: int | None = None, seed: int = 0
                   ) -> tuple[list[U64], float]:
    """The item sequences (oldest first) of the newest sessions, by arrival window newest
    first, each window's in a random order, read until they hold ``most`` predictions at
    ``most / WINDOW_SHARE`` a window; then each window keeps its sessions up to the
    ``share_cap`` level (a session that does not fit is skipped), so that no window gives
    more than its share of the run. With ``before`` (a time key), only each session's events
    older than it count. And the newest arrival read (ms)."""
    per_window = -(-most // WINDOW_SHARE)
    windows: list[list[U64]] = []
    held, newest = 0, 0.0
    async for window, low, high in tuning.arrival_windows(store.redis, store.keys):
        arrived = await tuning.arrived_in(store.redis, store.keys, low, high)
        newest = max([newest] + [ms for _, ms in arrived])
        order = np.random.default_rng([seed, window]).permutation(len(arrived))
        read: list[U64] = []
        taken = 0
        for at in range(0, len(order), CHUNK):
            chunk = np.array([int.from_bytes(arrived[n][0], "little")
                              for n in order[at:at + CHUNK].tolist()], np.uint64)
            for blob in await store.reads.histories(chunk):
                items = _items(blob, before)
                if items is not None and taken + len(items) - 1 <= per_window:
                    read.append(items)
                    taken += len(items) - 1
            if taken >= per_window:
                break
        windows.append(read)
        held += taken
        if held >= most:
            break
        await asyncio.sleep(0)
    level = share_cap([sum(len(s) - 1 for s in read) for read in windows], most=most)
    found: list[U64] = []
    for read in windows:
        taken = 0
        for items in read:
            if taken + len(items) - 1 <= level:
                found.append(items)
                taken += len(items) - 1
    return found, newest


def _items(blob: bytes | None, before: int | None) -> U64 | None:
    """A history's items in time order (only its events older than ``before``, if given);
    None when fewer than two: no prediction."""
    if not blob or len(blob) < 2 * ENTRY_BYTES:
        return None
    entries = entries_of(blob, HISTORY_DTYPE)
    if before is not None:
        entries = entries[entries["t"] < before]
    if len(entries) < 2:
        return None
    return entries[np.argsort(entries["t"], kind="stable")]["i"].astype(np.uint64)


async def fit_live(store: Store, run_id: str, say: Callable[[str], None] = lambda _: None
                   ) -> dict[str, object]:
    """One run: the stored model resumed for one pass over the newest sessions, or a model
    trained afresh over more of them; stored. What the run says of the model (its public
    ``facts``)."""
    started = time.time()
    previous, sums = await store.sequence.training_state()
    seed = int(started)
    most = REFRESH_PREDICTIONS if previous is not None else MOST_PREDICTIONS
    found_sessions, newest = await sessions(store, most=most, seed=seed)
    found = sequencefit.examples(found_sessions)
    facts: dict[str, object] = {"id": run_id, "started_at": started,
                                "sessions": len(found_sessions), "predictions": len(found)}
    if not len(found):
        say(f"sequence run {run_id}: no sessions of two events or more")
        return {**facts, "stored": False}
    epochs = 1 if previous is not None else FIRST_EPOCHS
    trainer = await asyncio.to_thread(sequencefit.train, found, previous, sums, epochs, seed)
    facts.update({"trained_at": time.time(), "seconds": round(time.time() - started, 1),
                  "epochs": epochs, "resumed": previous is not None,
                  "items": len(trainer.items)})
    version = await store.sequence.save(trainer.model(facts), trainer.sums, newest)
    say(f"sequence run {run_id}: version {version}, {facts}")
    return {**facts, "stored": True, "version": version}


async def fit_before(store: Store, before: int, seed: int = 0) -> SequenceModel | None:
    """A model trained afresh on the events older than ``before`` (a time key) of the newest
    sessions: a tuning run's, which its holdout sessions that started at ``before`` or later
    read (none of their events, nor any later one, is in it). None when they hold no
    prediction."""
    found_sessions, _ = await sessions(store, most=TUNING_PREDICTIONS, before=before, seed=seed)
    found = sequencefit.examples(found_sessions)
    if not len(found):
        return None
    trainer = await asyncio.to_thread(sequencefit.train, found, None, None, FIRST_EPOCHS, seed)
    return trainer.model({"sessions": len(found_sessions), "predictions": len(found)})
