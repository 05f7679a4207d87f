"""The sequence model, free of I/O: a next-item model learned from the stream's sessions in
the background (``service/offline/sequencefit.py`` trains it, the workers start its runs),
whose score for each of the top answers is one more feature of the learned order
(``order_sequence``, service/core/reorder.py).

The neighbourhood sees which sessions share the current one's items; it does not learn what
an item's position in the session says, nor that two items are alike when no session held
both. The model does, from every session at once: each item has an input vector, a vector
it has as the session's last item, and an output vector and bias; a session's state is its
most recent items' input vectors weighted by position (``WINDOW`` of them, newest first,
the weights learned) plus its last item's vector, and an answer's score is that state times
the answer's output vector plus its bias (a softmax over the items gives the next click's
probability).

Row 0 of every matrix is the unknown item: zeros, so an item the model never learned adds
nothing to a session's state. ``values`` scores the answers as the learned order reads them.

The stored form (``to_bytes``/``from_bytes``) holds the weights serving needs and the run's
facts; the training state beside it (the optimiser's sums) is the trainer's alone.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt

from service import kernel
from service.kernel import pages, reference_sequence
from service.kernel.reference_tables import Buffer

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]

WINDOW = 10
"""Most recent session items the state reads: beyond them the learned position weights are
near zero."""

DIMENSIONS = 64
"""The vectors' length."""

MAGIC = b"SRSQ1"

ModelArrays = tuple[Buffer, Buffer, Buffer, Buffer, Buffer, Buffer]
"""What ``kernel.ranked`` reads of a model (``SequenceModel.kernel_arrays``)."""


@dataclass(frozen=True)
class SequenceModel:
    """A trained model. ``items`` is sorted; item ``items[j]``'s row is ``j + 1``."""

    items: U64
    inputs: F32  # (rows, DIMENSIONS), row 0 the unknown item
    last: F32  # the same, as the session's last item
    outputs: F32
    bias: F32  # (rows,)
    positions: F32  # (WINDOW,): the weight of the item d places from the end
    facts: dict[str, Any] = field(default_factory=dict)
    """What the run that trained it says of it (``GET /model`` shows them)."""

    @property
    def size(self) -> int:
        return len(self.items)

    def rows_of(self, hashes: U64) -> I64:
        """Each item's row (0: not learned)."""
        return reference_sequence.rows_of(self.items, hashes)

    def state(self, windows: I64) -> F32:
        """Each session's state: ``windows`` holds one row per session, its items' rows
        newest first (0 where it has fewer than ``WINDOW``)."""
        weights = self.positions[None, :windows.shape[1]] * (windows > 0)
        return np.asarray(np.einsum("bw,bwd->bd", weights, self.inputs[windows])
                          + self.last[windows[:, 0]], np.float32)

    @cached_property
    def serving(self) -> reference_sequence.Layout:
        """The layout requests read the model through (``reference_sequence.layout``): built
        once per model, where it is decoded, not in the first request; on huge pages, since a
        request reads a hundred answers' records and codes at scattered rows."""
        return reference_sequence.Layout(*pages.on_huge_pages(
            reference_sequence.layout(self.items, self.outputs, self.bias)))

    @cached_property
    def kernel_arrays(self) -> ModelArrays:
        """What ``kernel.ranked`` reads of the model, in its order: the serving layout, then
        the input, last-item and position weights."""
        return (*self.serving, self.inputs, self.last, self.positions)

    def values(self, session: U64, answers: U64) -> F64:
        """The learned order's feature for each answer to a session (its items oldest first):
        the answer's score minus the best answer's, so at most 0. An answer the model never
        learned takes the lowest known answer's value; every value is 0 when the model knows
        no answer or none of the session's items (then the feature orders nothing). The
        kernel's (``sequence_values``): it runs on every request the feature orders."""
        return np.frombuffer(self.packed_values(np.ascontiguousarray(session, np.uint64),
                                                np.ascontiguousarray(answers, np.uint64)),
                             np.float64)

    def packed_values(self, session: U64, answers: U64) -> bytes:
        """``values`` as the kernel gives them (float64 bytes), for arrays already contiguous
        (a request's are): what ``reorder.served`` hands on to the order's kernel as it is."""
        table, directory, codes = self.serving
        return kernel.sequence_values(table, directory, codes, self.inputs, self.last,
                                      self.positions, session, answers)

    def to_bytes(self) -> bytes:
        header = json.dumps({"rows": len(self.items) + 1, "dimensions": self.inputs.shape[1],
                             "window": len(self.positions), "facts": self.facts}).encode()
        parts = [self.items.astype("<u8").tobytes()] + [
            np.ascontiguousarray(a, "<f4").tobytes()
            for a in (self.inputs, self.last, self.outputs, self.bias, self.positions)]
        return MAGIC + struct.pack("<I", len(header)) + header + b"".join(parts)

    @classmethod
    def from_bytes(cls, blob: bytes) -> SequenceModel:
        """The model ``to_bytes`` wrote; ValueError for anything else (another release's)."""
        try:
            return cls._from_bytes(blob)
        except (KeyError, TypeError, IndexError, struct.error) as exc:
            raise ValueError(f"not a sequence model: {exc!r}") from None

    @classmethod
    def _from_bytes(cls, blob: bytes) -> SequenceModel:
        if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 4:
            raise ValueError("not a sequence model")
        (size,) = struct.unpack_from("<I", blob, len(MAGIC))
        start = len(MAGIC) + 4
        header = json.loads(blob[start:start + size])
        rows, d, window = int(header["rows"]), int(header["dimensions"]), int(header["window"])
        if rows < 1 or d < 1 or window < 1:
            raise ValueError("a sequence model of no size")
        shapes = ((rows, d), (rows, d), (rows, d), (rows,), (window,))
        at = start + size
        items = np.frombuffer(blob, "<u8", rows - 1, at).astype(np.uint64)
        at += 8 * (rows - 1)
        stored: list[F32] = []
        for shape in shapes:
            count = int(np.prod(shape))
            stored.append(np.frombuffer(blob, "<f4", count, at).reshape(shape))
            at += 4 * count
        if at != len(blob):
            raise ValueError("a sequence model of the wrong length")
        # a request reads the input vectors of its session's items at scattered rows
        inputs, last, outputs, bias, positions = pages.on_huge_pages(stored)
        return cls(items, inputs, last, outputs, bias, positions, dict(header["facts"]))


def run_due(started: float | None, arrived_until: float | None, newest_arrival: float | None,
            now: float, refresh: float) -> bool:
    """Whether a sequence model run is due: runs are on (``refresh`` seconds apart, 0: off),
    the last one started ``refresh`` seconds ago or more (or none did), and a session arrived
    after what the stored model learned (``arrived_until``; all arrivals, ms) or none is
    stored."""
    if refresh <= 0 or newest_arrival is None:
        return False
    if started is not None and now - started < refresh:
        return False
    return arrived_until is None or newest_arrival > arrived_until
