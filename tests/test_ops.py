"""The commit's index op (``service/store/lua/ops.lua``, 'X') on a real Redis, against a sorted
list.

The op edits an index in place and reads only as much of it as the splice needs: the last
entry (an append), the last ``WINDOW`` entries (a session's earlier entry moved, or an entry
slightly out of order), or the whole index. Whichever path it takes, the index must hold what
a sorted list would: the newest ``cap`` entries the same, sorted, within ``index_limit``.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterator
from typing import Any, cast

import pytest
import redis

from service.core.layout import index_limit, newest_entries
from service.store.scripts import lua

CAP = 40  # index_limit(40) = 56 entries: past the script's 32-entry window
WINDOW = 32


@pytest.fixture
def r(standalone_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(standalone_url)
    yield client
    client.close()


def entry(t: int, session: int) -> bytes:
    return t.to_bytes(8, "big") + session.to_bytes(8, "big")


def path_of(stored: bytes, old: bytes, new: bytes) -> str:
    """Which of the op's three paths a splice of ``stored`` takes (to prove each is tested)."""
    if old == b"" and (stored == b"" or new > stored[-16:]):
        return "append"
    tail = stored[-WINDOW * 16:]
    if len(tail) < WINDOW * 16 or not (new < tail[:16] or (old and old < tail[:16])):
        return "window"
    return "whole"


@pytest.mark.parametrize("seed", range(4))
def test_index_op_keeps_what_a_sorted_list_keeps(r: redis.Redis, seed: int) -> None:
    rnd = random.Random(seed)
    apply = r.register_script(lua("apply"))
    marks, key = f"ops{seed}{{o}}:marks", f"ops{seed}{{o}}:x"
    r.delete(marks, key)
    reference: list[bytes] = []
    latest: dict[int, bytes] = {}  # session -> its entry in the index
    used: set[int] = set()
    paths: dict[str, int] = {"append": 0, "window": 0, "whole": 0}
    now = 1_000_000
    for batch in range(1, 700):
        ops: list[Any] = []
        stored = cast(bytes, r.get(key) or b"")
        for _ in range(rnd.choice([1, 1, 1, 3])):  # a few ops on one key in one script too
            now += rnd.randint(1, 5)
            kind = rnd.random()
            lag = 0
            if kind < 0.3 and latest:  # a session clicks the item again: its entry moves
                session = rnd.choice(list(latest))
            else:
                session = rnd.randrange(1 << 40)
                if kind > 0.8:  # another partition's event, a little or a lot older
                    lag = rnd.choice([rnd.randint(1, 60), rnd.randint(100, 400)])
            t = now - lag
            while t in used:
                t -= 1
            used.add(t)
            old = latest.get(session, b"")
            new = entry(t, session)
            if old and new < old:
                continue  # a session's entry only moves forward (the update rule's promise)
            if len(ops) == 0:
                paths[path_of(stored, old, new)] += 1
            ops += ["X", 2, old, new]
            if old:
                reference.remove(old)
            bisect.insort(reference, new)
            latest[session] = new
        if not ops:
            continue
        assert apply(keys=[marks, key],
                     args=[0, f"{batch}-0", CAP, index_limit(CAP), 60_000, f"{batch}-0",
                           *ops]) == 1
        blob = cast(bytes, r.get(key) or b"")
        entries = [blob[n:n + 16] for n in range(0, len(blob), 16)]
        assert entries == sorted(entries) and len(entries) == len(set(entries))
        assert len(entries) <= index_limit(CAP)
        assert newest_entries(blob, CAP) == b"".join(reference[-CAP:])
    assert min(paths.values()) >= 20, paths


def test_a_slot_holding_part_of_a_batch_refuses_the_whole_one(r: redis.Redis) -> None:
    """Two workers' batches over the same entries can end differently (a lease that expired
    under a stalled holder): a slot holding entries 1-5 of partition 0 must neither apply a
    batch of entries 3-8 (entries 3-5 would count twice) nor skip it, but say where its part
    ends, so the worker cuts its batch there; a batch it holds whole is skipped, the next one
    applied."""
    apply = r.register_script(lua("apply"))
    marks, key = "overlap{o}:marks", "overlap{o}:df"
    r.delete(marks, key)
    ops: list[Any] = ["D", 2, 1, "item", 1]  # the doc frequency of "item" + 1
    args: list[Any] = [0, "5-0", CAP, index_limit(CAP), 60_000, "1-0"]
    assert apply(keys=[marks, key], args=[*args, *ops]) == 1  # entries 1-5
    assert apply(keys=[marks, key],
                 args=[0, "8-0", CAP, index_limit(CAP), 60_000, "3-0", *ops]) == [b"overlap",
                                                                                   b"5-0"]
    assert apply(keys=[marks, key],
                 args=[0, "4-0", CAP, index_limit(CAP), 60_000, "3-0", *ops]) == 0  # held
    assert apply(keys=[marks, key],
                 args=[0, "8-0", CAP, index_limit(CAP), 60_000, "6-0", *ops]) == 1  # the rest
    assert r.hget(key, "item") == b"2" and r.hget(marks, "0") == b"8-0"
