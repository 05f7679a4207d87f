"""The stream entry format: the worker's in-place reading of the writers' layout agrees with
the general decoder, and rejects what it rejects."""

from __future__ import annotations

import pytest

from service.core.model import Event
from service.core.stream import BadEntry, decode, decode_flat, encode, fields_of


def flat_of(fields: dict[str, str] | dict[bytes, bytes]) -> list[bytes]:
    return [x if isinstance(x, bytes) else x.encode("utf-8", "surrogatepass")
            for pair in fields.items() for x in pair]


@pytest.mark.parametrize("event", [
    Event("s", "a", 1.5), Event("s\udcff", "é", 1e9, "purchase", 4.0),
    Event("s", "a", 0.0, "click", -2.5), Event("s", "a", 3.0, "impression", None, "rid-1"),
    Event("s", "a", 3.0, "click", 2.0, "rid-2")])
def test_the_writers_layout_is_read_in_place(event: Event) -> None:
    flat = flat_of(encode(event))
    assert flat[::2] in ([b"session", b"item", b"ts", b"type"],
                         [b"session", b"item", b"ts", b"type", b"rating"],
                         [b"session", b"item", b"ts", b"type", b"rid"],
                         [b"session", b"item", b"ts", b"type", b"rating", b"rid"])
    assert decode_flat(flat) == decode(fields_of(flat)) == event


def test_other_layouts_take_the_general_decoder() -> None:
    reordered = flat_of({"item": "a", "session": "s", "ts": "2", "rating": "3"})
    assert decode_flat(reordered) == Event("s", "a", 2.0, "view", 3.0)
    no_type = flat_of({"session": "s", "item": "a", "ts": "2"})
    assert decode_flat(no_type) == Event("s", "a", 2.0)
    rid_first = flat_of({"session": "s", "item": "a", "ts": "2", "type": "click", "rid": "r",
                         "rating": "3"})
    assert decode_flat(rid_first) == Event("s", "a", 2.0, "click", 3.0, "r")


@pytest.mark.parametrize("fields", [
    {b"session": b"s", b"item": b"a", b"ts": b"nan", b"type": b"view"},
    {b"session": b"s", b"item": b"a", b"ts": b"1", b"type": b"teleport"},
    {b"session": b"", b"item": b"a", b"ts": b"1", b"type": b"view"},
    {b"session": b"s", b"item": b"\xff\xfe", b"ts": b"1", b"type": b"view"},
    {b"session": b"s", b"item": b"a", b"ts": b"soon", b"type": b"view"},
    {b"session": b"s", b"item": b"a", b"ts": b"1", b"type": b"view", b"rating": b"inf"},
    {b"session": b"s", b"ts": b"1", b"type": b"view", b"rating": b"2"},
])
def test_bad_entries_are_refused_in_either_path(fields: dict[bytes, bytes]) -> None:
    with pytest.raises(BadEntry):
        decode(fields)
    with pytest.raises(BadEntry):
        decode_flat(flat_of(fields))
