"""The pure reference of the sequence model's values (``native/sequence.c``): what
``service/core/sequence.py``'s model scores each answer to a session, in numpy, summed in
float64 as the compiled version sums.

Serving reads the model through a layout of its own (``layout``), built once when a model is
decoded, because a request's cost is the cache lines it waits for and the model is larger than
the processor's caches: each item's key, bias and output scale in one 16-byte record (the
sorted ``TABLE``), found through a ``directory`` of the keys' top bits, and its output vector
as 64 signed bytes times that scale (one cache line, not four). The whole of it stays in a
few MiB, which a serving process's cache keeps warm between requests; the input vectors (ten
rows a request) stay as the model has them. The bytes round the outputs to a 254th of each
row's largest value: far below what moves the learned order, which sums this feature with
six others, and a tuning run fits its weight on the same values serving computes. The
session's state is rounded alike, to 16 bits (``STATE_RANGE``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from service.kernel.reference_tables import F64, Buffer, _u64

DIRECTORY_SHIFT = 48
"""An item's directory entry is its hash's top 64 - ``DIRECTORY_SHIFT`` bits: 65,536 ranges,
about one item each at the vocabulary's cap, in 256 KiB."""

DIRECTORY_SIZE = (1 << (64 - DIRECTORY_SHIFT)) + 1

TABLE = np.dtype({"names": ["key", "scale", "bias"], "formats": ["<u8", "<f4", "<f4"]})
"""One record per learned item, sorted by key (the compiled version's struct)."""

CODE_RANGE = 127
"""An output vector's largest component is coded as this many steps."""

STATE_RANGE = 32767
"""A session's state is read in steps of its largest component over this many, so that an
answer's product with it is exact integer arithmetic (64 x 127 x 32767 stays within 32
bits), which the compiled version runs sixteen lanes at a time."""


class Layout(NamedTuple):
    table: npt.NDArray[np.void]  # TABLE records, one per item, sorted
    directory: npt.NDArray[np.uint32]  # where each top-bits range of the table starts
    codes: npt.NDArray[np.int8]  # (items, dimensions): output vectors / their record's scale


def layout(items: npt.NDArray[np.uint64], outputs: npt.NDArray[np.float32],
           bias: npt.NDArray[np.float32]) -> Layout:
    """The serving layout of a model whose sorted ``items`` have rows 1.. of ``outputs`` and
    ``bias`` (row 0 the unknown item's)."""
    keys = np.asarray(items, np.uint64)
    vectors = np.asarray(outputs[1:], np.float32)
    peak = np.abs(vectors).max(axis=1) if vectors.size else np.zeros(len(keys), np.float32)
    scale = np.where(peak > 0, peak / CODE_RANGE, 0.0).astype(np.float32)
    divide = np.where(scale > 0, scale, 1.0)[:, None]
    codes = np.clip(np.rint(vectors / divide), -CODE_RANGE, CODE_RANGE).astype(np.int8)
    table = np.zeros(len(keys), TABLE)
    table["key"], table["scale"], table["bias"] = keys, scale, bias[1:]
    tops = keys >> np.uint64(DIRECTORY_SHIFT)
    directory = np.searchsorted(tops, np.arange(DIRECTORY_SIZE, dtype=np.uint64))
    return Layout(table, directory.astype(np.uint32), np.ascontiguousarray(codes))


def _f32(buffer: Buffer) -> npt.NDArray[np.float32]:
    return np.frombuffer(buffer, dtype=np.float32)


def sequence_values(table: Buffer, directory: Buffer, codes: Buffer, inputs: Buffer,
                    last: Buffer, positions: Buffer, session: Buffer, answers: Buffer
                    ) -> bytes:
    """Each answer's score after the session (its items oldest first) minus the best
    answer's. The state is the ``len(positions)`` newest items' input vectors weighted by
    position plus the newest's ``last`` vector (``inputs`` and ``last`` have a row per item
    of ``table`` after row 0, the unknown item's); a score is the answer's codes times its
    scale times the state, plus its bias. An answer not learned takes the lowest learned
    answer's value; all are 0 when no answer or no recent item is learned. ``directory`` is
    the compiled version's way to the records; the reference searches the keys and reads
    the directory only for its size, so that both refuse the same arguments."""
    records = np.frombuffer(table, TABLE)
    keys, p, given = records["key"], _f32(positions), _u64(answers)
    rows_n = len(records) + 1
    size = len(_f32(inputs))
    d = size // rows_n
    if (len(np.frombuffer(table, np.uint8)) % TABLE.itemsize or d < 1 or size != rows_n * d
            or len(_f32(last)) != size or len(np.frombuffer(codes, np.int8)) != (rows_n - 1) * d
            or not len(p) or len(np.frombuffer(directory, np.uint32)) != DIRECTORY_SIZE):
        raise ValueError("a model's arrays of one size, and its directory")
    out = np.zeros(len(given))
    recent = _u64(session)[::-1][:len(p)]
    window, rows = rows_of(keys, recent), rows_of(keys, given)
    known = rows > 0
    if not known.any() or not window.any():
        return out.tobytes()
    x = _f32(inputs).reshape(rows_n, d)
    state = np.zeros(d)
    for weight, row in zip(p[:len(window)].tolist(), window.tolist(), strict=True):
        if row:  # one item at a time, newest first, as the compiled version sums
            state = state + weight * x[row].astype(np.float64)
    state = state + _f32(last).reshape(rows_n, d)[window[0]]
    peak = float(np.abs(state).max())
    step = peak / STATE_RANGE if peak > 0 else 1.0
    steps = np.rint(state / step).astype(np.int32)
    at = np.maximum(rows - 1, 0)
    coded = np.frombuffer(codes, np.int8).reshape(rows_n - 1, d)[at].astype(np.int32)
    score = (records["scale"][at].astype(np.float64) * step * (coded @ steps).astype(np.float64)
             + records["bias"][at].astype(np.float64))
    score = np.where(known, score, score[known].min())
    values: F64 = score - score[known].max()
    return values.tobytes()


def rows_of(keys: npt.NDArray[np.uint64], wanted: npt.NDArray[np.uint64]
            ) -> npt.NDArray[np.int64]:
    """Each wanted key's row among the sorted ``keys`` (``keys[j]``'s is ``j + 1``; 0: not
    among them)."""
    wanted = np.asarray(wanted, np.uint64)
    if not len(keys) or not len(wanted):
        return np.zeros(len(wanted), np.int64)
    at = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    return np.where(keys[at] == wanted, at + 1, 0).astype(np.int64)


__all__ = ["CODE_RANGE", "DIRECTORY_SHIFT", "STATE_RANGE", "TABLE", "Layout", "layout",
           "rows_of", "sequence_values"]
