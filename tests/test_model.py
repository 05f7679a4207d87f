"""The update rule: deterministic, order-free across sessions, idempotent by construction."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from service.core.layout import index_entry, item_hash, session_hash, split_entries, time_key
from service.core.model import Event, apply_events
from tests.helpers import interleaved


def fold(events: list[Event], cap: int = 100) -> dict[str, object]:
    """Apply events batch by batch the way a worker does, returning an order-free summary."""
    histories: dict[bytes, bytes] = {}
    index: dict[bytes, set[bytes]] = {}
    df: dict[bytes, int] = {}
    for start in range(0, len(events), 3):
        fx = apply_events(histories, events[start:start + 3], cap)
        histories.update(fx.histories)
        for item, old, new in fx.index:
            entries = index.setdefault(item, set())
            entries.discard(old)
            entries.add(new)
        for item, n in fx.doc_freq.items():
            df[item] = df.get(item, 0) + n
    return {"histories": histories, "index": index, "df": df}


def test_history_and_index_entries() -> None:
    evs = [Event("s", "a", 10.0), Event("s", "b", 11.0), Event("s", "a", 12.5)]
    fx = apply_events({}, evs, history_cap=10)
    s = session_hash("s")
    assert [(i, t) for i, t in split_entries(fx.histories[s])] == [
        (item_hash("a"), time_key(10.0)), (item_hash("b"), time_key(11.0)),
        (item_hash("a"), time_key(12.5))]
    # 'a' seen again later: its entry moves from t=10 to t=12.5, counted once in df
    moves = [change for change in fx.index if change[0] == item_hash("a")]
    assert moves == [(item_hash("a"), b"", index_entry(time_key(10.0), s)),
                     (item_hash("a"), index_entry(time_key(10.0), s),
                      index_entry(time_key(12.5), s))]
    assert fx.doc_freq == {item_hash("a"): 1, item_hash("b"): 1}
    assert fx.applied == 3 and len(fx.trend) == 3


def test_a_session_arrives_with_its_first_learned_event_and_only_when_it_starts() -> None:
    """The server's time of the event that starts a history (an impression starts none);
    a session with a kept history arrived before. Without arrival times, the event's own."""
    evs = [Event("a", "x", 50.0, "impression"), Event("a", "x", 40.0), Event("b", "y", 10.0),
           Event("a", "z", 41.0), Event("old", "x", 5.0)]
    kept = {session_hash("old"): apply_events({}, [Event("old", "w", 1.0)], 10).histories[
        session_hash("old")]}
    fx = apply_events(kept, evs, 10, lambda n: 1000 + n)
    assert fx.arrivals == {session_hash("a"): 1001, session_hash("b"): 1002}
    assert fx.new_sessions == 2
    assert apply_events({}, evs, 10).arrivals == {session_hash("a"): 40_000,
                                                  session_hash("b"): 10_000,
                                                  session_hash("old"): 5_000}


def test_history_is_capped_to_the_latest_events() -> None:
    fx = apply_events({}, [Event("s", str(n), float(n)) for n in range(8)], history_cap=5)
    kept = split_entries(fx.histories[session_hash("s")])
    assert [t for _, t in kept] == [time_key(float(n)) for n in range(3, 8)]


def test_an_earlier_timestamp_does_not_move_the_index_entry_back() -> None:
    fx = apply_events({}, [Event("s", "a", 20.0), Event("s", "a", 5.0)], history_cap=10)
    assert len(fx.index) == 1


def test_time_key_sorts_like_time_and_clamps() -> None:
    assert time_key(-5) == 0
    keys = [time_key(t).to_bytes(8, "big") for t in (0.0, 1.5, 1.500001, 1e9, 1e11)]
    assert keys == sorted(keys)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 8), st.integers(0, 50)),
                min_size=1, max_size=40), st.randoms())
def test_interleaving_sessions_changes_nothing(raw: list[tuple[int, int, int]],
                                               rnd: random.Random) -> None:
    """Sessions may be interleaved arbitrarily (different partitions, workers, crashes): as
    long as each session's own events keep their order, the learned state is the same."""
    events = [Event(f"s{s}", f"i{i}", float(t)) for s, i, t in raw]
    assert fold(interleaved(events, rnd), cap=4) == fold(events, cap=4)
