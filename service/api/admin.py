"""The admin routes (a secret key): hide an item, forget an item's learned state, reset a
session."""

from __future__ import annotations

from aiohttp import web

from service.api.context import STORE, json_response, path_id


async def hide_item(request: web.Request) -> web.Response:
    item_id = path_id(request, "item_id")
    hidden = request.method == "POST"
    await request.app[STORE].admin.hide(item_id, hidden)
    return json_response({"item_id": item_id, "hidden": hidden})


async def forget_item(request: web.Request) -> web.Response:
    item_id = path_id(request, "item_id")
    scrubbed = await request.app[STORE].admin.forget_item(item_id)
    return json_response({"item_id": item_id, "forgotten": True,
                          "histories_scrubbed": scrubbed})


async def reset_session(request: web.Request) -> web.Response:
    session_id = path_id(request, "session_id")
    await request.app[STORE].admin.reset_session(session_id)
    return json_response({"session_id": session_id, "reset": True})
