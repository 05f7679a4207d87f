"""``sessionrec catalog FILE``: catalogue records from JSON lines or CSV into Redis.

JSON lines: one record per line, as ``PUT /items/{id}`` takes it, with its ``id``. CSV: a
header with an ``id`` column; ``name``, ``available`` (true/false), ``price``, ``categories``
and ``tags`` (several values separated by ``|``); every other column is an attribute (a
number when it reads as one). Records are checked as the API checks them, the whole file
before anything is stored, so a bad line stores nothing; then stored in batches, with progress
on stderr (``offline.progress``).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from service.core.catalog import Record
from service.failures import Refused
from service.offline.progress import bar, counted
from service.requests.records import item_record
from service.requests.values import Invalid
from service.settings import Settings
from service.store.state import Store

BATCH = 1000
FORMATS = ("auto", "jsonl", "csv")


class BadRecord(Refused, ValueError):
    """A line that is not a valid record: where, and what to fix."""


def _open(path: str) -> TextIO:
    if path.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path), encoding="utf-8")
    return open(path, encoding="utf-8", newline="")


def detect(path: str) -> str:
    with _open(path) as f:
        for line in f:
            if line.strip():
                return "jsonl" if line.lstrip().startswith("{") else "csv"
    return "jsonl"


def _csv_value(text: str) -> Any:
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() and "." not in text else number


def _csv_rows(f: TextIO) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(f)
    if "id" not in (reader.fieldnames or ()):
        raise BadRecord("line 1: the header needs an id column")
    for row in reader:
        body: dict[str, Any] = {"id": row["id"]}
        attributes: dict[str, Any] = {}
        for column, text in row.items():
            if column is None or column == "id" or text is None or text == "":
                continue
            if column in ("categories", "tags"):
                body[column] = [part for part in text.split("|") if part]
            elif column == "available":
                body[column] = {"true": True, "false": False}.get(text.strip().lower(), text)
            elif column == "price":
                body[column] = _csv_value(text)
            elif column == "name":
                body[column] = text
            else:
                attributes[column] = _csv_value(text)
        if attributes:
            body["attributes"] = attributes
        yield reader.line_num, body


def _jsonl_rows(f: TextIO) -> Iterator[tuple[int, Any]]:
    for number, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            raise BadRecord(f"line {number}: not JSON ({exc.msg})") from None


def records(path: str, fmt: str, settings: Settings) -> Iterator[Record]:
    """The file's records, each checked as ``PUT /items`` checks one; ``BadRecord`` names the
    line and the field of the first that is not valid."""
    chosen = detect(path) if fmt == "auto" else fmt
    with _open(path) as f:
        rows = _csv_rows(f) if chosen == "csv" else _jsonl_rows(f)
        for number, body in rows:
            try:
                yield item_record(body, "", settings)
            except Invalid as exc:
                raise BadRecord(f"line {number}: {exc.message}") from None


async def import_file(store: Store, path: str, fmt: str,
                      progress: Callable[[int], None] | None = None) -> int:
    """Check the whole file, then store it in batches; returns how many records were stored.
    ``progress`` is told the count stored after each full batch."""
    total = sum(1 for _ in counted(records(path, fmt, store.settings), "checking",
                                   unit="records"))
    if not total:
        raise BadRecord("no record in it (an empty file)")
    stored = 0
    batch: list[Record] = []
    with bar("storing", total, "records") as shown:
        for record in records(path, fmt, store.settings):
            batch.append(record)
            if len(batch) == BATCH:
                await store.items.put(batch)
                stored += len(batch)
                shown.update(len(batch))
                batch = []
                if progress is not None:
                    progress(stored)
        if batch:
            await store.items.put(batch)
            stored += len(batch)
            shown.update(len(batch))
    assert stored == total
    return stored
