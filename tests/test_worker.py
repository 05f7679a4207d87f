"""Exactly-once: redelivery, crashes, restarts and several workers end in one clean pass' state."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from service.core.layout import partition_of, session_hash
from service.core.model import Event
from service.settings import Settings
from service.store.keyspace import GROUP
from service.store.state import Store, ensure_groups
from tests.helpers import (
    arrivals_of,
    assert_same_state,
    clean_reference,
    drain,
    ingest,
    snapshot,
    stream_arrivals,
    wait_drained,
)
from workers.batch import Batches
from workers.consumer import Conflict, Entry, Worker
from workers.loop import PartitionLoop
from workers.partition import Partition


def click_log(n_events: int, seed: int = 7) -> list[Event]:
    """A generated click log: sessions of 2-8 events over a skewed catalogue."""
    rnd = random.Random(seed)
    events: list[Event] = []
    t = 1_700_000_000.0
    s = 0
    while len(events) < n_events:
        s += 1
        for _ in range(rnd.randint(2, 8)):
            t += rnd.random() * 3
            item = str(int(rnd.paretovariate(1.2) * 10) % 400)
            kind = rnd.choice(["view", "view", "view", "click", "add_to_cart", "purchase"])
            events.append(Event(f"sess-{s}", item, round(t, 3), kind))
    return events[:n_events]


async def test_redelivered_entry_changes_nothing(settings: Settings) -> None:
    await ingest(settings, click_log(300))
    store = Store(settings)
    r: Any = store.redis
    arrived = await stream_arrivals(r, settings)
    await drain(settings)
    before = await snapshot(r, settings.namespace)
    assert arrivals_of(await snapshot(r, settings.namespace, arrival_times=True)) == arrived
    # replay every entry of partition 0 through the commit path as if redelivered
    stream = store.keys.stream(0)
    entries = [Entry(i.decode(), [x for kv in f.items() for x in kv])
               for i, f in await r.xrange(stream)]
    assert entries
    worker = Worker(settings, client=r, worker_id="replayer")
    await worker.process(0, entries)
    await worker.process(0, entries[:1])
    assert_same_state(await snapshot(r, settings.namespace), before)
    # each session's arrival is its first entry's, set once: a redelivery moves none
    assert arrivals_of(await snapshot(r, settings.namespace, arrival_times=True)) == arrived
    assert (await store.stats.read())["events_processed"] == 300
    await store.close()


async def test_a_partition_keeps_its_newest_arrivals_whatever_the_batches(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Trimmed to the newest ``arrivals_kept`` by (arrival, session), batch after batch: the
    same set as keeping them at the end (an arrival only ever moves later)."""
    monkeypatch.setattr("workers.commit.arrivals_kept", lambda partitions: 5)
    small = settings.replace(batch_size=7)
    events = click_log(400, seed=3)
    for start in range(0, 400, 50):  # several arrival times, several batches each
        await ingest(small, events[start:start + 50], batch=10)
        await asyncio.sleep(0.005)
    store = Store(small)
    r: Any = store.redis
    arrived = await stream_arrivals(r, small)
    await drain(small, workers=2)
    kept = arrivals_of(await snapshot(r, small.namespace, arrival_times=True))
    for p in range(small.partitions):
        mine = sorted((t, s) for s, t in arrived.items() if partition_of(s, small.partitions) == p)
        assert {s for s, t in kept.items() if partition_of(s, small.partitions) == p} == \
            {s for _, s in mine[-5:]}
    assert all(kept[s] == arrived[s] for s in kept)
    await store.close()


async def test_two_workers_and_restarts_equal_one_clean_pass(settings: Settings) -> None:
    events = click_log(3000)
    clean = await clean_reference(settings, events)

    await ingest(settings, events[:1000])
    await drain(settings, workers=2)
    await ingest(settings, events[1000:])
    await drain(settings, workers=3)

    store = Store(settings)
    r: Any = store.redis
    assert_same_state(await snapshot(r, settings.namespace),
                      await snapshot(r, clean.namespace))
    stats = await store.stats.read()
    assert stats["events_processed"] == stats["events_accepted"] == 3000
    await store.close()


def spawn_worker(settings: Settings) -> subprocess.Popen[bytes]:
    env = dict(os.environ, SESSIONREC_REDIS_URL=settings.redis_url,
               SESSIONREC_NAMESPACE=settings.namespace,
               SESSIONREC_PARTITIONS=str(settings.partitions), SESSIONREC_LEASE_MS="600",
               SESSIONREC_BATCH_SIZE="50", SESSIONREC_BLOCK_MS="20")
    return subprocess.Popen([sys.executable, "-m", "service.cli", "--log-level", "WARNING",
                             "worker"], env=env)


async def test_sigkill_at_random_moments_loses_and_doubles_nothing(settings: Settings) -> None:
    """Shortened in CI; scripts/crash_test.py runs the long version."""
    events = click_log(6000, seed=11)
    clean = await clean_reference(settings, events)

    await ingest(settings, events)
    store = Store(settings)
    r: Any = store.redis
    arrived = await stream_arrivals(r, settings)
    rnd = random.Random(3)
    kills = 0
    procs = [spawn_worker(settings), spawn_worker(settings)]
    deadline = time.monotonic() + 60
    while (await store.stats.read())["pending"] > 0 and time.monotonic() < deadline:
        await asyncio.sleep(rnd.uniform(0.05, 0.4))
        victim = rnd.randrange(len(procs))
        procs[victim].send_signal(signal.SIGKILL)
        procs[victim].wait()
        kills += 1
        procs[victim] = spawn_worker(settings)
    try:
        stats = await wait_drained(store, timeout=60)
        await asyncio.sleep(2.0)  # let the last respawned worker finish starting up
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        codes = [p.wait(15) for p in procs]
    assert codes == [0, 0]  # graceful shutdown on SIGTERM
    assert kills >= 2
    assert stats["events_processed"] == stats["events_accepted"] == 6000
    state = await snapshot(r, settings.namespace)
    assert sum(":ch:" in key for key in state) > 100  # carts learned, and compared
    assert_same_state(state, await snapshot(r, clean.namespace))
    # and every session's arrival is its first entry's (the clean pass' stream has its own)
    assert arrivals_of(await snapshot(r, settings.namespace, arrival_times=True)) == arrived
    await store.close()


async def test_unreadable_entries_go_to_dead_letters_without_blocking(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    store = Store(settings)
    r: Any = store.redis
    await ensure_groups(store.redis, store.keys)
    home = partition_of(session_hash("s"), settings.partitions)
    elsewhere = (home + 1) % settings.partitions
    stream = store.keys.stream(home)
    await r.xadd(stream, {"session": "s", "item": "a", "ts": "nan"})
    await r.xadd(stream, {"garbage": "yes"})
    await r.xadd(stream, {"session": "s", "item": "b", "ts": "5", "type": "teleport"})
    await r.xadd(stream, {"session": "s", "item": "c", "ts": "6"})
    # a producer that picked the wrong partition: the session's history lives elsewhere
    await r.xadd(store.keys.stream(elsewhere), {"session": "s", "item": "d", "ts": "7"})
    stats = await drain(settings)
    assert stats["events_dead"] == 4 and stats["events_processed"] == 1
    assert stats["pending"] == 0
    dead = await r.xrange(store.keys.dead(home))
    assert len(dead) == 3 and all(b"reason" in fields for _, fields in dead)
    [(_, wrong)] = await r.xrange(store.keys.dead(elsewhere))
    assert f"belongs to partition {home}".encode() in wrong[b"reason"]
    # and the worker says so in its log (issue 27, point 9): which entry, whose partition
    [warning] = [r for r in caplog.records if "belongs to partition" in r.getMessage()]
    message = warning.getMessage()
    assert warning.levelname == "WARNING" and f"belongs to partition {home}" in message
    assert f"partition {elsewhere}: entry {wrong[b'id'].decode()} of session 's'" in message
    await store.close()


async def test_stream_is_trimmed_only_below_what_the_group_acknowledged(
        settings: Settings) -> None:
    store = Store(settings.replace(partitions=1))
    r: Any = store.redis
    s1 = settings.replace(partitions=1)
    await ingest(s1, click_log(100))
    stream = store.keys.stream(0)
    # a consumer takes 10 entries and does not acknowledge them
    await r.xreadgroup(GROUP, "someone", {stream: ">"}, count=10)
    worker = Worker(s1, client=r, worker_id="trimmer")
    await worker.housekeeping.trim()
    assert await r.xlen(stream) == 100  # nothing acknowledged: nothing trimmed
    first_ids = [i for i, _ in await r.xrange(stream, count=10)]
    await r.xack(stream, GROUP, *first_ids[:5])
    await worker.housekeeping.trim()
    assert await r.xlen(stream) == 95
    assert (await r.xrange(stream, count=1))[0][0] == first_ids[5]
    await store.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_worker_exits_cleanly_on_signal(settings: Settings, sig: int) -> None:
    proc = spawn_worker(settings)
    store = Store(settings)
    # running means registered, and it registers after its signal handlers are installed (a
    # fixed sleep was too short when the machine was slow to import numpy and friends)
    for _ in range(400):
        if await store.redis.zcard(store.keys.workers()):
            break
        assert proc.poll() is None
        await asyncio.sleep(0.05)
    await store.close()
    proc.send_signal(sig)
    assert proc.wait(15) == 0


async def redelivered(s: Settings, deliveries: int, count: int = 5) -> tuple[Store, Any, str]:
    """20 events in partition 0, whose first five were delivered (the first ``count`` of them
    ``deliveries`` times) and never acknowledged: what crashed or replaced workers leave."""
    await ingest(s, click_log(20))
    store = Store(s)
    r: Any = store.redis
    stream, consumer = store.keys.stream(0), store.keys.consumer(0)
    await r.xreadgroup(GROUP, consumer, {stream: ">"}, count=5)
    for _ in range(deliveries - 1):
        await r.xreadgroup(GROUP, consumer, {stream: "0"}, count=count)
    return store, r, stream


async def test_entry_that_keeps_failing_is_dead_lettered_after_max_deliveries(
        settings: Settings) -> None:
    """An entry whose processing crashes the worker process ends in the dead letters; the
    rest is applied. Simulated: three workers each recorded an attempt at the entry and died
    before clearing it (and it was delivered to each of them)."""
    s = settings.replace(partitions=1, max_deliveries=3)
    store, r, stream = await redelivered(s, 3, count=1)
    first_id = (await r.xrange(stream, count=1))[0][0]
    await r.hincrby(store.keys.attempts(0), first_id, 3)
    stats = await drain(s)
    assert stats["events_dead"] == 1 and stats["events_processed"] == 19
    dead = await r.xrange(store.keys.dead(0))
    assert dead[0][1][b"id"] == first_id and b"attempted 3 times" in dead[0][1][b"reason"]
    assert await r.xpending(stream, GROUP) == {"pending": 0, "min": None, "max": None,
                                                 "consumers": []}
    assert not await r.exists(store.keys.attempts(0))  # no mark outlives its entry
    await store.close()


async def test_redeliveries_by_handovers_never_dead_letter_a_valid_event(
        settings: Settings) -> None:
    """Lease handovers and workers stopped for reasons of their own redeliver every pending
    entry: ten deliveries of valid entries, with no failed attempt, must still apply them."""
    s = settings.replace(partitions=1, max_deliveries=3)
    store, r, _ = await redelivered(s, 11)
    stats = await drain(s)
    assert stats["events_dead"] == 0 and stats["events_processed"] == 20
    assert not await r.exists(store.keys.attempts(0))
    await store.close()


async def test_a_stale_reader_cannot_make_the_watermark_skip_entries(settings: Settings) -> None:
    """During a lease handover the old holder (stalled, not dead) and the new one can both read
    new entries: each gets its own batch. If the newer batch committed first, the watermark
    would jump over the older one, which would then be acknowledged without effect. The commit
    refuses any batch that does not start right after the watermark."""
    s = settings.replace(partitions=1, batch_size=10)
    events = click_log(30)
    clean = await clean_reference(s, events)

    await ingest(s, events)
    store = Store(s)
    r: Any = store.redis
    stream, consumer = store.keys.stream(0), store.keys.consumer(0)
    stale = await r.xreadgroup(GROUP, consumer, {stream: ">"}, count=10)  # the old holder
    assert len(stale[0][1]) == 10
    worker = Worker(s, client=r, worker_id="new-holder")
    # the new holder's batch: entries 11-20
    newer = await worker.loop.read(worker.partitions[0], backlog=False)
    assert newer[0].id == (await r.xrange(stream, count=11))[10][0].decode()
    with pytest.raises(Conflict):
        await worker.process(0, newer)
    stats = await drain(s)
    assert stats["events_processed"] == stats["events_accepted"] == 30
    assert_same_state(await snapshot(r, s.namespace), await snapshot(r, clean.namespace))
    await store.close()


async def test_a_partition_given_back_stops_even_if_its_cancellation_is_lost(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """asyncio.timeout inside the Redis client can turn a cancellation into a TimeoutError.
    The worker must still stop reading a partition it gave back, and keep renewing the others
    (it once waited forever here: its leases expired and two workers read one partition)."""
    original = PartitionLoop.read

    async def read_losing_cancellation(self: PartitionLoop, part: Partition,
                                       backlog: bool) -> list[Entry]:
        try:
            return await original(self, part, backlog)
        except asyncio.CancelledError:
            raise TimeoutError("cancellation lost inside the client") from None

    monkeypatch.setattr(PartitionLoop, "read", read_losing_cancellation)
    s = settings.replace(partitions=4)
    worker = Worker(s, worker_id="a")
    await ensure_groups(worker.redis, worker.keys)
    await worker.leases.balance()
    tasks = {p: part.task for p, part in worker.leases.owned.items() if part.task}
    assert len(tasks) == 4
    await worker.redis.zadd(worker.keys.workers(), {"b": int(time.time() * 1000)})
    started = time.monotonic()
    await asyncio.wait_for(worker.leases.balance(), 5)  # a second worker: the fair share is 2
    assert time.monotonic() - started < 3
    assert len(worker.leases.owned) == 2
    given_back = [task for p, task in tasks.items() if p not in worker.leases.owned]
    done, _ = await asyncio.wait(given_back, timeout=3)
    assert len(done) == 2
    worker.stop()
    await worker.shutdown()
    await worker.redis.aclose()


async def test_a_partition_loop_that_dies_is_logged_with_its_traceback(
        settings: Settings, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A loop that raises (a bug, not an outage) says so at ERROR, with its traceback, when it
    dies (it once only appeared as 'task ended' at INFO at the next balance); the next balance
    starts it again."""
    original = PartitionLoop.read
    failed: list[int] = []

    async def read_failing_once(self: PartitionLoop, part: Partition,
                                backlog: bool) -> list[Entry]:
        if not failed:
            failed.append(part.p)
            raise RuntimeError("a bug in the loop (test)")
        return await original(self, part, backlog)

    monkeypatch.setattr(PartitionLoop, "read", read_failing_once)
    worker = Worker(settings.replace(partitions=1), worker_id="dies")
    await ensure_groups(worker.redis, worker.keys)
    with caplog.at_level(logging.INFO, "sessionrec.worker"):
        await worker.leases.balance()
        died = worker.partitions[0].task
        assert died is not None
        await asyncio.wait([died], timeout=5)
        await asyncio.sleep(0)  # its done callbacks run on the loop's next turn
        [error] = [r for r in caplog.records if r.name == "sessionrec.worker"
                   and r.levelname == "ERROR"]
        assert "partition 0" in error.getMessage()
        assert error.exc_info is not None and error.exc_info[0] is RuntimeError
        await worker.leases.balance()
    again = worker.partitions[0].task
    assert again is not None and again is not died and not again.done()
    worker.stop()
    await worker.shutdown()
    await worker.redis.aclose()


async def test_batches_read_behind_commits_survive_failed_commits(
        standalone_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The next batch rides in the commit's round trip (standalone Redis). When the commit's
    answer is lost (a conflict, a dropped connection), that batch is pending but unapplied:
    the backlog must apply it, once."""
    s = Settings(redis_url=standalone_url, namespace=f"ahead{os.getpid()}", partitions=2,
                 batch_size=40, block_ms=20, lease_ms=2000)
    events = click_log(2000, seed=11)
    clean = await clean_reference(s, events)
    await ingest(s, events)
    original_commit, original_read = Batches.send_commit, PartitionLoop.read
    calls = {"ahead": 0, "reads": 0, "batches": 0}

    async def commit(self: Batches, part: Partition, keys: list[str], args: list[Any],
                     read_ahead: bool) -> Any:
        reply = await original_commit(self, part, keys, args, read_ahead)
        calls["batches"] += 1
        if read_ahead:
            calls["ahead"] += 1
            if calls["ahead"] in (3, 9):
                raise Conflict(part.p, "the commit's answer was lost (test)")
            if calls["ahead"] == 6:
                raise ConnectionError("the connection dropped after the commit (test)")
        return reply

    async def read(self: PartitionLoop, part: Partition, backlog: bool) -> list[Entry]:
        got = await original_read(self, part, backlog)
        # the batches a read brought: an idle worker's empty reads, as many as the drain is
        # slow, say nothing of where batches came from
        calls["reads"] += bool(got)
        return got
    monkeypatch.setattr(Batches, "send_commit", commit)
    monkeypatch.setattr(PartitionLoop, "read", read)
    stats = await drain(s)
    assert stats["events_processed"] == stats["events_accepted"] == 2000
    store = Store(s)
    r: Any = store.redis
    assert_same_state(await snapshot(r, s.namespace), await snapshot(r, clean.namespace))
    await store.close()
    assert calls["ahead"] > 10
    assert calls["reads"] < calls["batches"] / 2  # most batches came behind a commit


async def test_a_commit_meeting_an_empty_script_cache_keeps_the_batch_read_behind_it(
        standalone_url: str) -> None:
    """NOSCRIPT fails the commit but not the read written behind it: that batch was delivered
    and must still be applied. (When it is the stream's last, no later batch's gap check
    sends the worker back to it: it once stayed pending until the next restart.)"""
    s = Settings(redis_url=standalone_url, namespace=f"noscript{os.getpid()}", partitions=1,
                 batch_size=100, block_ms=20, lease_ms=2000)
    events = click_log(150, seed=13)
    clean = await clean_reference(s, events)
    await ingest(s, events)
    store = Store(s)
    r: Any = store.redis
    await r.script_flush()
    stats = await drain(s)
    assert stats["events_processed"] == stats["events_accepted"] == 150
    assert_same_state(await snapshot(r, s.namespace), await snapshot(r, clean.namespace))
    await store.close()
