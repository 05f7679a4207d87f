"""A catalogue record, from ``PUT /items/{id}``, ``POST /items`` or a file the ``catalog``
command reads.
"""

from __future__ import annotations

from typing import Any

from service.core.catalog import AttributeValue, Record
from service.core.catalog import encode as encode_record
from service.requests.values import (
    MAX_PRICE,
    MAX_TEXT,
    attribute_value,
    batch_of,
    finite_number,
    identifier,
    identifiers,
    invalid,
    json_object,
    type_name,
)
from service.settings import Settings

# --- catalogue records ------------------------------------------------------------------------
ITEM_FIELDS = ("id", "name", "categories", "available", "price", "tags", "attributes")
MAX_LIST = 100  # categories, tags, attributes per record
MAX_RECORD_BYTES = 16 << 10


def _attributes(value: Any, field: str, settings: Settings) -> dict[str, AttributeValue]:
    if not isinstance(value, dict):
        raise invalid(field, f"{field} must be an object, not {type_name(value)}.")
    if len(value) > MAX_LIST:
        raise invalid(field, f"{field} has {len(value)} entries; the limit is {MAX_LIST}.")
    out: dict[str, AttributeValue] = {}
    for name, v in value.items():
        where = f"{field}.{name}"
        identifier(name, where, settings)
        out[name] = attribute_value(v, where)
    return out


def item_record(value: Any, field: str, settings: Settings, item_id: str | None = None
                ) -> Record:
    """A catalogue record; ``item_id`` is the path's id (then ``id`` is optional in the
    body and must agree with it)."""
    prefix = f"{field}." if field else ""
    obj = json_object(value, field, ITEM_FIELDS)
    if "id" in obj:
        given = identifier(obj["id"], prefix + "id", settings, allow_int=True)
        if item_id is not None and given != item_id:
            raise invalid(prefix + "id", f"{prefix}id is {given!r} but the path names "
                                         f"{item_id!r}; leave it out or make them agree.")
        item_id = given
    if item_id is None:
        raise invalid(prefix + "id", f"{prefix}id is required.")
    name = obj.get("name")
    if name is not None and (not isinstance(name, str) or len(name) > MAX_TEXT):
        raise invalid(prefix + "name", f"{prefix}name must be a string of at most {MAX_TEXT} "
                                       "characters.")
    available = obj.get("available", True)
    if not isinstance(available, bool):
        raise invalid(prefix + "available", f"{prefix}available must be true or false, not "
                                            f"{type_name(available)}.")
    price = obj.get("price")
    if price is not None:
        price = finite_number(price, prefix + "price", low=0.0, high=MAX_PRICE)
    categories = identifiers(obj.get("categories", []), prefix + "categories", settings,
                             limit=MAX_LIST)
    tags = identifiers(obj.get("tags", []), prefix + "tags", settings, limit=MAX_LIST)
    record = Record(item_id, name, categories, available, price, tags,
                    _attributes(obj.get("attributes", {}), prefix + "attributes", settings))
    if len(encode_record(record)) > MAX_RECORD_BYTES:
        raise invalid(field or "body", f"The record of {item_id!r} is larger than "
                                       f"{MAX_RECORD_BYTES} bytes; keep the catalogue to what "
                                       "rules need.")
    return record


def item_records(body: Any, settings: Settings) -> list[Record]:
    """``{"items": [...]}``; valid only if every record is (nothing is stored otherwise)."""
    batch = batch_of(body, "items", "record", settings)
    return [item_record(value, f"items[{n}]", settings) for n, value in enumerate(batch)]
