"""The feedback loop's shared state in Redis (README, "Feedback and experiments"; docs/FEEDBACK.md):
the key recommendation ids are signed with, the records of what answers listed, the running
experiment and every one started with its end, and the counts a report reads.

Counts of events (impressions, attributed clicks, add-to-carts, purchases) are the workers':
each batch's commit checks them against the answers' records and adds them to its partition's
counters with the watermark, so they are exact (a redelivered event counts once) and bounded by
what the answers listed (``core/feedback.py``). Answers and sessions are the serve processes':
each tallies its own and adds them every second (``Tally``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, cast

import redis.asyncio as aioredis

from service.core.feedback import (
    COUNTED,
    FEEDBACK_WINDOW,
    Experiment,
    answer_record,
    answers_field,
    counter_field,
    hour_of,
    new_key,
    placement_field,
)
from service.core.layout import partition_of, session_hash
from service.store.keyspace import Keys
from service.store.scripts import Scripts

if TYPE_CHECKING:
    from service.store.backends import Backend

RECORD_OVERHEAD = 128
"""Bytes Redis spends on an answer record beyond its value (key, entry, expiry; MEMORY USAGE
says a little over 100)."""


def record_charge(record: bytes) -> int:
    """What the budget charges a record: its length rounded up as the allocator does (an
    eighth more at most), plus the overhead."""
    return len(record) + len(record) // 8 + RECORD_OVERHEAD

UNLIMITED = 1 << 62

BUDGET_HOURS = FEEDBACK_WINDOW // 3600 + 1
"""Hours of answer records Redis holds at most (the window, and the hour under way): each hour
may take this share of the budget."""


class ExperimentConflict(Exception):
    """Another experiment runs (one at a time)."""

    def __init__(self, running: Experiment) -> None:
        super().__init__(running.name)
        self.running = running


PendingAnswer = tuple[str, str, bytes, int, int, "asyncio.Future[int]"]
"""An answer waiting for the next flush: its record's key, the client's counter, the record,
its charge, the client's share, and the future its request awaits."""


class Feedback:
    def __init__(self, client: aioredis.Redis, scripts: Scripts, keys: Keys,
                 partitions: int, backend: Backend | None = None, budget_mb: int = 0,
                 client_answers: int = 0) -> None:
        self.client = client
        self.scripts = scripts
        self.keys = keys
        self.partitions = partitions
        self.backend = backend
        """The hot path's transport, for the answers' records (serve processes only)."""
        self.hour_budget = budget_mb * (1 << 20) // (partitions * BUDGET_HOURS)
        """Bytes of answer records one partition may take in one hour."""
        self.client_share = -(-client_answers // partitions)
        self._pending: dict[tuple[int, int], list[PendingAnswer]] = {}
        self._flush_due = False
        self._sending: set[asyncio.Future[None]] = set()
        """Answers one client address may have recorded per partition and hour."""

    async def record_answer(self, session_id: str, nonce: bytes, item_hashes: bytes,
                            issued: float, client: str) -> bool:
        """Record what an answer given to ``session_id`` (at ``issued``, for the client address
        ``client``; empty: a client with no share to take) listed (``item_hashes``, 8 bytes
        each), for its feedback to be counted against. False when the client's share or the
        partition's budget of this hour is spent: then its feedback counts nowhere.

        The answers of one turn of the event loop go to Redis together, one script call per
        partition and hour (a call per answer cost the request path a round trip each); each
        request still waits for its own record, so the session's events that may follow at
        once find it."""
        assert self.backend is not None, "answers are recorded by serve processes"
        session = session_hash(session_id)
        record = answer_record(item_hashes)
        hour = hour_of(issued)
        p = partition_of(session, self.partitions)
        recorded: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.setdefault((p, hour), []).append(
            (self.keys.answer(p, nonce), self.keys.client_answers(p, hour, client), record,
             record_charge(record), self.client_share if client else UNLIMITED, recorded))
        if not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)
        return await recorded == 1

    def _flush(self) -> None:
        """Send the gathered answers, one call per partition and hour."""
        self._flush_due = False
        pending, self._pending = self._pending, {}
        for (p, hour), answers in pending.items():
            task = asyncio.ensure_future(self._send(p, hour, answers))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, p: int, hour: int, answers: list[PendingAnswer]) -> None:
        assert self.backend is not None
        keys = [self.keys.answer_budget(p, hour), self.keys.answers_flooded(p, hour)]
        args: list[Any] = [FEEDBACK_WINDOW + 3600, self.hour_budget, 7200]
        for record_key, client_key, record, charge, share, _ in answers:
            keys += [record_key, client_key]
            args += [record, charge, share]
        try:
            replies = await self.backend.run_script(self.scripts.answer, keys, args)
        except BaseException as exc:  # each request answers for its own record
            for *_, waiting in answers:
                if not waiting.done():
                    waiting.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for (*_, waiting), reply in zip(answers, replies, strict=True):
            if not waiting.done():
                waiting.set_result(int(reply))

    async def ends(self, serials: Iterable[int]) -> dict[int, float | None]:
        """Each experiment's end (Unix seconds), None while it runs; serials Redis does not
        know are left out."""
        wanted = sorted(set(serials))
        if not wanted:
            return {}
        replies = await self.client.hmget(self.keys.experiment_ends(), [str(s) for s in wanted])
        return {serial: (None if int(raw) == 0 else int(raw) / 1000)
                for serial, raw in zip(wanted, replies, strict=True) if raw is not None}

    async def signing_key(self) -> bytes:
        """The key recommendation ids are signed with, made now if Redis has none (first
        use, or a Redis that came back empty)."""
        key = await self.client.get(self.keys.feedback_key())
        if key is None:
            await self.client.set(self.keys.feedback_key(), new_key(), nx=True)
            key = await self.client.get(self.keys.feedback_key())
        return cast(bytes, key)

    async def current(self) -> tuple[bytes, Experiment | None]:
        """The signing key (made now if Redis has none: first use, or a Redis that came back
        empty) and the running experiment; one round trip when the key exists."""
        key, running = await self.client.mget([self.keys.feedback_key(), self.keys.experiment()])
        if key is None:
            key = await self.signing_key()
        return cast(bytes, key), Experiment.from_json(json.loads(running)) if running else None

    async def get(self, name: str) -> Experiment | None:
        raw = await self.client.hget(self.keys.experiments(), name)
        return Experiment.from_json(json.loads(raw)) if raw else None

    async def start(self, experiment: Experiment) -> Experiment:
        """Start ``experiment`` (its serial is taken here); the running one when it is the
        same experiment sent again; ExperimentConflict when another runs."""
        running = (await self.current())[1]
        if running is not None:
            if _same(running, experiment):
                return running
            raise ExperimentConflict(running)
        serial = int(await self.client.incr(self.keys.experiment_serial()))
        started = dataclasses.replace(experiment, serial=serial, ended_at=None)
        done, current = await self.scripts.experiment(
            self.keys.experiment(), self.keys.experiments(), self.keys.experiment_ends(),
            "start", started.name, json.dumps(started.to_json()), serial)
        if not done:  # another start got in between
            other = Experiment.from_json(json.loads(current))
            if _same(other, experiment):
                return other
            raise ExperimentConflict(other)
        return started

    async def end(self, name: str, now: float) -> Experiment | None:
        """End the running experiment ``name``: the ended record, or None when ``name`` was
        not running (an ended one stays, for its report)."""
        running = (await self.current())[1]
        if running is None or running.name != name:
            return None
        ended = dataclasses.replace(running, ended_at=now)
        done, _ = await self.scripts.experiment(
            self.keys.experiment(), self.keys.experiments(), self.keys.experiment_ends(), "end",
            name, json.dumps(ended.to_json()), running.serial, int(now * 1000))
        return ended if done else None

    async def counts(self, experiment: Experiment) -> list[dict[str, int]]:
        """Per variant: answers and each kind of attributed event, summed over partitions."""
        n = len(experiment.variants)
        totals = await self._summed(
            [[counter_field(experiment.serial, v, kind) for kind in COUNTED] for v in range(n)],
            self.keys.experiment_answers(),
            [answers_field(experiment.serial, v) for v in range(n)])
        # PFCOUNT one key at a time: redis-py's cluster pipeline refuses it
        for v, counted in enumerate(totals):
            counted["sessions"] = int(await self.client.pfcount(
                self.keys.experiment_sessions(experiment.serial, v)))
        return totals

    async def placement_counts(self, codes: Sequence[bytes]) -> list[dict[str, int]]:
        """Per placement (by code): answers and each kind of attributed event, summed over
        partitions."""
        if not codes:
            return []
        return await self._summed(
            [[placement_field(code, kind) for kind in COUNTED] for code in codes],
            self.keys.placement_answers(), [placement_field(code, "answers") for code in codes])

    async def _summed(self, fields: list[list[str]], answers: str, answer_fields: list[str]
                      ) -> list[dict[str, int]]:
        """For each group of counter fields (one per kind of ``COUNTED``), the counts summed
        over the partitions' counters, and its answers (``answer_fields`` of ``answers``)."""
        flat = [field for group in fields for field in group]
        async with self.client.pipeline(transaction=False) as pipe:
            for p in range(self.partitions):
                pipe.hmget(self.keys.counters(p), flat)
            pipe.hmget(answers, answer_fields)
            replies: list[Any] = await pipe.execute()
        totals: list[dict[str, int]] = [dict.fromkeys((*COUNTED, "answers"), 0)
                                        for _ in fields]
        for reply in replies[:self.partitions]:
            for at, value in enumerate(reply):
                if value is not None:
                    totals[at // len(COUNTED)][COUNTED[at % len(COUNTED)]] += int(value)
        for n, value in enumerate(replies[self.partitions]):
            totals[n]["answers"] = int(value or 0)
        return totals

    async def add_placement_answers(self, answers: Counter[bytes]) -> None:
        """A serve process' answers per placement (by code) since its last call."""
        if answers:
            async with self.client.pipeline(transaction=False) as pipe:
                for code, n in answers.items():
                    pipe.hincrby(self.keys.placement_answers(), placement_field(code, "answers"),
                                 n)
                await pipe.execute()

    async def add(self, answers: Counter[tuple[int, int]],
                  sessions: dict[tuple[int, int], set[str]]) -> None:
        """A serve process' tally of answers and sessions since its last call."""
        if not answers and not sessions:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for (serial, variant), n in answers.items():
                pipe.hincrby(self.keys.experiment_answers(), answers_field(serial, variant), n)
            for (serial, variant), ids in sessions.items():
                if ids:
                    pipe.pfadd(self.keys.experiment_sessions(serial, variant), *ids)
            await pipe.execute()


def _same(running: Experiment, sent: Experiment) -> bool:
    """Whether ``sent`` is the running experiment sent again (a no-op)."""
    return (running.name, running.variants, running.placement) == \
        (sent.name, sent.variants, sent.placement)


class Tally:
    """A serve process' answers and sessions per (experiment serial, variant) since its last
    flush. Sessions are kept up to ``max_sessions`` per flush (a flood of invented session ids
    must not grow a process: the count is a HyperLogLog's estimate anyway)."""

    def __init__(self, max_sessions: int = 100_000) -> None:
        self.max_sessions = max_sessions
        self.answers: Counter[tuple[int, int]] = Counter()
        self.sessions: dict[tuple[int, int], set[str]] = {}
        self._held = 0

    def count(self, serial: int, variant: int, session_id: str) -> None:
        slot = (serial, variant)
        self.answers[slot] += 1
        ids = self.sessions.get(slot)
        if ids is None:
            ids = self.sessions[slot] = set()
        if self._held < self.max_sessions and session_id not in ids:
            ids.add(session_id)
            self._held += 1

    def take(self) -> tuple[Counter[tuple[int, int]], dict[tuple[int, int], set[str]]]:
        answers, sessions = self.answers, self.sessions
        self.answers, self.sessions, self._held = Counter(), {}, 0
        return answers, sessions

    def give_back(self, answers: Counter[tuple[int, int]],
                  sessions: dict[tuple[int, int], set[str]]) -> None:
        """A flush that failed (Redis away): counted again at the next one."""
        self.answers.update(answers)
        for slot, ids in sessions.items():
            self.sessions.setdefault(slot, set()).update(ids)

