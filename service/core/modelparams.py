"""The scoring parameters as shared, versioned state, free of I/O (README, "The model tunes
itself").

Every serve process starts from its flags and environment (``Params.from_settings``). A
``ModelRecord`` in Redis holds the values set since (by hand with ``PUT /admin/model``, later
by tuning) and which of them are pinned; each process overlays the record's values on its own
starting ones and follows the record's version. A record without a value for a parameter
leaves each process its flag, so a record never has to be written for a default to hold.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from service.core.parameters import PARAMETERS, Value
from service.core.scoring import Params

assert set(PARAMETERS) == {f.name for f in dataclasses.fields(Params)}


@dataclass(frozen=True, slots=True)
class ModelRecord:
    """The shared record: its version (0: never written), the values set, the pinned names
    (tuning never changes those) and when tuning last promoted a candidate."""

    version: int = 0
    values: Mapping[str, Value] = dataclasses.field(default_factory=dict)
    pinned: tuple[str, ...] = ()
    tuned_at: float | None = None
    last_run: str | None = None  # JSON: the last tuning run's record

    def params(self, base: Params) -> Params:
        """``base`` (a process' flags) with the record's values."""
        known = {name: value for name, value in self.values.items() if name in PARAMETERS}
        return dataclasses.replace(base, **cast(dict[str, Any], known)) if known else base

    def updated(self, values: Mapping[str, Value], pin: bool | None) -> ModelRecord:
        """The record after a hand-made change: ``values`` set; with ``pin`` true they are
        pinned, false unpinned, None their pins unchanged. The version is the writer's."""
        pinned = set(self.pinned)
        if pin is True:
            pinned |= set(values)
        elif pin is False:
            pinned -= set(values)
        return dataclasses.replace(self, values={**self.values, **values},
                                   pinned=tuple(sorted(pinned)))

    def fields(self) -> dict[str, str]:
        """The record as its Redis hash's fields (the version is the script's)."""
        return {"values": json.dumps(dict(sorted(self.values.items()))),
                "pinned": json.dumps(list(self.pinned)),
                "tuned_at": "" if self.tuned_at is None else repr(self.tuned_at),
                "last_run": self.last_run or ""}

    @classmethod
    def from_fields(cls, fields: Mapping[bytes, bytes]) -> ModelRecord:
        """The record from its hash (empty: never written). Values a process does not know
        (written by a newer version) or cannot accept are left out, not fatal."""
        if not fields:
            return cls()
        values: dict[str, Value] = {}
        for name, value in json.loads(fields.get(b"values", b"{}")).items():
            checked = PARAMETERS[name].check(value) if name in PARAMETERS else None
            if checked is not None and not isinstance(checked, str):
                values[name] = checked
        tuned = fields.get(b"tuned_at", b"")
        last_run = fields.get(b"last_run", b"")
        return cls(int(fields.get(b"version", b"0")), values,
                   tuple(json.loads(fields.get(b"pinned", b"[]"))),
                   float(tuned) if tuned else None,
                   last_run.decode() if last_run else None)


ARRIVAL_WINDOW = 3600
"""Seconds of arrival (the server's clock: when a session's first event was accepted) per
window: the grain at which self-tuning tells one client's burst from a shop's traffic. Event
timestamps are the client's and never order sessions for tuning."""

HOLDOUT_WINDOWS = 24
"""A run holds out at most a 24th of its sessions and of its predictions from any one arrival
window: its holdout reaches back at least a day of a busy shop's traffic (more of a quiet
one's), and a burst that one client sends within a window or two is a small part of it."""

HOLDOUT_SLICES = 4
"""The holdout's windows, whole and in arrival order, make this many slices of about equal
predictions, and a promotion needs the gain in every one of them: a burst lies in one or two,
so the rest of the holdout, traffic no burst wrote, must show the gain as well. An automatic
run also needs its new sessions from at least this many windows (``tuning_due``)."""


def window_of(arrival_ms: float) -> int:
    """The arrival window of a time in ms."""
    return int(arrival_ms // (ARRIVAL_WINDOW * 1000))


def tuning_target(last_run: Mapping[str, Any] | None, min_sessions: int) -> int:
    """New sessions the next automatic run waits for: ``min_sessions``, and a tenth more than
    the last run saw (a shop with a thousand sessions a day tunes about every half day, one
    with a million every few hours, less often as its learned state grows)."""
    seen = int(last_run.get("sessions_learned") or 0) if last_run is not None else 0
    return max(min_sessions, seen // 10)


def tuning_may_be_due(sessions_learned: int, last_run: Mapping[str, Any] | None, now: float,
                      *, min_sessions: int, min_interval: float) -> bool:
    """What ``tuning_due`` needs, from two numbers a worker reads at once: ``min_interval``
    seconds since the last run ended, and ``tuning_target`` new sessions learned (``meta``'s
    count) since it started, whenever they arrived."""
    if last_run is not None:
        ended = last_run.get("finished_at") or last_run.get("started_at") or 0.0
        if now - float(ended) < min_interval:
            return False
    seen = int(last_run.get("sessions_learned") or 0) if last_run is not None else 0
    return sessions_learned - seen >= tuning_target(last_run, min_sessions)


def tuning_due(arrived: Mapping[int, int], last_run: Mapping[str, Any] | None, now: float, *,
               min_sessions: int, min_interval: float) -> bool:
    """Whether an automatic run should start: ``min_interval`` seconds since the last run
    ended, and ``tuning_target`` sessions arrived since it started, counting at most a
    ``HOLDOUT_SLICES``-th of the target per arrival window. ``arrived``: sessions per window
    (``window_of``) that arrived since the last run started (all, before the first run). A
    burst, however large, counts for one or two windows: it alone never starts a run."""
    if last_run is not None:
        ended = last_run.get("finished_at") or last_run.get("started_at") or 0.0
        if now - float(ended) < min_interval:
            return False
    target = tuning_target(last_run, min_sessions)
    per_window = -(-target // HOLDOUT_SLICES)
    return sum(min(n, per_window) for n in arrived.values()) >= target


def latest_run(finished: Mapping[str, Any] | None, started: Mapping[str, Any] | None
               ) -> Mapping[str, Any] | None:
    """The run the next automatic one counts from: the last one started, when it is not the
    last one finished (a run in progress, or one killed midway: it still delays the next)."""
    if started is None:
        return finished
    if finished is None or (started.get("id") != finished.get("id")
                            and float(started["started_at"]) > float(finished["started_at"])):
        return started
    return finished


MODEL_POLL = 1.0
"""Seconds between a serve process' reads of the record's version (one HGET)."""
