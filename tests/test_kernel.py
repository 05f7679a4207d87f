"""The kernel facade: every compiled function has a pure reference, and the two give the same
results (the scoring stages are compared in test_scoring.py; the tables, the RESP packing and
the answer's scores here). ``SESSIONREC_KERNEL`` chooses; without the extension the reference
serves, with a warning."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service import kernel
from service.core.layout import ITEM_PERSON, SESSION_PERSON, item_hash, session_hash
from service.kernel import reference

pytestmark = pytest.mark.kernel  # ./dev test runs these on both kernels

ROOT = Path(__file__).resolve().parent.parent
assert kernel.native is not None, "the extension is built by ./dev (pip install -e .)"
native: ModuleType = kernel.native

IMPLEMENTATIONS = pytest.mark.parametrize("impl", [native, reference], ids=["native", "reference"])


def test_every_function_has_both_implementations() -> None:
    for name in kernel.FUNCTIONS:
        assert callable(getattr(native, name)) and callable(getattr(reference, name)), name
    public = {n for n in dir(native) if not n.startswith("_")}
    assert public == set(kernel.FUNCTIONS)  # a new compiled function needs its reference


def test_the_facade_switches_every_caller() -> None:
    before = kernel.NAME
    try:
        kernel.use("reference")
        assert kernel.score is reference.score and kernel.pack is reference.pack
        kernel.use("native")
        assert kernel.score is native.score and kernel.objects_get is native.objects_get
    finally:
        kernel.use(before)


def test_the_environment_chooses_the_implementation() -> None:
    probe = "from service import kernel; print(kernel.NAME)"
    for wanted, expected in (("reference", "reference"), ("native", "native"), ("", "native")):
        env = {**os.environ, kernel.ENV: wanted}
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                             text=True, check=True, cwd=ROOT)
        assert out.stdout.strip() == expected
    bad = subprocess.run([sys.executable, "-c", probe], env={**os.environ, kernel.ENV: "fast"},
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode != 0 and "must be 'native' or 'reference'" in bad.stderr


def test_without_the_extension_the_reference_serves_with_a_warning(tmp_path: Path) -> None:
    """A machine without a C compiler: the package has no _native module."""
    shadow = tmp_path / "service"
    shadow.mkdir()
    # a copy of the package without the built extension, imported ahead of the real one
    for path in (ROOT / "service").rglob("*"):
        if path.suffix in (".so", ".pyd") or "__pycache__" in path.parts:
            continue
        target = shadow / path.relative_to(ROOT / "service")
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    probe = ("import warnings; warnings.simplefilter('always'); from service import kernel; "
             "print(kernel.NAME, kernel.native)")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), kernel.ENV: ""}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                         check=True, cwd=tmp_path)
    assert out.stdout.split() == ["reference", "None"]
    assert "compiled kernel is not built" in out.stderr
    asked = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                           env={**env, kernel.ENV: "native"}, cwd=tmp_path)
    assert asked.returncode != 0 and "not built" in asked.stderr


@IMPLEMENTATIONS
def test_the_frequency_table(impl: Any) -> None:
    rng = np.random.default_rng(11)
    keys = np.zeros(1 << 10, np.uint64)
    values = np.full(1 << 10, np.nan)
    items = rng.integers(0, 2**64 - 1, 400, dtype=np.uint64, endpoint=True)
    assert impl.insert(keys, values, items, np.arange(400, dtype=np.float64)) == len(set(
        items.tolist()))
    assert impl.insert(keys, values, items[:5], np.full(5, 7.0)) == 0  # refreshed, not new
    unknown = np.array([1, 2], np.uint64)
    found, missing = impl.lookup(keys, values, np.concatenate((items, unknown)))
    got = np.frombuffer(found, np.float64)
    assert list(got[:5]) == [7.0] * 5 and list(got[5:400]) == list(range(5, 400))
    assert list(got[400:]) == [0.0, 0.0] and list(np.frombuffer(missing, np.uint64)) == [1, 2]
    with pytest.raises(ValueError, match="NaN"):
        impl.insert(keys, values, unknown, np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="power-of-2"):
        impl.lookup(np.zeros(3, np.uint64), np.zeros(3), unknown)
    tiny_keys, tiny_values = np.zeros(4, np.uint64), np.full(4, np.nan)
    with pytest.raises(ValueError, match="full"):
        impl.insert(tiny_keys, tiny_values, np.arange(1, 6, dtype=np.uint64), np.ones(5))


U64S = st.lists(st.integers(0, 2**64 - 1), max_size=60)


@IMPLEMENTATIONS
@settings(max_examples=200, deadline=None)
@given(members=U64S, items=U64S, inside=st.booleans())
def test_select_keeps_the_items_in_or_out_of_a_table(impl: Any, members: list[int],
                                                     items: list[int], inside: bool) -> None:
    keys = np.zeros(1 << 8, np.uint64)
    values = np.full(1 << 8, np.nan)
    impl.insert(keys, values, np.array(members, np.uint64), np.ones(len(members)))
    asked = items + members[:5]  # some members, some not
    scores = np.arange(len(asked), dtype=np.float64)
    got, their = impl.select(keys, values, np.array(asked, np.uint64), scores, inside)
    wanted = [(item, float(n)) for n, item in enumerate(asked)
              if (item in set(members)) == inside]
    assert list(zip(np.frombuffer(got, np.uint64).tolist(),
                    np.frombuffer(their, np.float64).tolist(), strict=True)) == wanted
    with pytest.raises(ValueError, match="one value per item"):
        impl.select(keys, values, np.array([1, 2], np.uint64), np.ones(1), inside)


@IMPLEMENTATIONS
@settings(max_examples=200, deadline=None)
@given(items=U64S, taken=U64S, k=st.integers(0, 70))
def test_first_absent_finds_the_first_k_items_not_taken(impl: Any, items: list[int],
                                                       taken: list[int], k: int) -> None:
    taken = taken + items[::3]
    got = np.frombuffer(impl.first_absent(np.array(items, np.uint64),
                                          np.array(taken, np.uint64), k), np.uint32)
    assert got.tolist() == [n for n, item in enumerate(items) if item not in set(taken)][:k]


@IMPLEMENTATIONS
@settings(max_examples=300, deadline=None)
@given(ids=st.lists(st.text(st.characters(codec="utf-8") | st.characters(
    min_codepoint=0xD800, max_codepoint=0xDFFF), max_size=300), max_size=8))
def test_id_hashes_are_the_layouts(impl: Any, ids: list[str]) -> None:
    """Any text (lone surrogates, lengths across BLAKE2b's 128-byte blocks) hashes as
    ``layout.item_hash`` and ``session_hash`` do."""
    ids = [*ids, "", "x" * 128, "y" * 129, "é" * 64]
    assert impl.hashes(ids, ITEM_PERSON) == b"".join(map(item_hash, ids))
    assert impl.hashes(tuple(ids), SESSION_PERSON) == b"".join(map(session_hash, ids))


def test_many_ids_hash_as_the_layout_says_four_at_a_time_or_one() -> None:
    """The compiled hashing runs four single-block ids at once (AVX2 lanes, where the CPU has
    them): lists of every length, ids on both sides of the 128-byte block and lone surrogates
    between them, give each id its own digest."""
    ids = [("x" * (n % 140)) + str(n) for n in range(1003)]
    ids[7], ids[500] = "\ud800", "é" * 64
    for count in (0, 1, 3, 4, 5, 8, 9, 1003):
        assert native.hashes(ids[:count], ITEM_PERSON) == b"".join(map(item_hash, ids[:count]))
    valid = [i for i in ids if "\ud800" not in i]
    assert native.checked_hashes(valid, ITEM_PERSON, 1000) == b"".join(map(item_hash, valid))


def test_hashes_refuses_what_is_not_an_id() -> None:
    for impl in (native, reference):
        with pytest.raises((TypeError, AttributeError)):
            impl.hashes(["a", 7], ITEM_PERSON)
    with pytest.raises(ValueError, match="16 bytes"):
        native.hashes(["a"], b"x" * 17)


@IMPLEMENTATIONS
def test_the_object_tables(impl: Any) -> None:
    """Random puts, replacements and pops against a dict: every get agrees."""
    rng = np.random.default_rng(12)
    keys = np.zeros(1 << 9, np.uint64)
    slots: list[Any] = [None] * (1 << 9)
    truth: dict[int, bytes] = {}
    pool = rng.integers(1, 2**64 - 1, 300, dtype=np.uint64).tolist()
    for step in range(3000):
        h = int(pool[int(rng.integers(0, len(pool)))])
        if rng.random() < 0.4 and truth:
            assert impl.objects_pop(keys, slots, h) == truth.pop(h, None)
        elif len(truth) < 200:
            value = f"v{step}".encode()
            assert impl.objects_put(keys, slots, h, value) == truth.get(h)
            truth[h] = value
    probe = np.array([*pool, 7, 0], np.uint64)
    assert impl.objects_get(keys, slots, probe) == [truth.get(int(h)) for h in probe]
    assert np.count_nonzero(keys) == len(truth) == sum(s is not None for s in slots)
    with pytest.raises(ValueError, match="hash 0"):
        impl.objects_put(keys, slots, 0, b"x")


@IMPLEMENTATIONS
def test_resp_packing(impl: Any) -> None:
    args: list[Any] = [b"k\r\n", "é\ud800", 12, -3, 1.5, 1e-300, True, b""]
    expected = native.pack(b"SET", args)
    assert impl.pack(b"SET", args) == expected
    assert expected.startswith(b"*9\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n")
    with pytest.raises(TypeError, match="cannot send"):
        impl.pack(b"GET", [None])
    hashes = np.random.default_rng(13).integers(0, 2**64 - 1, 50, dtype=np.uint64)
    prefixes = [b"ns:{p0}:h:", b"ns:{p1}:h:", b"ns:{p2}:h:"]
    assert impl.mget(hashes, prefixes) == native.mget(hashes, prefixes)
    assert impl.mget(np.zeros(0, np.uint64), prefixes) == b"*1\r\n$4\r\nMGET\r\n"
    with pytest.raises(ValueError, match="no prefixes"):
        impl.mget(hashes, [])


@IMPLEMENTATIONS
def test_relative_scores(impl: Any) -> None:
    rng = np.random.default_rng(14)
    for n in (0, 1, 30):
        scores = np.sort(rng.random(n) * 10.0 ** rng.integers(-3, 4))[::-1].copy()
        assert impl.relative(scores) == native.relative(scores)
        assert impl.relative(scores) == ((scores / scores[0]).round(6).tolist() if n else [])


def test_reseeding_changes_where_keys_land() -> None:
    """Each process salts its tables (hashes are public); the reference does too."""
    placements = set()
    for _ in range(3):
        reference.reseed()
        keys, values = np.zeros(1 << 12, np.uint64), np.full(1 << 12, np.nan)
        reference.insert(keys, values, np.array([7, 8, 9], np.uint64), np.ones(3))
        placements.add(tuple(np.flatnonzero(~np.isnan(values)).tolist()))
    assert len(placements) == 3


# --- grindable hash collisions in the kernel's tables ----------------------------------------
def test_hashes_chosen_to_collide_spread_over_the_kernel_tables() -> None:
    """Item and session hashes are public (BLAKE2b of ids a client picks). Hashes that differ
    only in their top bits all landed in one probe run of the unsalted tables; salted, they
    spread like any others."""
    import numpy as np


    keys = np.array([(n + 1) << 44 for n in range(1000)], np.uint64)
    table_keys = np.zeros(1 << 13, np.uint64)
    table_values = np.full(1 << 13, np.nan)
    assert kernel.insert(table_keys, table_values, keys, np.ones(1000)) == 1000
    occupied = ~np.isnan(table_values)
    longest = run = 0
    for used in np.concatenate((occupied, occupied)):  # runs wrap around
        run = run + 1 if used else 0
        longest = max(longest, run)
    assert longest < 40, longest


def test_each_process_salts_its_tables_differently() -> None:
    import subprocess
    import sys

    probe = ("import numpy as np; from service import kernel; k = np.zeros(1 << 16, np.uint64); "
             "v = np.full(1 << 16, np.nan); "
             "kernel.insert(k, v, np.array([7, 8, 9], np.uint64), np.ones(3)); "
             "print(np.flatnonzero(~np.isnan(v)).tolist())")
    runs = {subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                           check=True).stdout for _ in range(3)}
    assert len(runs) == 3


def _arranged(impl: Any, positions: list[int], scores: list[float], keep: list[bool],
              held: list[float]) -> tuple[list[int], list[float], int, int]:
    index, values, scored, popular = impl.arrange(
        np.array(positions, np.int64), np.array(scores, np.float64),
        np.array([False, *keep], np.uint8), np.array(held, np.float64), 0.5)
    return (np.frombuffer(index, np.int64).tolist(), np.frombuffer(values, np.float64).tolist(),
            scored, popular)


@IMPLEMENTATIONS
def test_arrange_puts_scored_then_held_then_unknown_items(impl: Any) -> None:
    """Five given items: the session ranks the 4th (score 8) and the 2nd (score 2) and an item
    not given (0); the rules leave out the 5th; the 1st is held by 3 sessions, the 3rd by none."""
    assert _arranged(impl, [4, 0, 2], [8.0, 6.0, 2.0], [True, True, True, True, False],
                     [3.0, 9.0, 0.0, 1.0, 7.0]) == (
        [3, 1, 0, 2], [1.0, 0.25, 0.5 * 0.25 * 3.0 / 3.0, 0.0], 2, 1)
    # nothing scored: the held items from 1 down (at half of it), ties in their given order
    assert _arranged(impl, [], [], [True] * 4, [2.0, 0.0, 4.0, 2.0]) == (
        [2, 0, 3, 1], [0.5, 0.25, 0.25, 0.0], 0, 3)
    with pytest.raises(ValueError):
        _arranged(impl, [6], [1.0], [True] * 5, [0.0] * 5)
    with pytest.raises(ValueError):
        _arranged(impl, [1], [1.0], [True] * 4, [0.0] * 5)


@IMPLEMENTATIONS
@settings(max_examples=300, deadline=None)
@given(data=st.data(), n=st.integers(0, 60))
def test_arrange_compiled_equals_reference(impl: Any, data: st.DataObject, n: int) -> None:
    places = data.draw(st.lists(st.integers(1, n), unique=True, max_size=n)) if n else []
    positions = places + data.draw(st.lists(st.just(0), max_size=3))
    data.draw(st.randoms()).shuffle(positions)
    scores = sorted(data.draw(st.lists(st.floats(0.01, 100), min_size=len(positions),
                                       max_size=len(positions))), reverse=True)
    keep = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    held = data.draw(st.lists(st.sampled_from([0.0, 1.0, 2.0, 5.0, 1e6]), min_size=n,
                              max_size=n))
    got = _arranged(impl, positions, scores, keep, held)
    assert got == _arranged(reference, positions, scores, keep, held)
    index = got[0]
    assert sorted(index) == [p for p in range(n) if keep[p]]  # each kept item, once


@IMPLEMENTATIONS
@settings(max_examples=200, deadline=None)
@given(data=st.data(), n=st.integers(0, 40), k=st.integers(-1, 50))
def test_rows_compiled_equals_reference(impl: Any, data: st.DataObject, n: int, k: int
                                        ) -> None:
    ids = [f"item-{m}" for m in range(n)]
    index = data.draw(st.permutations(range(n)))
    scores = data.draw(st.lists(st.floats(-1e9, 1e9) | st.sampled_from([0.1234565, 2.5e-7]),
                                min_size=n, max_size=n))
    args = (ids, np.array(index, np.int64), np.array(scores, np.float64), k)
    rows = impl.rows(*args)
    assert rows == reference.rows(*args)
    assert [r["id"] for r in rows] == [ids[m] for m in index][:max(k, 0)]
    assert all(abs(r["score"] - s) <= 5e-7 + 1e-15 * abs(s)  # 6 decimals
               for r, s in zip(rows, scores, strict=False))
    with pytest.raises(IndexError):
        impl.rows(ids, np.array([n], np.int64), np.array([1.0]), 1)


@IMPLEMENTATIONS
@settings(max_examples=300, deadline=None)
@given(ids=st.lists(st.text(max_size=12) | st.integers() | st.none(), max_size=30),
       longest=st.integers(1, 12))
def test_checked_hashes_are_the_hashes_of_a_valid_list_and_none_otherwise(
        impl: Any, ids: list[Any], longest: int) -> None:
    got = impl.checked_hashes(ids, ITEM_PERSON, longest)
    valid = all(type(i) is str and 0 < len(i) <= longest for i in ids) \
        and len(set(ids)) == len(ids)
    assert got == (b"".join(map(item_hash, ids)) if valid else None)
    assert got == reference.checked_hashes(ids, ITEM_PERSON, longest)


def test_a_rerank_list_whose_ids_hash_alike_is_refused_naming_the_second() -> None:
    """Two ids whose 64-bit hashes collide are one item to the store: the list is refused
    naming the later one, as a repeat is (such a pair has to be searched for)."""
    from service.requests.rerank import rerank_request
    from service.requests.values import Invalid
    from service.settings import Settings

    def colliding(ids: Any, person: bytes, *rest: Any) -> Any:
        if rest:
            return None  # the compiled pass refuses, as it would on a collision
        return b"".join(b"\1" * 8 if i in ("b", "c") else item_hash(i) for i in ids)

    before = (kernel.checked_hashes, kernel.hashes)
    kernel.checked_hashes, kernel.hashes = colliding, colliding  # type: ignore[assignment]
    try:
        with pytest.raises(Invalid) as refused:
            rerank_request({"user_interactions": {}, "items": ["a", "b", "c"]}, Settings(), 0.0)
    finally:
        kernel.checked_hashes, kernel.hashes = before
    assert refused.value.field == "items[2]" and "same item" in refused.value.message


@IMPLEMENTATIONS
@settings(max_examples=300, deadline=None)
@given(data=st.data(), n=st.integers(0, 30), k=st.integers(-1, 40))
def test_rows_json_is_the_rows_encoded(impl: Any, data: st.DataObject, n: int, k: int) -> None:
    """The rows written as JSON: any text as an id (quotes, backslashes, control characters,
    any plane), any score; the decoded array is ``rows``' exactly, and both implementations
    write the same bytes. A lone surrogate or an unwritable score: None."""
    ids = data.draw(st.lists(st.text(st.characters(codec="utf-8"), min_size=1, max_size=12),
                             min_size=n, max_size=n))
    index = np.array(data.draw(st.permutations(range(n))), np.int64)
    scores = np.array(data.draw(st.lists(
        st.floats(-1e9, 1e9) | st.sampled_from([0.0, -0.0, 1.0, 0.1234565, 2.5e-7, 1e-6]),
        min_size=n, max_size=n)), np.float64)
    written = impl.rows_json(ids, index, scores, k)
    assert written == reference.rows_json(ids, index, scores, k)
    assert written is not None and orjson.loads(written) == impl.rows(ids, index, scores, k)
    if n:
        assert impl.rows_json([*ids[:-1], "\ud800"], index, scores, k) is None or k <= int(
            np.flatnonzero(index == n - 1)[0])
        assert impl.rows_json(ids, index, np.full(n, np.inf), max(k, 1)) is None
        assert impl.rows_json(ids, index, np.full(n, 1e12), max(k, 1)) is None
