"""``sessionrec load`` leaves exactly the state that streaming the same events leaves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from service.core.layout import index_limit
from service.offline.loader import NotEmpty, build_indexes, load
from service.settings import Settings
from service.store.state import Store
from tests.helpers import assert_same_state, drain, ingest, snapshot
from tests.test_worker import click_log


async def test_load_equals_stream(settings: Settings) -> None:
    # small caps so trimming of indexes and histories is exercised
    settings = settings.replace(index_cap=5, history_cap=4)
    events = click_log(2500, seed=5)
    await ingest(settings, events)
    await drain(settings, workers=2)

    loaded = settings.replace(namespace=settings.namespace + "-load")
    store = Store(loaded)
    await store.prepare()  # as `sessionrec load` does
    report = await load(store, events)
    assert report.events == 2500 and report.items > 50
    r: Any = store.redis
    state = await snapshot(r, loaded.namespace, 5)
    assert sum(":cx:" in key for key in state) > 50  # cart indexes loaded, and compared
    assert_same_state(state, await snapshot(r, settings.namespace, 5))
    # the worker appends in place and trims a slack at a time: its indexes run past the cap,
    # never past the limit (the loader writes exactly the cap)
    lengths = [await r.strlen(k) // 16 async for k in r.scan_iter(
        match=f"{settings.namespace}:*:x:*", count=1000)]
    assert max(lengths) <= index_limit(5) and max(lengths) > 5
    with pytest.raises(NotEmpty):
        await load(store, events)
    await store.close()


async def test_a_batch_wider_than_a_chunk_equals_the_load(settings: Settings) -> None:
    """The commit reads and writes frequencies and trending scores in chunks of 500 fields:
    one batch of 1,400 events over 1,200 items, on one partition, crosses the chunk edge in
    both (trending holds every item of the batch in one op)."""
    from service.core.model import Event

    settings = settings.replace(partitions=1, batch_size=2000)
    events = [Event(f"s{n // 7}", f"i{n % 1200}", 1_000.0 + n) for n in range(1400)]
    await ingest(settings, events, batch=700)
    await drain(settings)
    loaded = settings.replace(namespace=settings.namespace + "-load")
    store = Store(loaded)
    await store.prepare()
    await load(store, events)
    r: Any = store.redis
    streamed = await snapshot(r, settings.namespace)
    assert len(next(v for k, v in streamed.items() if k.endswith(":trend"))) == 1200
    assert_same_state(await snapshot(r, loaded.namespace), streamed)
    await store.close()


def test_build_indexes_keeps_newest_entries_sorted() -> None:
    e = [bytes([t]) * 8 + b"s" * 8 for t in range(10)]
    out = build_indexes([(b"i", b"", e[3]), (b"i", b"", e[1]), (b"i", e[1], e[7]),
                         (b"i", b"", e[2]), (b"j", b"", e[0])], cap=2)
    assert out == {b"i": e[3] + e[7], b"j": e[0]}


def on_a_terminal(*args: str) -> tuple[int, str]:
    """``sessionrec ARGS`` with stderr on a pseudo-terminal: its exit code and what the
    terminal showed."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import sys
    import termios

    master, child_side = pty.openpty()
    # a terminal of 40 rows and 160 columns (a new pseudo-terminal has none)
    fcntl.ioctl(child_side, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", *args],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=child_side, env={**os.environ, "COLUMNS": "120"})
    os.close(child_side)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed its side
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    return proc.wait(timeout=120), shown.decode("utf-8", "replace")


def test_long_commands_show_progress_on_a_terminal_only(standalone_url: str,
                                                        tmp_path: Path) -> None:
    """One progress display (tqdm: count, rate, time left) for load, catalog, eval and tune,
    offline and --apply (issue 24, point 8; issue 27, point 8); none in a log or a pipe."""
    import os
    import subprocess
    import sys

    log = tmp_path / "clicks.tsv"
    log.write_text("SessionId\tItemId\tTime\n" + "".join(
        f"s{s}\ti{(s * 7 + n * 3) % 23}\t{1_700_000_000 + 10 * s + n}\n"
        for s in range(200) for n in range(4)), encoding="utf-8")
    items = tmp_path / "items.jsonl"
    items.write_text("".join(f'{{"id": "i{n}"}}\n' for n in range(2500)), encoding="utf-8")
    redis = ["--redis-url", standalone_url, "--namespace", f"progress{os.getpid()}"]
    expected = {
        ("load", str(log)): ["reading clicks.tsv", "learning: 100%", "800/800",
                             "events/s", "writing: 100%"],
        ("catalog", str(items)): ["checking: 2500records", "storing: 100%", "2500/2500",
                                  "records/s"],
        ("eval", "--train", str(log), "--test", str(log), "--models", "sessionrec,pop"):
            ["sessionrec: 100%", "600/600", "predictions/s", "POP: 100%"],
        ("tune", "--train", str(log), "--params", "neighbours", "--out",
         str(tmp_path / "t.env")): ["round 1: 100%", "3/3", "candidates/s"],
        ("tune", "--apply"): ["search half, round 1: 100%", "judging half: 100%",
                              "candidates/s"],
    }
    for args, wanted in expected.items():
        code, shown = on_a_terminal(*args, *redis)
        assert code == 0, shown
        for text in wanted:
            assert text in shown, (args, text, shown)
        assert "<00:00" in shown  # the time left
        piped = subprocess.run([sys.executable, "-m", "service.cli", *args, *redis,
                                "--namespace", f"piped{os.getpid()}"],
                               capture_output=True, text=True, timeout=120)
        assert piped.returncode == 0, piped.stderr
        assert "100%" not in piped.stderr and "/s]" not in piped.stderr, piped.stderr
