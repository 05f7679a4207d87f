"""Scoring math on hand-made indexes and histories."""

from __future__ import annotations

import numpy as np
import pytest

from service import scoring
from service.keyspace import item_hash, session_hash
from service.model import history_entry, index_entry, time_key
from service.scoring import Params

P = Params(query_items=20, sample_sessions=500, neighbours=100, sequence_weight=0.0,
           before_weight=0.0, position_decay=1.0, idf_weight=0.0, repeat_weight=0.0)
"""Every parameter pinned: the hand-computed answers below must not follow the defaults."""


def u64(h: bytes) -> int:
    return int.from_bytes(h, "little")


def index(*pairs: tuple[float, str]) -> bytes:
    entries = sorted(index_entry(time_key(t), session_hash(s)) for t, s in pairs)
    return b"".join(entries)


def history(*items: str) -> bytes:
    return b"".join(history_entry(item_hash(i), time_key(n)) for n, i in enumerate(items))


def test_query_weights_favour_recent_and_rated_items() -> None:
    q = scoring.build_query([item_hash("a"), item_hash("b"), item_hash("c")], [3.0, 1.0, 2.0],
                            [1.0, 2.0, 2.0], P)
    assert [int(x) for x in q.items] == [u64(item_hash(i)) for i in ("b", "c", "a")]
    # distances 2, 1, 0 from the end; ratings relative to the best (2)
    assert q.weights == pytest.approx([1.0 / 3, 1.0 / 2, 0.5])
    assert q.last == u64(item_hash("a"))


def test_non_positive_ratings_carry_no_weight_but_stay_seen() -> None:
    q = scoring.build_query([item_hash("a"), item_hash("b")], [1.0, 2.0], [3.0, -1.0], P)
    assert [int(x) for x in q.items] == [u64(item_hash("a"))]
    assert len(q.seen) == 2


def test_neighbour_similarity_sums_shared_item_weights() -> None:
    q = scoring.build_query([item_hash("a"), item_hash("b")], [1.0, 2.0], [1.0, 1.0], P)
    blobs = [index((5, "n1"), (6, "n2")), index((7, "n2"), (8, "n3"))]
    sessions, sims = scoring.neighbours(q, blobs, P)
    got = {int(s): float(w) for s, w in zip(sessions, sims, strict=True)}
    assert got == pytest.approx({u64(session_hash("n2")): 1.5, u64(session_hash("n3")): 1.0,
                                 u64(session_hash("n1")): 0.5})
    assert int(sessions[0]) == u64(session_hash("n2"))


def test_sample_keeps_most_recent_candidates_and_excludes_self() -> None:
    q = scoring.build_query([item_hash("a")], [1.0], [1.0], P)
    blob = index(*[(float(t), f"s{t}") for t in range(10)])
    small = Params(20, 3, 100, 0.0, position_decay=1.0)
    sessions, _ = scoring.neighbours(q, [blob], small, u64(session_hash("s9")))
    assert {int(s) for s in sessions} == {u64(session_hash(f"s{t}")) for t in (6, 7, 8)}


def test_items_score_by_neighbour_similarity_once_per_neighbour() -> None:
    q = scoring.build_query([item_hash("a")], [1.0], [1.0], P)
    items, scores = scoring.score(q, [history("a", "x", "x", "y"), history("a", "x"), None],
                                  np.array([2.0, 1.0, 5.0]), P)
    got = {int(i): float(s) for i, s in zip(items, scores, strict=True)}
    assert got == pytest.approx({u64(item_hash("a")): 3.0, u64(item_hash("x")): 3.0,
                                 u64(item_hash("y")): 2.0})


def test_sequence_weight_boosts_what_follows_the_last_item() -> None:
    q = scoring.build_query([item_hash("a")], [1.0], [1.0], P)
    seq = Params(20, 500, 100, sequence_weight=1.0, before_weight=0.0)
    items, scores = scoring.score(q, [history("y", "a", "x", "z")], np.array([1.0]), seq)
    got = {int(i): float(s) for i, s in zip(items, scores, strict=True)}
    assert got[u64(item_hash("x"))] == pytest.approx(2.0)  # distance 1: 1 + 1/1
    assert got[u64(item_hash("z"))] == pytest.approx(1.5)  # distance 2: 1 + 1/2
    assert got[u64(item_hash("y"))] == pytest.approx(1.0)  # before: no bonus


def test_top_excludes_and_orders() -> None:
    c = np.array([5, 3, 9, 1], dtype=np.uint64)
    s = np.array([0.5, 2.0, 2.0, 0.0])
    items, scores = scoring.top(c, s, 10, exclude=np.array([9], dtype=np.uint64))
    assert [int(i) for i in items] == [3, 5] and list(scores) == [2.0, 0.5]
    items, _ = scoring.top(c, s, 1)
    assert [int(i) for i in items] == [3]


def test_anchor_is_the_most_recent_session_item_the_neighbour_contains() -> None:
    # session a -> b; the neighbour lacks b, so its anchor is a: x follows a at distance 1
    q = scoring.build_query([item_hash("a"), item_hash("b")], [1.0, 2.0], [1.0, 1.0], P)
    seq = Params(20, 500, 100, sequence_weight=1.0, before_weight=0.5)
    items, scores = scoring.score(q, [history("w", "a", "x")], np.array([1.0]), seq)
    got = {int(i): float(s) for i, s in zip(items, scores, strict=True)}
    assert got[u64(item_hash("x"))] == pytest.approx(2.0)
    assert got[u64(item_hash("w"))] == pytest.approx(1.5)  # before, distance 1: 1 + 0.5
    assert got[u64(item_hash("a"))] == pytest.approx(1.0)


def test_position_decay_shapes_query_weights() -> None:
    flat = Params(position_decay=0.0)
    q = scoring.build_query([item_hash("a"), item_hash("b")], [1.0, 2.0], [1.0, 1.0], flat)
    assert list(q.weights) == [1.0, 1.0]
    steep = Params(position_decay=2.0)
    q = scoring.build_query([item_hash("a"), item_hash("b")], [1.0, 2.0], [1.0, 1.0], steep)
    assert list(q.weights) == pytest.approx([0.25, 1.0])


def test_idf_weighs_rare_items_up() -> None:
    scores = np.array([1.0, 1.0, 2.0])
    df = np.array([99.0, 1.0, 0.0])
    got = scoring.apply_idf(scores, df, 99.0, Params(idf_weight=2.0))
    assert list(got) == pytest.approx([np.log(2) ** 2, np.log(100) ** 2, 2 * np.log(100) ** 2])
    assert scoring.apply_idf(scores, df, 99.0, Params(idf_weight=0.0)) is scores


def test_repeats_boost_the_sessions_own_items_by_recency() -> None:
    q = scoring.build_query([item_hash("a"), item_hash("b")], [1.0, 2.0], [1.0, 1.0], P)
    c = np.array([u64(item_hash("b")), u64(item_hash("x"))], dtype=np.uint64)
    items, scores = scoring.add_repeats(c, np.array([2.0, 4.0]), q, Params(repeat_weight=1.0))
    got = {int(i): float(s) for i, s in zip(items, scores, strict=True)}
    assert got == pytest.approx({u64(item_hash("x")): 1.0, u64(item_hash("b")): 1.5,
                                 u64(item_hash("a")): 0.5})
    same = scoring.add_repeats(c, np.array([2.0, 4.0]), q, Params(repeat_weight=0.0))
    assert list(same[1]) == [2.0, 4.0]


def test_history_keys_vectorised_equal_one_by_one() -> None:
    from service.keyspace import Keys

    keys = Keys("ns", 7)
    hashes = [session_hash(f"s{n}") for n in range(50)]
    many = keys.histories(scoring.as_u64(hashes))
    assert many == [keys.history(h) for h in hashes]
