"""The values a request is made of: JSON in, typed values out, or ``Invalid`` naming the field
and the fix. Strict where a silent guess would hurt: booleans are not numbers, unknown fields are
refused (a typo such as ``recomend_seen`` would otherwise be ignored), NaN and infinities are
refused.
"""

from __future__ import annotations

import math
from typing import Any

from service.core.placements import MAX_PLACEMENT_NAME
from service.requests.jsonutil import JSONDecodeError, loads
from service.settings import Settings


class Invalid(Exception):
    """A request that cannot be taken as it is: a stable code, what to fix, and which field.
    The API answers it with a 400; the offline tools with a one-line refusal."""

    def __init__(self, field: str, message: str, code: str = "invalid") -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.code = code


def invalid(field: str, message: str) -> Invalid:
    return Invalid(field, message)


MAX_TIMESTAMP = 1e11  # year 5138: anything above is a unit mistake (ms instead of s)
MAX_RATING = 1e9
MAX_PRICE = 1e12


def parse_json(body: bytes) -> Any:
    require_body(body)
    try:
        return loads(body)
    except JSONDecodeError as exc:
        raise not_json(exc) from None


def require_body(body: bytes) -> None:
    if not body.strip():
        raise Invalid("body", "The request body is empty: send a JSON object.", "invalid_json")


def not_json(exc: Exception) -> Invalid:
    return Invalid("body", f"The body is not valid JSON ({exc}).", "invalid_json")


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def finite_number(value: Any, field: str, *, low: float, high: float) -> float:
    if not is_number(value):
        raise invalid(field, f"{field} must be a number, not {type_name(value)}.")
    number = float(value)
    if not math.isfinite(number) or not low <= number <= high:
        raise invalid(field, f"{field} must be a finite number between {low:g} and {high:g}.")
    return number


def timestamp(value: Any, field: str) -> float:
    return finite_number(value, field, low=0, high=MAX_TIMESTAMP)


def event_timestamp(value: Any, field: str, now: float, skew: float) -> float:
    """An event's time: never more than ``skew`` seconds ahead of the server's clock. A time in
    the future would rank an item or a session above every real one for as long as the clock
    takes to catch up (trending is a decayed sum over event times; an index keeps the newest)."""
    ts = timestamp(value, field)
    if ts > now + skew:
        raise invalid(field, f"{field} is {ts - now:.0f} s ahead of the server's clock; events "
                             f"may be at most {skew:g} s in the future. Send Unix seconds, or "
                             "leave timestamp out to use the time of receipt.")
    return ts


def rating(value: Any, field: str) -> float:
    return finite_number(value, field, low=-MAX_RATING, high=MAX_RATING)


def integer(value: Any, field: str, *, low: int, high: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON has one number type: 10.0 is the integer 10
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(field, f"{field} must be an integer from {low} to {high}, "
                             f"not {type_name(value)}.")
    if not low <= value <= high:
        raise invalid(field, f"{field} must be from {low} to {high}; got {value}.")
    return value


INT_ID_RANGE = (-(2**63), 2**63 - 1)


def identifier(value: Any, field: str, settings: Settings, *, allow_int: bool = False) -> str:
    if allow_int and isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        value = int(value)  # 275776.0 is the integer 275776 in JSON (exact up to 2^53)
    if allow_int and isinstance(value, int) and not isinstance(value, bool):
        if not INT_ID_RANGE[0] <= value <= INT_ID_RANGE[1]:
            raise invalid(field, f"{field} as an integer must fit in 64 bits; send larger ids "
                                 "as strings.")
        value = str(value)
    if not isinstance(value, str):
        kinds = "a string or an integer" if allow_int else "a string"
        raise invalid(field, f"{field} must be {kinds}, not {type_name(value)}.")
    if not value:
        raise invalid(field, f"{field} must not be empty.")
    if len(value) > settings.max_id_length:
        raise invalid(field, f"{field} is {len(value)} characters long; the limit is "
                             f"{settings.max_id_length}.")
    return value


def query_integer(raw: str | None, field: str, *, default: int, low: int, high: int) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise invalid(field, f"{field} must be an integer from {low} to {high}.") from None
    return integer(value, field, low=low, high=high)


def query_bool(raw: str | None, field: str, *, default: bool) -> bool:
    if raw is None:
        return default
    lowered = raw.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise invalid(field, f"{field} must be true or false.")


def type_name(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "an array", dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def json_object(value: Any, field: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        where = field or "The body"
        raise invalid(field or "body", f"{where} must be a JSON object, not {type_name(value)}.")
    for key in value:
        if key not in allowed:
            name = f"{field}.{key}" if field else key
            raise invalid(name, f"Unknown field {key!r}; allowed: {', '.join(allowed)}.")
    return value



MAX_EXCLUDE = 1000


def identifiers(value: Any, field: str, settings: Settings, *, limit: int,
                allow_int: bool = False) -> tuple[str, ...]:
    """An array of at most ``limit`` ids (or other short names: categories, tags)."""
    if not isinstance(value, list):
        raise invalid(field, f"{field} must be an array of strings, not {type_name(value)}.")
    if len(value) > limit:
        raise invalid(field, f"{field} has {len(value)} entries; the limit is {limit}.")
    # the common case, in C-level passes over the list; anything else names the entry and
    # the fix
    if value and set(map(type, value)) == {str}:
        lengths = list(map(len, value))
        if min(lengths) > 0 and max(lengths) <= settings.max_id_length:
            return tuple(value)
    elif not value:
        return ()
    return tuple(identifier(v, f"{field}[{n}]", settings, allow_int=allow_int)
                 for n, v in enumerate(value))


def exclusions(value: Any, field: str, settings: Settings) -> tuple[str, ...]:
    """Item ids never to return (a cart, what the page already shows)."""
    return identifiers(value, field, settings, limit=MAX_EXCLUDE, allow_int=True)



def batch_of(body: Any, name: str, what: str, settings: Settings) -> list[Any]:
    """``body[name]``, the only field: an array of 1 to ``max_batch`` entries."""
    json_object(body, "", (name,))
    if name not in body:
        raise invalid(name, f"{name} is required: an array of {what}s.")
    batch = body[name]
    if not isinstance(batch, list):
        raise invalid(name, f"{name} must be an array, not {type_name(batch)}.")
    if not batch:
        raise invalid(name, f"{name} must hold at least one {what}.")
    if len(batch) > settings.max_batch:
        raise invalid(name, f"{name} has {len(batch)} entries; the limit is "
                            f"{settings.max_batch}. Split the batch.")
    return batch


MAX_TEXT = 1000  # a name or an attribute's text
MAX_ATTRIBUTE_NUMBER = 1e15  # an attribute's number, either sign


def attribute_value(value: Any, field: str) -> str | int | float | bool:
    """One attribute value, in a record or in a filter: text, a finite number or a boolean.
    An integer stays one (``size: 2`` reads back as 2, not 2.0); rules compare numbers as
    numbers whatever their type (``core.rules.attribute_key``)."""
    if isinstance(value, str) and len(value) > MAX_TEXT:
        raise invalid(field, f"{field} is {len(value)} characters long; the limit is "
                             f"{MAX_TEXT}.")
    if isinstance(value, bool | str):
        return value
    if is_number(value):
        number = finite_number(value, field, low=-MAX_ATTRIBUTE_NUMBER,
                               high=MAX_ATTRIBUTE_NUMBER)
        return value if isinstance(value, int) else number
    raise invalid(field, f"{field} must be a string, a number or a boolean, not "
                         f"{type_name(value)}.")


def placement_name(value: Any, field: str, settings: Settings) -> str:
    name = identifier(value, field, settings)
    if len(name) > MAX_PLACEMENT_NAME:
        raise invalid(field, f"{field} is {len(name)} characters long; a placement's name "
                             f"is at most {MAX_PLACEMENT_NAME}.")
    return name
