"""Reading historical click logs: the formats the loader, evaluator and benchmarks accept.

* ``srgnn``: ``session_id<TAB>item_id<TAB>pos`` with a header (the SR-GNN preprocessing of
  DIGINETICA). It has no timestamps: sessions are in chronological order, so event times are
  synthesised as ``BASE + session_rank * SESSION_GAP + pos``.
* ``sessionrec``: ``SessionId<TAB>ItemId<TAB>Time`` with a header (session-rec's format, Unix
  seconds).
* ``csv``: any delimited file with a header and a column mapping
  (``session=...,item=...,time=...``; time optional, then synthesised as above).

Files may be gzip-compressed (``.gz``). Rows of one session must be contiguous and in order,
as in all three public formats.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from service.core.model import Event
from service.failures import Refused
from service.offline.progress import bar

BASE_TIME = 1_400_000_000.0
SESSION_GAP = 100.0
FORMATS = ("auto", "srgnn", "sessionrec", "csv")


class BadLog(Refused, ValueError):
    """A click log this reader cannot read as asked: which file, and what to pass instead."""


@dataclass(frozen=True)
class ClickLog:
    """A click log as parallel arrays, sessions contiguous, in file order."""

    sessions: npt.NDArray[np.str_]
    items: npt.NDArray[np.str_]
    times: npt.NDArray[np.float64]

    def __len__(self) -> int:
        return len(self.items)

    def events(self) -> Iterator[Event]:
        for s, i, t in zip(self.sessions.tolist(), self.items.tolist(), self.times.tolist(),
                           strict=True):
            yield Event(s, i, t)

    def session_bounds(self) -> npt.NDArray[np.int64]:
        """Start offsets of each session, plus len(self) at the end."""
        change = np.flatnonzero(self.sessions[1:] != self.sessions[:-1]) + 1
        return np.concatenate(([0], change, [len(self)])).astype(np.int64)


def _open(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _text(path: Path, raw: BinaryIO) -> io.TextIOWrapper:
    """The text of a file opened as ``raw`` (whose position says how far reading got)."""
    binary = gzip.GzipFile(fileobj=raw, mode="rb") if path.suffix == ".gz" else raw
    return io.TextIOWrapper(binary, encoding="utf-8", newline="")


def detect(path: Path) -> str:
    with _open(path) as f:
        header = f.readline().strip().split("\t")
    if header[:3] == ["session_id", "item_id", "pos"]:
        return "srgnn"
    if header[:3] == ["SessionId", "ItemId", "Time"]:
        return "sessionrec"
    tab = " --delimiter $'\\t'" if len(header) > 1 else ""
    raise BadLog(f"{path}: unknown format (header {header!r}); pass --format csv with "
                 f"--columns session=...,item=...[,time=...]{tab}")


def parse_columns(spec: str) -> dict[str, str]:
    mapping = dict(part.split("=", 1) for part in spec.split(",") if "=" in part)
    if not {"session", "item"} <= set(mapping):
        raise BadLog("--columns needs session=<column>,item=<column>[,time=<column>]")
    return mapping


def read(path: str | Path, fmt: str = "auto", columns: str = "",
         delimiter: str = ",") -> ClickLog:
    path = Path(path)
    if fmt == "auto":
        fmt = detect(path)
    if fmt == "srgnn":
        mapping, delimiter = {"session": "session_id", "item": "item_id"}, "\t"
    elif fmt == "sessionrec":
        mapping, delimiter = {"session": "SessionId", "item": "ItemId", "time": "Time"}, "\t"
    elif fmt == "csv":
        mapping = parse_columns(columns)
    else:
        raise BadLog(f"format must be one of {', '.join(FORMATS)}")
    sessions: list[str] = []
    items: list[str] = []
    times: list[str] = []
    with path.open("rb") as raw, _text(path, raw) as f, \
            bar(f"reading {path.name}", path.stat().st_size, "B", scale=True) as shown:
        reader = csv.DictReader(f, delimiter=delimiter)
        header = list(reader.fieldnames or ())
        missing = set(mapping.values()) - set(header)
        if missing:
            hint = f"its header has {', '.join(header) or 'no column'}"
            if delimiter != "\t" and any("\t" in name for name in header):
                hint = "its header is tab-separated: add --delimiter $'\\t'"
            raise BadLog(f"{path}: no column {', '.join(sorted(missing))} ({hint})")
        s_col, i_col, t_col = mapping["session"], mapping["item"], mapping.get("time")
        for n, row in enumerate(reader):
            sessions.append(row[s_col])
            items.append(row[i_col])
            if t_col:
                times.append(row[t_col])
            if not n % 65536:
                shown.update(raw.tell() - shown.n)
        shown.update(raw.tell() - shown.n)
    s_arr = np.array(sessions)
    log = ClickLog(s_arr, np.array(items), np.zeros(len(items)))
    if t_col:
        return ClickLog(s_arr, log.items, np.array(times, dtype=np.float64))
    bounds = log.session_bounds()
    rank = np.repeat(np.arange(len(bounds) - 1), np.diff(bounds))
    pos = np.arange(len(items)) - bounds[:-1][rank]
    return ClickLog(s_arr, log.items, BASE_TIME + rank * SESSION_GAP + pos)


def write_sessionrec(rows: Iterable[tuple[str, str, float]], path: Path) -> None:
    """Rows (session, item, Unix seconds) in session-rec's format, which ``read`` reads back:
    what the scripts that derive or generate click logs write."""
    with path.open("w", encoding="utf-8") as f:
        f.write("SessionId\tItemId\tTime\n")
        for session, item, t in rows:
            f.write(f"{session}\t{item}\t{t:.3f}\n")
