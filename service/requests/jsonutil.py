"""orjson in one place: the API's JSON encoding and decoding."""

from __future__ import annotations

import re
from typing import Any

import orjson

LONE_SURROGATE = re.compile("[\ud800-\udfff]")

loads = orjson.loads
JSONDecodeError = orjson.JSONDecodeError


def dumps(value: Any) -> bytes:
    """JSON bytes. A string holding a lone surrogate (an id a producer wrote to the stream as
    bytes that are not UTF-8, or a header echoed by mistake) is not valid in JSON: such strings
    are written with U+FFFD in its place instead of failing the whole answer."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
    except orjson.JSONEncodeError:
        return orjson.dumps(_printable(value), option=orjson.OPT_SERIALIZE_NUMPY)


def fragment(encoded: bytes) -> Any:
    """JSON already written (valid, UTF-8), embedded as it is where ``dumps`` meets it."""
    return orjson.Fragment(encoded)


def printable(text: str) -> str:
    """``text`` with any lone surrogate replaced by U+FFFD."""
    return LONE_SURROGATE.sub("\ufffd", text)


def _printable(value: Any) -> Any:
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {_printable(k): _printable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_printable(v) for v in value]
    return value
