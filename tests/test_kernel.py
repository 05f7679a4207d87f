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
