"""Arrays on transparent huge pages, for the tables a request reads at scattered rows.

A request that the sequence model orders reads a few hundred rows spread over tens of MiB of
the model. On 4 KiB pages nearly every one of those rows is a TLB miss, and the page walks,
and the entries they evict, slow the rest of the request (the interpreter's own working set)
by more than the reads themselves cost; on 2 MiB pages the whole model takes a few entries.
Linux serves transparent huge pages to a private anonymous mapping advised MADV_HUGEPAGE
(its default setting, "madvise", serves them to nothing else); where it does not (another
system, huge pages off, none free), the copies are the same arrays on ordinary pages.
"""

from __future__ import annotations

import mmap
from collections.abc import Sequence
from contextlib import suppress
from typing import Any

import numpy as np
import numpy.typing as npt

HUGE_PAGE = 2 << 20
"""The x86-64 and arm64 huge page: the mapping is aligned to it and spans whole ones."""

LINE = 64
"""Each array starts on a cache line, as an allocator would place it."""


def on_huge_pages(arrays: Sequence[npt.NDArray[Any]]) -> list[npt.NDArray[Any]]:
    """Copies of ``arrays`` (same values and shapes, writable, in the machine's byte order) in
    one mapping advised for huge pages. The mapping lives as long as any of the copies."""
    sizes = [-(-array.nbytes // LINE) * LINE for array in arrays]
    span = max(-(-sum(sizes) // HUGE_PAGE), 1) * HUGE_PAGE
    # one huge page more than the arrays need, so that they can start on a huge page's
    # boundary; the pages before that boundary are never touched, so never backed
    flags = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
    region = mmap.mmap(-1, span + HUGE_PAGE, flags=flags)
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is not None:
        with suppress(OSError):  # a kernel built without them: ordinary pages
            region.madvise(advice)
    memory = np.frombuffer(region, np.uint8)
    at = -memory.ctypes.data % HUGE_PAGE
    placed = []
    for array, size in zip(arrays, sizes, strict=True):
        # in the machine's byte order, as the kernel reads them (records keep their fields')
        dtype = array.dtype if array.dtype.fields else array.dtype.newbyteorder("=")
        copy = memory[at:at + array.nbytes].view(dtype).reshape(array.shape)
        copy[...] = array
        placed.append(copy)
        at += size
    return placed
