"""The catalogue's item record, free of I/O: what a shop says about an item (README, "The rest":
the catalogue), stored as one compact JSON value per item.

``available`` defaults to true and ``categories``, ``tags`` and ``attributes`` to empty, so a
record with only an id lists the item and nothing else. A record replaces any earlier one whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

AttributeValue = str | int | float | bool


@dataclass(frozen=True, slots=True)
class Record:
    item_id: str
    name: str | None = None
    categories: tuple[str, ...] = ()
    available: bool = True
    price: float | None = None
    tags: tuple[str, ...] = ()
    attributes: dict[str, AttributeValue] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        """As the API shows it (and as ``sessionrec catalog`` reads it back)."""
        out: dict[str, Any] = {"id": self.item_id}
        if self.name is not None:
            out["name"] = self.name
        out["categories"] = list(self.categories)
        out["available"] = self.available
        if self.price is not None:
            out["price"] = self.price
        out["tags"] = list(self.tags)
        out["attributes"] = dict(self.attributes)
        return out


def encode(record: Record) -> bytes:
    return orjson.dumps(record.body())


def decode(raw: bytes) -> Record:
    body = orjson.loads(raw)
    return Record(body["id"], body.get("name"), tuple(body.get("categories", ())),
                  bool(body.get("available", True)), body.get("price"),
                  tuple(body.get("tags", ())), dict(body.get("attributes", {})))
