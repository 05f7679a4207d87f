"""Scoring math on hand-made indexes and histories, through both implementations of every
stage (the compiled kernel and its pure reference), then the two compared on random cases."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from service import kernel
from service.core import reorder, scoring
from service.core.layout import history_blob, index_entry, item_hash, session_hash, time_key
from service.core.scoring import Params
from service.core.sequence import SequenceModel

pytestmark = pytest.mark.kernel  # ./dev test runs these on both kernels


@pytest.fixture(autouse=True, params=["native", "reference"])
def implementation(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test here runs against the compiled kernel and against its pure reference."""
    before = kernel.NAME
    kernel.use(str(request.param))
    yield str(request.param)
    kernel.use(before)


NONE = np.zeros(0, np.uint64)

P = Params(query_items=20, sample_sessions=500, neighbours=100, sequence_weight=0.0,
           before_weight=0.0, position_decay=1.0, idf_weight=0.0, repeat_weight=0.0,
           neighbour_half_life=0.0)
"""Every parameter pinned: the hand-computed answers below must not follow the defaults."""


def u64(h: bytes) -> int:
    return int.from_bytes(h, "little")


def index(*pairs: tuple[float, str]) -> bytes:
    entries = sorted(index_entry(time_key(t), session_hash(s)) for t, s in pairs)
    return b"".join(entries)


def history(*items: str) -> bytes:
    return history_blob((item_hash(i), time_key(n)) for n, i in enumerate(items))


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


def test_an_index_counts_its_newest_index_cap_entries() -> None:
    """The worker trims lazily: older entries past the cap wait in the blob, unread."""
    q = scoring.build_query([item_hash("a")], [1.0], [1.0], P)
    blob = index(*[(float(t), f"s{t}") for t in range(10)])
    capped = Params(20, 500, 100, 0.0, index_cap=4)
    sessions, _ = scoring.neighbours(q, [blob], capped)
    assert {int(s) for s in sessions} == {u64(session_hash(f"s{t}")) for t in (6, 7, 8, 9)}
    none, _ = scoring.neighbours(q, [blob], Params(20, 500, 100, 0.0, index_cap=0))
    assert len(none) == 0


def test_a_neighbours_similarity_halves_per_half_life_of_age() -> None:
    """Against the newest candidate (n2): n3 (3 s older) and n1 (8 s) lose 2^(-3/5) and
    2^(-8/5); off (0), the older neighbour that shares more ranks first."""
    q = scoring.build_query([item_hash("a"), item_hash("b")], [1.0, 2.0], [1.0, 1.0], P)
    blobs = [index((5, "n1"), (15, "n2")), index((7, "n1"), (12, "n3"))]
    off = dict(zip(*scoring.neighbours(q, blobs, P), strict=True))
    assert off == pytest.approx({u64(session_hash("n1")): 1.5, u64(session_hash("n2")): 0.5,
                                 u64(session_hash("n3")): 1.0})
    decayed = Params(position_decay=1.0, neighbour_half_life=5.0)
    sessions, sims = scoring.neighbours(q, blobs, decayed)
    got = dict(zip(sessions.tolist(), sims.tolist(), strict=True))
    assert got == pytest.approx({u64(session_hash("n1")): 1.5 * 2 ** -(8 / 5),
                                 u64(session_hash("n2")): 0.5,
                                 u64(session_hash("n3")): 1.0 * 2 ** -(3 / 5)})
    assert int(sessions[0]) == u64(session_hash("n3"))


def test_sample_keeps_most_recent_candidates_and_excludes_self() -> None:
    q = scoring.build_query([item_hash("a")], [1.0], [1.0], P)
    blob = index(*[(float(t), f"s{t}") for t in range(10)])
    small = Params(20, 3, 100, 0.0, position_decay=1.0)
    sessions, _ = scoring.neighbours(q, [blob], small, u64(session_hash("s9")))
    assert {int(s) for s in sessions} == {u64(session_hash(f"s{t}")) for t in (6, 7, 8)}


def test_items_score_by_neighbour_similarity_once_per_neighbour() -> None:
    q = scoring.build_query([item_hash("a")], [1.0], [1.0], P)
    items, scores, _ = scoring.score(q, [history("a", "x", "x", "y"), history("a", "x"), None],
                                  np.array([2.0, 1.0, 5.0]), P)
    got = {int(i): float(s) for i, s in zip(items, scores, strict=True)}
    assert got == pytest.approx({u64(item_hash("a")): 3.0, u64(item_hash("x")): 3.0,
                                 u64(item_hash("y")): 2.0})


def test_sequence_weight_boosts_what_follows_the_last_item() -> None:
    q = scoring.build_query([item_hash("a")], [1.0], [1.0], P)
    seq = Params(20, 500, 100, sequence_weight=1.0, before_weight=0.0)
    items, scores, _ = scoring.score(q, [history("y", "a", "x", "z")], np.array([1.0]), seq)
    got = {int(i): float(s) for i, s in zip(items, scores, strict=True)}
    assert got[u64(item_hash("x"))] == pytest.approx(2.0)  # distance 1: 1 + 1/1
    assert got[u64(item_hash("z"))] == pytest.approx(1.5)  # distance 2: 1 + 1/2
    assert got[u64(item_hash("y"))] == pytest.approx(1.0)  # before: no bonus


def rank(c: list[int], s: list[float], k: int, exclude: list[int] | None = None,
         df: list[float] | None = None, sessions: float = 0.0, params: Params = P,
         query: scoring.Query | None = None, repeats: bool = False
         ) -> tuple[list[int], list[float]]:
    q = query if query is not None else scoring.build_query([], [], [], P)
    items, scores = scoring.rank(np.array(c, dtype=np.uint64), np.array(s, dtype=np.float64),
                                 np.array(df if df is not None else [0.0] * len(c)), sessions,
                                 q, params, repeats, np.array(exclude or [], dtype=np.uint64),
                                 k)
    return [int(i) for i in items], [float(x) for x in scores]


def test_rank_excludes_and_orders() -> None:
    items, scores = rank([5, 3, 9, 1], [0.5, 2.0, 2.0, 0.0], 10, exclude=[9])
    assert items == [3, 5] and scores == [2.0, 0.5]
    assert rank([5, 3, 9, 1], [0.5, 2.0, 2.0, 0.0], 1)[0] == [3]  # ties: the smaller hash
    assert rank([5, 3, 9, 1], [0.5, 2.0, 2.0, 0.0], 0) == ([], [])
    long_exclusion = [*range(100, 200), 3]  # long lists are bisected, not scanned
    assert rank([5, 3, 9, 1], [0.5, 2.0, 2.0, 0.0], 10, exclude=long_exclusion)[0] == [9, 5]


def test_anchor_is_the_most_recent_session_item_the_neighbour_contains() -> None:
    # session a -> b; the neighbour lacks b, so its anchor is a: x follows a at distance 1
    q = scoring.build_query([item_hash("a"), item_hash("b")], [1.0, 2.0], [1.0, 1.0], P)
    seq = Params(20, 500, 100, sequence_weight=1.0, before_weight=0.5)
    items, scores, _ = scoring.score(q, [history("w", "a", "x")], np.array([1.0]), seq)
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
    idf2 = Params(idf_weight=2.0, repeat_weight=0.0)
    items, scores = rank([1, 2, 3], [1.0, 1.0, 2.0], 10, df=[99.0, 1.0, 0.0], sessions=99.0,
                         params=idf2)
    assert items == [3, 2, 1]
    assert scores == pytest.approx([2 * np.log(100) ** 2, np.log(100) ** 2, np.log(2) ** 2])
    flat = Params(idf_weight=0.0, repeat_weight=0.0)
    assert rank([1, 2], [1.0, 2.0], 10, df=[1.0, 50.0], sessions=99.0, params=flat) == (
        [2, 1], [2.0, 1.0])


def test_repeats_boost_the_sessions_own_items_by_recency() -> None:
    q = scoring.build_query([item_hash("a"), item_hash("b")], [1.0, 2.0], [1.0, 1.0], P)
    c = [u64(item_hash("b")), u64(item_hash("x"))]
    params = Params(repeat_weight=1.0, idf_weight=0.0, position_decay=1.0)
    items, scores = rank(c, [2.0, 4.0], 10, params=params, query=q, repeats=True)
    assert dict(zip(items, scores, strict=True)) == pytest.approx(
        {u64(item_hash("x")): 1.0, u64(item_hash("b")): 1.5, u64(item_hash("a")): 0.5})
    assert rank(c, [2.0, 4.0], 10, params=params, query=q, repeats=False) == (
        [c[1], c[0]], [4.0, 2.0])


def test_history_keys_vectorised_equal_one_by_one() -> None:
    from service.store.keyspace import Keys

    keys = Keys("ns", 7)
    hashes = [session_hash(f"s{n}") for n in range(50)]
    many = keys.histories(scoring.as_u64(hashes))
    assert many == [keys.history(h) for h in hashes]


def test_the_histories_mget_packed_by_the_kernel_is_the_keyspace_s() -> None:
    from service.store import transport
    from service.store.keyspace import Keys

    keys = Keys("ns:x", 7)
    sessions = scoring.as_u64([session_hash(f"s{n}") for n in range(50)])
    prefixes = [p.encode() for p in keys.history_prefixes()]
    assert kernel.mget(sessions, prefixes) == transport.pack(b"MGET", keys.histories(sessions))
    assert kernel.mget(NONE, prefixes) == transport.pack(b"MGET", [])


# --- the kernel against the reference, on random cases ---------------------------------------
def random_case(rng: np.random.Generator) -> tuple[list[bytes], list[float], list[float],
                                                   list[bytes | None], list[bytes | None],
                                                   Params]:
    """A session, index blobs and histories over small id alphabets, so that neighbours share
    items, times tie and items repeat inside histories."""
    from service.core.layout import history_blob
    from service.core.layout import index_entry as i_entry

    def item(n: int) -> bytes:
        return item_hash(f"i{n}")

    n = int(rng.integers(0, 12))
    items = [item(int(i)) for i in rng.choice(40, n, replace=False)]
    times = [float(t) for t in rng.integers(0, 5, n)]  # ties: the order must be stable
    ratings = [float(r) for r in rng.choice([1.0, 1.0, 2.0, 0.0, -1.0], n)]
    index_blobs: list[bytes | None] = [
        None if rng.random() < 0.1 else b"".join(sorted(
            i_entry(time_key(float(t)), session_hash(f"s{int(s)}"))
            for t, s in zip(rng.integers(0, 30, m), rng.integers(0, 60, m), strict=True)))
        for m in rng.integers(0, 25, 12)]
    histories: list[bytes | None] = [
        None if rng.random() < 0.1 else history_blob(
            (item(int(i)), time_key(float(p))) for p, i in enumerate(rng.integers(0, 40, m)))
        for m in rng.integers(0, 15, 30)]
    params = Params(query_items=int(rng.integers(1, 12)), sample_sessions=int(rng.integers(1, 40)),
                    neighbours=int(rng.integers(1, 30)),
                    sequence_weight=float(rng.choice([0.0, 1.5])),
                    before_weight=float(rng.choice([0.0, 1.0])),
                    position_decay=float(rng.choice([0.0, 1.0, 2.0])),
                    idf_weight=float(rng.choice([0.0, 1.0, 2.0])),
                    repeat_weight=float(rng.choice([0.0, 2.0])),
                    neighbour_half_life=float(rng.choice([0.0, 0.7, 20.0])),
                    index_cap=int(rng.integers(1, 30)))  # windows that cut some blobs
    return items, times, ratings, index_blobs, histories, params


def both(stage: str, *args: Any) -> tuple[Any, Any]:
    kernel.use("native")
    compiled = getattr(scoring, stage)(*args)
    kernel.use("reference")
    reference = getattr(scoring, stage)(*args)
    kernel.use("native")
    return compiled, reference


def test_the_kernel_equals_the_reference_on_random_cases(implementation: str) -> None:
    if implementation == "reference":
        return  # one comparison is enough; the fixture's other run does it
    rng = np.random.default_rng(7)
    compared = 0
    for _ in range(400):
        items, times, ratings, index_blobs, histories, params = random_case(rng)
        (cq, rq) = both("build_query", items, times, ratings, params)
        assert isinstance(cq, scoring.Query) and isinstance(rq, scoring.Query)
        assert list(cq.items) == list(rq.items) and list(cq.seen) == list(rq.seen)
        np.testing.assert_allclose(cq.weights, rq.weights, rtol=1e-13)
        query = rq  # the same query into both from here: the rest is compared exactly
        blobs = index_blobs[:len(query.items)]
        exclude = int(np.uint64(u64(session_hash("s3")))) if rng.random() < 0.5 else None
        (cs, cw), (rs, rw) = both("neighbours", query, blobs, params, exclude)
        assert list(cs) == list(rs) and list(cw) == list(rw)
        sims = rng.random(len(histories)) * 3
        (ci, cv, ct), (ri, rv, rt) = both("score", query, histories, sims, params)
        order = np.argsort(ci)
        assert list(ci[order]) == list(ri) and list(cv[order]) == list(rv)
        assert list(ct[order]) == list(rt)  # each candidate's latest time
        wanted = np.concatenate((ri[::3], query.seen))  # some candidates, some not
        kernel.use("native")
        compiled = kernel.gather(ci, ct, wanted)
        kernel.use("reference")
        assert kernel.gather(ci, ct, wanted) == compiled
        kernel.use("native")
        df = rng.integers(0, 5, len(ri)).astype(np.float64)
        exclusion = np.concatenate((query.seen[:2], ri[:3]))
        for repeats, k in itertools.product((False, True), (20, 35, 100)):
            (bi, bv), (ti, tv) = both("rank", ri, rv, df, 50.0, query, params,
                                      repeats, exclusion, k)
            assert list(bi) == list(ti)
            np.testing.assert_allclose(bv, tv, rtol=1e-12)
        compared += len(ri)
    assert compared > 2000  # the cases were not all empty


def test_the_neighbours_of_a_long_query_equal_the_references() -> None:
    """Thousands of candidate sessions, of which the compiled kernel orders only those it
    keeps (the sample's most recent, then the most similar): the same neighbours in the same
    order as the reference, which sorts them all; times tie often, so the sessions' hashes
    decide."""
    from service.core.layout import index_entry as i_entry

    rng = np.random.default_rng(23)
    for case in range(12):
        sessions = int(rng.integers(300, 4000))
        blobs: list[bytes | None] = [b"".join(sorted(
            i_entry(time_key(float(t)), session_hash(f"s{int(s)}"))
            for t, s in zip(rng.integers(0, [5, 200, 10**6][case % 3], 600),
                            rng.integers(0, sessions, 600), strict=True)))
            for _ in range(int(rng.integers(2, 12)))]
        items = [item_hash(f"i{n}") for n in range(len(blobs))]
        params = Params(query_items=len(items), sample_sessions=int(rng.integers(50, 1500)),
                        neighbours=int(rng.integers(10, 400)), index_cap=600,
                        neighbour_half_life=float(rng.choice([0.0, 20.0])))
        query = scoring.build_query(items, [float(t) for t in range(len(items))],
                                    [1.0] * len(items), params)
        (cs, cw), (rs, rw) = both("neighbours", query, blobs, params, None)
        assert len(cs) == min(params.neighbours, params.sample_sessions)
        assert list(cs) == list(rs) and list(cw) == list(rw)
        # the learned order's hundred best of hundreds of candidates, scores tied in places:
        # the compiled rank selects them, the reference sorts all
        found = np.unique(rng.integers(1, 2**63, int(rng.integers(200, 3000)), np.uint64))
        scores = np.round(rng.random(len(found)) * 20) / 4
        exclusion = np.concatenate((found[::7], rng.choice(found, 40)))
        (bi, bv), (ti, tv) = both("rank", found, scores, rng.integers(0, 9, len(found)).astype(
            np.float64), 500.0, query, params, case % 2 == 0, exclusion, 100)
        assert len(bi) == 100 and list(bi) == list(ti)
        np.testing.assert_allclose(bv, tv, rtol=1e-12)


def test_frequency_table_finds_what_was_added_and_grows() -> None:
    from service.store.caches import FrequencyCache

    cache = FrequencyCache(capacity=8)
    rng = np.random.default_rng(3)
    keys = rng.integers(0, 2**64 - 1, 5000, dtype=np.uint64, endpoint=True)
    keys[0] = 0  # the zero hash is a key like any other (empty slots are NaN values)
    values = rng.random(5000) * 100
    for start in range(0, 5000, 700):
        cache.add(keys[start:start + 700], values[start:start + 700])
    cache.add(keys[:10], values[:10] + 1)  # refreshing a value does not grow the table
    assert cache.size == 5000 and len(cache.keys) >= 10000
    unknown = np.array([1, 2, 3], dtype=np.uint64)
    got, missing = cache.lookup(np.concatenate((keys, unknown)))
    assert list(got[:10]) == list(values[:10] + 1) and list(got[10:5000]) == list(values[10:])
    assert list(got[5000:]) == [0.0, 0.0, 0.0] and list(missing) == [1, 2, 3]
    with pytest.raises(ValueError, match="NaN"):
        cache.add(unknown, np.array([1.0, np.nan, 2.0]))


def test_relative_scores_round_as_numpy_does() -> None:

    rng = np.random.default_rng(5)
    for n in (0, 1, 20):
        scores = np.sort(rng.random(n) * 10.0 ** rng.integers(-3, 4))[::-1].copy()
        expected = (scores / scores[0]).round(6).tolist() if n else []
        assert kernel.relative(scores) == expected
    assert kernel.relative(np.array([3.0, 1.0, 2.0 / 3.0])) == [1.0, 0.333333, 0.222222]


def test_the_kernel_takes_blobs_from_any_iterable_and_refuses_other_types() -> None:
    """A generator's temporary list must outlive the stage that reads its bytes."""

    q = scoring.build_query([item_hash("a")], [1.0], [1.0], P)
    blobs = [history("a", "x", "y"), history("a", "x")]
    sims = np.array([2.0, 1.0])
    from_list = kernel.score(q.items, q.weights, blobs, sims, 1.5, 1.0)
    for _ in range(50):
        assert kernel.score(q.items, q.weights, (b[:] for b in blobs), sims, 1.5,
                             1.0) == from_list
    index_blobs = [index((5, "n1"), (6, "n2"))]
    assert kernel.neighbours(q.weights, iter(index_blobs), 10, 10, 0, False, 500, 0.0) == \
        kernel.neighbours(q.weights, index_blobs, 10, 10, 0, False, 500, 0.0)
    with pytest.raises(TypeError, match="bytes or None"):
        kernel.score(q.items, q.weights, ["not bytes"], np.array([1.0]), 1.5, 1.0)  # type: ignore[list-item]


def test_score_gives_each_candidate_the_latest_time_a_neighbour_touched_it() -> None:
    q = scoring.build_query([item_hash("a")], [1.0], [1.0], P)
    older = np.array([(u64(item_hash(i)), t) for i, t in (("a", 10), ("x", 11), ("y", 12))],
                     dtype=[("i", "<u8"), ("t", ">i8")]).tobytes()
    newer = np.array([(u64(item_hash(i)), t) for i, t in (("x", 30), ("a", 31))],
                     dtype=[("i", "<u8"), ("t", ">i8")]).tobytes()
    found = scoring.score(q, [older, newer], np.array([1.0, 1.0]), P)
    latest = dict(zip(found.items.tolist(), found.latest.tolist(), strict=True))
    assert latest == {u64(item_hash("a")): 31, u64(item_hash("x")): 30,
                      u64(item_hash("y")): 12}
    # gather: by key, a key not among them 0, repeated keys their first value
    keys = np.array([5, 7, 5], np.uint64)
    got = kernel.gather(keys, np.array([50, 70, 99], np.int64), np.array([7, 5, 6], np.uint64))
    assert np.frombuffer(got, np.int64).tolist() == [70, 50, 0]
    with pytest.raises(ValueError, match="one value per key"):
        kernel.gather(keys, np.array([1], np.int64), keys)


def test_the_learned_order_equals_its_reference_on_random_cases() -> None:
    """``kernel.reorder`` compiled and its reference: the same answers in the same order, the
    same scores (to the last bits numpy's and the C library's logs may differ in)."""
    from service.kernel import _native, reference_reorder

    rng = np.random.default_rng(11)
    width, weighed = reference_reorder.WIDTH, reference_reorder.WEIGHED
    compared = 0
    for case in range(300):
        n = int(rng.integers(0, 200))  # past the compiled version's 128 answers on its stack
        best = rng.choice(np.arange(1, 400, dtype=np.uint64), n, replace=False)
        values = np.sort(rng.random(n) * 5)[::-1].copy()
        if case % 7 == 0 and n:
            values[-(n // 3):] = 0.0  # scores floored before their log
        df = rng.integers(0, 60, n).astype(np.float64)
        q_items = rng.choice(np.arange(1, 400, dtype=np.uint64), int(rng.integers(0, 6)),
                             replace=False)
        # a query weight is a rating's: 0 and below too
        q_weights = rng.random(len(q_items)) * rng.choice([1.0, 1.0, 0.0, -1.0], len(q_items))
        # the session's every item, repeats included: none, or up to max_interactions
        seen = rng.choice(np.concatenate((q_items, best[:20], np.arange(1, 400, dtype=np.uint64)
                                          )) if n else np.arange(1, 400, dtype=np.uint64),
                          int(rng.integers(1, 200)) if case % 4 else 0)
        found = rng.choice(np.arange(1, 500, dtype=np.uint64), int(rng.integers(0, 300)),
                           replace=False)
        latest = rng.integers(0, 3, len(found)) * rng.integers(1, 10**15, len(found))
        # products of two features: none, the product's own, or a random few
        pairs = [np.zeros(0, np.int64), reorder.PAIRS,
                 rng.integers(0, width, 2 * int(rng.integers(1, 9)))][case % 3]
        weights = rng.normal(0, 1, weighed + len(pairs) // 2) * \
            (rng.random(weighed + len(pairs) // 2) < 0.8)
        # the sequence model's values: none (no model), fewer than the answers, or one each
        sequence = -rng.random(int(rng.choice([0, max(n - 5, 0), n]))) * 8
        depth, k = int(rng.integers(0, 180)), int(rng.integers(0, 150))
        args = (best, values, df, float(rng.integers(0, 1000)), q_items, q_weights, seen, found,
                latest.astype(np.int64), sequence, weights, pairs, depth, k)
        got_items, got_scores = _native.reorder(*args)
        want_items, want_scores = reference_reorder.reorder(*args)
        assert got_items == want_items
        np.testing.assert_allclose(np.frombuffer(got_scores), np.frombuffer(want_scores),
                                   rtol=1e-12)
        compared += len(got_items) // 8
        assert _native.gather(found, latest.astype(np.int64), best) == \
            reference_reorder.gather(found, latest.astype(np.int64), best)
    assert compared > 3000
    for implementation in (_native.reorder, reference_reorder.reorder):
        with pytest.raises(ValueError, match=f"{weighed} weights"):
            implementation(best, values, df, 1.0, q_items, q_weights, seen, found,
                           latest.astype(np.int64), np.zeros(0), np.zeros(weighed - 1),
                           np.zeros(0), 10, 10)
        with pytest.raises(ValueError, match="one per pair"):  # a column no feature has
            implementation(best, values, df, 1.0, q_items, q_weights, seen, found,
                           latest.astype(np.int64), np.zeros(0), np.zeros(weighed + 1),
                           np.array([0, width]), 10, 10)


def test_the_one_call_order_equals_its_reference_on_random_cases() -> None:
    """``kernel.ranked`` compiled and its reference: rank, each answer's frequency (its
    candidate's when given one per candidate, else the table's, None when the table has
    none), the sequence values and the order give the same answers and scores; and both
    refuse the same malformed calls."""
    from service.kernel import _native, reference, reference_reorder
    from service.offline import sequencefit

    rng = np.random.default_rng(23)
    sessions = [rng.choice(np.arange(1, 80, dtype=np.uint64), int(rng.integers(2, 8)))
                for _ in range(200)]
    model: SequenceModel = sequencefit.train(sequencefit.examples(sessions), None, None,
                                             epochs=1).model({})
    known = np.arange(1, 300, dtype=np.uint64)
    counts = rng.integers(0, 90, len(known)).astype(np.float64)
    tables = {}  # each implementation's own: their slots are salted apart
    for module in (_native, reference):
        keys, values = np.zeros(1024, np.uint64), np.full(1024, np.nan)
        module.insert(keys, values, known, counts)
        tables[module.__name__] = keys, values
    weighed = reference_reorder.WEIGHED
    outcomes = {"answers": 0, "none": 0}
    for case in range(300):
        nc = int(rng.integers(0, 250))
        cands = rng.choice(np.arange(1, 400, dtype=np.uint64), nc, replace=False)
        scores = rng.random(nc) * rng.choice([1.0, 1.0, 0.0], nc)
        idf = float(rng.choice([0.0, 1.0, 2.0]))
        df = rng.integers(0, 60, nc).astype(np.float64) if idf or case % 2 else np.zeros(0)
        q = rng.choice(np.arange(1, 400, dtype=np.uint64), int(rng.integers(0, 6)),
                       replace=False)
        qw = rng.random(len(q))
        exclude = rng.choice(np.arange(1, 400, dtype=np.uint64), int(rng.integers(0, 40)))
        found = cands[: nc // 2 + 1].copy() if nc else np.zeros(0, np.uint64)
        latest = rng.integers(0, 10**15, len(found)).astype(np.int64)
        seen = np.concatenate((q, rng.choice(np.arange(1, 400, dtype=np.uint64), 3)))
        arrays = model.kernel_arrays if case % 3 else reorder.NO_MODEL
        weights = rng.normal(0, 1, weighed + len(reorder.PAIRS) // 2)
        depth, k = int(rng.choice([-3, 0, 5, 100, 160])), int(rng.integers(-2, 60))
        head: tuple[Any, ...] = (cands, scores, df, float(rng.integers(0, 1000)), idf, q, qw,
                                 float(rng.choice([0.0, 0.5])), exclude)
        tail: tuple[Any, ...] = (seen, found, latest, *arrays, weights, reorder.PAIRS, depth, k)
        native_args: tuple[Any, ...] = (*head, *tables[_native.__name__], *tail)
        reference_args: tuple[Any, ...] = (*head, *tables[reference.__name__], *tail)
        got, want = _native.ranked(*native_args), reference.ranked(*reference_args)
        if want is None:
            assert got is None
            outcomes["none"] += 1
            continue
        assert got is not None
        assert got[0] == want[0]
        np.testing.assert_allclose(np.frombuffer(got[1]), np.frombuffer(want[1]), rtol=1e-12)
        outcomes["answers"] += len(got[0]) // 8
    assert outcomes["answers"] > 2000 and outcomes["none"] > 10
    base: tuple[Any, ...] = (cands, scores, df, 1.0, 1.0, q, qw, 0.0, exclude, keys, values,
                             seen, found, latest, *reorder.NO_MODEL)
    no_pairs = np.zeros(0, np.int64)
    few_weights: tuple[Any, ...] = (*base, np.zeros(weighed - 1), no_pairs, 10, 10)
    odd_table: tuple[Any, ...] = (*base[:9], keys[:3], values[:3], *base[11:],
                                  np.zeros(weighed), no_pairs, 10, 10)
    short_df: tuple[Any, ...] = (*base[:2], df[:-1] if len(df) else np.zeros(1), *base[3:],
                                 np.zeros(weighed), no_pairs, 10, 10)
    for implementation in (_native.ranked, reference.ranked):
        with pytest.raises(ValueError, match=f"{weighed} weights"):
            implementation(*few_weights)
        with pytest.raises(ValueError, match="power-of-2"):
            implementation(*odd_table)
        with pytest.raises(ValueError, match="one frequency per candidate"):
            implementation(*short_df)


def test_the_compiled_logs_hold_to_log1p_at_every_scale() -> None:
    """The kernel takes log(1 + x) through log, correcting the rounding of 1 + x: on its own
    it is off by up to half a unit of 1 + x, which at an age of a microsecond is a
    relative error of 1e-5. Each weight here weighs one log feature (the frequency's, its
    inverse's, the age's: the last magnified until such an error would show in the
    scores)."""
    from service.kernel import _native, reference, reference_reorder

    n = 60
    best = np.arange(1, n + 1, dtype=np.uint64)
    values = np.linspace(2.0, 1.0, n)
    df = np.geomspace(1, 1e7, n).round()
    found = best.copy()
    newest = 10**15
    # a key unit to a tenth of a second: ages of 1e-11 to 1e-6 days, weighed a million times
    latest = newest - np.geomspace(1, 1e5, n).astype(np.int64)
    empty = np.zeros(0, np.uint64)
    for column, scale in ((1, 0.3), (2, 0.3), (5, 1e6)):
        weights = np.zeros(reference_reorder.WEIGHED + len(reorder.PAIRS) // 2)
        weights[column] = scale
        args = (best, values, df, 3e7, empty, np.zeros(0), empty, found, latest, np.zeros(0),
                weights, reorder.PAIRS, n, n)
        got_items, got = _native.reorder(*args)
        want_items, want = reference_reorder.reorder(*args)
        assert got_items == want_items
        np.testing.assert_allclose(np.frombuffer(got), np.frombuffer(want), rtol=1e-12)
    # rank's idf: the same log of sessions over each candidate's frequency
    items, scores = _native.rank(best, values, df, 3e7, 1.0, empty, np.zeros(0), 0.0, empty, n)
    want_items, want = reference.rank(best, values, df, 3e7, 1.0, empty, np.zeros(0), 0.0,
                                      empty, n)
    assert items == want_items
    np.testing.assert_allclose(np.frombuffer(scores), np.frombuffer(want), rtol=1e-14)


def test_the_compiled_order_keeps_the_references_constants() -> None:
    import re
    from pathlib import Path

    from service.kernel import reference_reorder

    source = (Path(__file__).parent.parent / "service/kernel/native/reorder.c").read_text()
    defined = dict(re.findall(r"#define (\w+) (\S+)\n", source))
    assert float(defined["WIDTH"]) == reference_reorder.WIDTH
    assert float(defined["WEIGHED"]) == reference_reorder.WEIGHED
    assert float(defined["LENGTH_CAP"]) == reference_reorder.LENGTH_CAP
    # the kernels' columns are the parameters' (core/parameters.py names them)
    assert (len(reorder.COLUMNS), len(reorder.FEATURES)) == \
        (reference_reorder.WIDTH, reference_reorder.WEIGHED)
    assert float(defined["AGE_CAP"]) == reference_reorder.AGE_CAP
    assert float(defined["DAY_KEYS"]) == reference_reorder.DAY_KEYS
    assert float(defined["SCORE_FLOOR"]) == reference_reorder.SCORE_FLOOR


def _random_sequence_model(rng: np.random.Generator, n: int, d: int, crowded: bool
                           ) -> SequenceModel:
    """``crowded``: every key shares its top bits, the ids an attacker grinds into one range
    of the directory."""
    keys = rng.integers(1, 2**63, n, dtype=np.uint64) * np.uint64(2)
    if crowded:
        keys = (keys >> np.uint64(20)) | np.uint64(0xABCD << 48)
    items = np.unique(keys)

    def rows() -> npt.NDArray[np.float32]:
        out = rng.normal(0, 0.3, (len(items) + 1, d)).astype(np.float32)
        out[0] = 0.0
        return out

    return SequenceModel(items, rows(), rows(), rows(),
                         rng.normal(0, 1, len(items) + 1).astype(np.float32),
                         rng.random(int(rng.integers(1, 12))).astype(np.float32))


def test_the_sequence_values_equal_their_reference_on_random_cases() -> None:
    """``kernel.sequence_values`` compiled and its reference: the same values, on models of
    every size (none learned included), sessions longer and shorter than the window, answers
    learned or not, and keys crowded into one range of the directory."""
    from service.kernel import _native, reference_sequence

    rng = np.random.default_rng(12)
    compared = 0
    for case in range(200):
        model = _random_sequence_model(rng, int(rng.integers(0, 300)), int(rng.integers(1, 70)),
                                       crowded=case % 5 == 0)
        unknown = rng.integers(1, 2**63, 20, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        pool = np.concatenate((model.items, unknown))
        session = rng.choice(pool, int(rng.integers(0, 15)))
        answers = rng.choice(pool, int(rng.integers(0, 120)))
        table, directory, codes = model.serving
        args = (table, directory, codes, model.inputs, model.last, model.positions, session,
                answers)
        got = np.frombuffer(_native.sequence_values(*args))
        want = np.frombuffer(reference_sequence.sequence_values(*args))
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
        compared += int((got != 0).sum())
    assert compared > 3000
    for implementation in (_native.sequence_values, reference_sequence.sequence_values):
        with pytest.raises(ValueError, match="directory"):
            implementation(table, directory[:-1], codes, model.inputs, model.last,
                           model.positions, session, answers)
        with pytest.raises(ValueError, match="one size"):
            implementation(table, directory, codes[:-1], model.inputs, model.last,
                           model.positions, session, answers)


def test_the_serving_layout_keeps_the_models_values() -> None:
    """The coded outputs are within half a step of the model's (a 254th of the row's
    largest), so the values serving reads are the float model's to a small fraction of
    their spread."""
    rng = np.random.default_rng(13)
    model = _random_sequence_model(rng, 2000, 64, crowded=False)
    table, _, codes = model.serving
    step = table["scale"][:, None]
    assert np.all(np.abs(codes * step - model.outputs[1:]) <= step / 2 + 1e-7)
    for _ in range(20):
        session, answers = rng.choice(model.items, 6), rng.choice(model.items, 100)
        got = model.values(session, answers)
        window = model.rows_of(session[::-1][:len(model.positions)])
        state = model.positions[:len(window)] @ model.inputs[window] + model.last[window[0]]
        rows = model.rows_of(answers)
        exact = model.outputs[rows] @ state + model.bias[rows]
        exact = exact - exact.max()
        assert np.abs(got - exact).max() < 0.01 * (exact.max() - exact.min())


def test_the_compiled_sequence_values_keep_the_references_constants() -> None:
    import re
    from pathlib import Path

    from service.kernel import reference_sequence

    source = (Path(__file__).parent.parent / "service/kernel/native/sequence.c").read_text()
    defined = dict(re.findall(r"#define (\w+) (\S+)\n", source))
    assert int(defined["DIRECTORY_SHIFT"]) == reference_sequence.DIRECTORY_SHIFT
    assert int(defined["STATE_RANGE"]) == reference_sequence.STATE_RANGE
    assert re.search(r"uint64_t key;\s+float scale;\s+float bias;", source)
    assert reference_sequence.TABLE.names == ("key", "scale", "bias")


def test_the_frequencies_known_without_a_round_trip_are_those_of_a_lookup() -> None:
    """``FrequencyCache.known`` (a request's frequencies with no coroutine and no Redis) gives
    the lookup's values when the table holds every item and the sessions' count, and None,
    sending the request to Redis, when one item is missing, no count was read yet, or the
    table is past its age (whose next lookup clears it)."""
    from service.store.caches import FrequencyCache

    cache = FrequencyCache(ttl=60.0)
    items = np.array([5, 9, 11], np.uint64)
    cache.add(items, np.array([3.0, 0.0, 7.0]))
    assert cache.known(items) is None  # the sessions' count not read yet
    cache.sessions = 40.0
    got = cache.known(items[::-1].copy())
    assert got is not None and np.frombuffer(got).tolist() == [7.0, 0.0, 3.0]
    assert np.frombuffer(got).tolist() == cache.lookup(items[::-1].copy())[0].tolist()
    assert cache.known(np.zeros(0, np.uint64)) == b""
    assert cache.known(np.array([5, 12], np.uint64)) is None  # 12 unknown
    cache.since -= 61.0
    assert cache.known(items) is None  # aged: Redis is asked, and the table cleared
    cache.lookup(items)
    assert cache.size == 0
