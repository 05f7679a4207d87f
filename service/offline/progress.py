"""The one progress display of the long commands (``load``, ``catalog``, ``eval``, ``tune``):
tqdm's bar on stderr, with the count, the rate and the time left, drawn only when stderr is a
terminal (a log file or a pipe gets none of it)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def _options(label: str, unit: str, scale: bool, show: bool | None) -> dict[str, Any]:
    return {"desc": label, "unit": unit, "unit_scale": scale, "file": sys.stderr,
            "disable": None if show is None else not show, "dynamic_ncols": True,
            "mininterval": 0.5, "smoothing": 0.1}


def bar(label: str, total: float | None = None, unit: str = "it", *,
        scale: bool = False, show: bool | None = None) -> tqdm[Any]:
    """A bar for one stage of a command; ``show`` None: only on a terminal."""
    return tqdm(total=total, **_options(label, unit, scale, show))


def counted(items: Iterable[T], label: str, total: int | None = None, unit: str = "it", *,
            show: bool | None = None) -> Iterator[T]:
    """``items``, counted on a bar as they are consumed (tqdm's own loop: a check of the
    clock every few items, not a call per item)."""
    return iter(tqdm(items, total=total, **_options(label, unit, False, show)))


def above_bars(say: Callable[[str], None]) -> Callable[[str], None]:
    """``say``, its lines written above the bars (cleared, then drawn again below them)."""
    def said(line: str) -> None:
        with tqdm.external_write_mode():
            say(line)
    return said
