"""The catalogue routes (a secret key): an item's record put, read and removed, and records
stored in bulk. Every record of a request is validated before any is stored."""

from __future__ import annotations

from aiohttp import web

from service.api.context import SETTINGS, STORE, json_response, path_id, read_json
from service.api.errors import ApiError
from service.requests.records import item_record, item_records


async def put_item(request: web.Request) -> web.Response:
    item_id = path_id(request, "item_id")
    record = item_record(await read_json(request), "", request.app[SETTINGS],
                                    item_id)
    await request.app[STORE].items.put([record])
    return json_response(record.body())


async def get_item(request: web.Request) -> web.Response:
    item_id = path_id(request, "item_id")
    record = await request.app[STORE].items.get(item_id)
    if record is None:
        raise ApiError(404, "not_found", f"The catalogue has no record of {item_id!r}; "
                                         "PUT one first.", "item_id")
    return json_response(record.body())


async def delete_item(request: web.Request) -> web.Response:
    item_id = path_id(request, "item_id")
    deleted = await request.app[STORE].items.delete(item_id)
    return json_response({"item_id": item_id, "deleted": deleted})


async def post_items(request: web.Request) -> web.Response:
    records = item_records(await read_json(request), request.app[SETTINGS])
    await request.app[STORE].items.put(records)
    return json_response({"stored": len(records)})
