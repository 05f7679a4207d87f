"""Arrays on huge pages (the sequence model's, the frequency table's): the same values, advised
to the kernel."""

from __future__ import annotations

import gc
import mmap
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from service.core.sequence import SequenceModel
from service.kernel import reference_sequence
from service.kernel.pages import HUGE_PAGE, LINE, on_huge_pages
from service.store.caches import FrequencyCache


def _advised_huge(array: npt.NDArray[Any]) -> bool:
    """Whether the mapping holding ``array`` is advised MADV_HUGEPAGE (its VmFlags in
    /proc/self/smaps hold ``hg``)."""
    address = array.ctypes.data
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0] if line else ""
        if "-" in head and all(c in "0123456789abcdef-" for c in head):
            start, end = (int(x, 16) for x in head.split("-"))
            inside = start <= address < end
        elif inside and line.startswith("VmFlags:"):
            return "hg" in line.split()[1:]
    return False


def _placed(array: npt.NDArray[Any]) -> bool:
    """Whether ``array`` lives in a mapping of ``on_huge_pages`` (its bases lead to an mmap).
    The test of what was not moved: whether the kernel advised an ordinary array's memory
    depends on what ran before (numpy advises its own large allocations, and the heap the
    allocator later hands out for small ones may lie inside them)."""
    base: Any = array
    while isinstance(base, np.ndarray | memoryview):
        base = base.base if isinstance(base, np.ndarray) else base.obj
    return isinstance(base, mmap.mmap)


def test_copies_hold_the_same_values_each_on_a_cache_line() -> None:
    rng = np.random.default_rng(3)
    records = np.zeros(5, reference_sequence.TABLE)
    records["key"] = np.arange(5, dtype=np.uint64) * 7
    records["scale"] = rng.random(5)
    arrays: list[npt.NDArray[Any]] = [
        rng.random((33, 7)).astype(np.float32), np.arange(11, dtype=np.uint32),
        np.zeros(0, np.int8), records, np.arange(3, dtype=">f4"),
        rng.integers(-9, 9, (4, 3)).astype(np.int8)]
    placed = on_huge_pages(arrays)
    assert placed[0].ctypes.data % HUGE_PAGE == 0  # the first on a huge page's boundary
    for original, copy in zip(arrays, placed, strict=True):
        assert copy.shape == original.shape and copy.flags.writeable
        assert copy.ctypes.data % LINE == 0
        np.testing.assert_array_equal(copy, original)
    assert placed[4].dtype.isnative and placed[4].tolist() == [0.0, 1.0, 2.0]  # byte order
    assert placed[3].dtype == reference_sequence.TABLE
    copy = placed[0]
    del placed, arrays
    gc.collect()
    copy[0, 0] = 2.5  # the mapping outlives the other copies
    assert copy[0, 0] == 2.5 and _advised_huge(copy)


def test_a_decoded_model_and_its_serving_layout_are_on_huge_pages() -> None:
    """What a request reads at scattered rows: the input vectors of its session's items, and
    its answers' records and codes."""
    rng = np.random.default_rng(5)
    # the layout finds records by their keys' top bits: keys spread over the whole range
    items = np.unique(rng.integers(1, 2**64 - 1, 299, dtype=np.uint64))
    rows, d = len(items) + 1, 16
    inputs, last, outputs = (rng.normal(size=(rows, d)).astype(np.float32) for _ in range(3))
    model = SequenceModel(items, inputs, last, outputs, rng.normal(size=rows).astype(np.float32),
                          rng.random(4).astype(np.float32))
    decoded = SequenceModel.from_bytes(model.to_bytes())
    assert not _placed(model.inputs)
    for array in (decoded.inputs, decoded.last, *decoded.serving):
        assert _placed(array) and _advised_huge(array)
    np.testing.assert_array_equal(decoded.inputs, model.inputs)
    for got, want in zip(decoded.serving, model.serving, strict=True):
        np.testing.assert_array_equal(got, want)
    session, answers = items[:5], np.concatenate((items[10:30], [np.uint64(12345)]))
    np.testing.assert_array_equal(decoded.values(session, answers),
                                  model.values(session, answers))


def test_the_frequency_table_moves_onto_huge_pages_as_it_grows() -> None:
    """A request probes a few hundred of its slots, scattered: once the table spans half a
    huge page it is on them, its frequencies kept across the moves."""
    cache = FrequencyCache()
    assert not _placed(cache.keys)  # a small table stays where numpy put it
    items = np.arange(1, 40_001, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    for part in np.array_split(np.arange(len(items)), 8):
        cache.add(items[part], part.astype(np.float64) + 1)
    assert cache.keys.nbytes + cache.values.nbytes >= HUGE_PAGE // 2
    assert all(_placed(a) and _advised_huge(a) for a in (cache.keys, cache.values))
    values, missing = cache.lookup(np.concatenate((items[::997], [np.uint64(5)])))
    assert values.tolist() == [*(np.arange(0, 40_000, 997) + 1.0).tolist(), 0.0]
    assert missing.tolist() == [5]
