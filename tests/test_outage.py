"""Redis unreachable: 503 within a second with the error shape; liveness stays up."""

from __future__ import annotations

import time
from typing import Any

from service.api.app import create_app
from service.offline.redisproc import free_port
from service.settings import Settings
from tests.conftest import Client


async def test_unreachable_redis_answers_503_fast(aiohttp_client: Any,
                                                  settings: Settings) -> None:
    down = settings.replace(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    client: Client = await aiohttp_client(create_app(down))
    for method, path, body in [
            ("POST", "/iid_recommend", {"user_interactions": {"a": {}}}),
            ("POST", "/events", {"session_id": "s", "item_id": "a"}),
            ("GET", "/popular", None), ("GET", "/stats", None), ("GET", "/readyz", None),
            ("GET", "/items/a/similar", None), ("GET", "/sessions/s/recommendations", None)]:
        started = time.monotonic()
        resp = await client.request(method, path, json=body)
        assert resp.status == 503, path
        assert time.monotonic() - started < 1.0
        error = (await resp.json())["error"]
        assert error["code"] == "unavailable" and error["message"]
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/metrics")).status == 200


async def test_silent_redis_answers_503_within_a_second(aiohttp_client: Any,
                                                        settings: Settings) -> None:
    """A Redis that accepts connections and never answers (overloaded, half-open link)."""
    import asyncio

    held: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # never reply

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client: Client = await aiohttp_client(create_app(
            settings.replace(redis_url=f"redis://127.0.0.1:{port}/0")))
        for method, path, body in [
                ("POST", "/iid_recommend", {"user_interactions": {}}),
                ("POST", "/events", {"session_id": "s", "item_id": "a"}),
                ("GET", "/readyz", None)]:
            started = time.monotonic()
            resp = await client.request(method, path, json=body)
            assert resp.status == 503, path
            assert time.monotonic() - started < 1.0
            assert (await resp.json())["error"]["code"] == "unavailable"
    finally:
        for writer in held:
            writer.close()
        server.close()
