"""``POST /events``: a batch of interactions appended to the event stream, all or nothing, and
at most once per ``Idempotency-Key``."""

from __future__ import annotations

import hashlib
import time

from aiohttp import web

from service.api import access
from service.api.context import METRICS, SETTINGS, STORE, json_response, read_body
from service.api.errors import ApiError
from service.requests.events import event_batch
from service.requests.jsonutil import dumps
from service.store.ingestion import IdempotencyKey, Replayed

IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY = 255


async def post_events(request: web.Request) -> web.Response:
    body = await read_body(request)
    events = event_batch(body, request.app[SETTINGS], time.time())
    once = _once(request, body, len(events))
    try:
        await request.app[STORE].ingestion.ingest(events, once)
    except Replayed as replayed:
        accepted, _, digest = replayed.record.partition("|")
        if once is None or digest != once.record.partition("|")[2]:
            raise ApiError(409, "idempotency_key_reused",
                           f"This {IDEMPOTENCY_HEADER} was used within the last day for a "
                           "request with another body; use a new key for a new batch.",
                           IDEMPOTENCY_HEADER) from None
        return web.Response(body=dumps({"accepted": int(accepted)}), status=202,
                            content_type="application/json",
                            headers={"Idempotent-Replayed": "true"})
    request.app[METRICS].events.inc(len(events))
    return json_response({"accepted": len(events)}, status=202)


def _once(request: web.Request, body: bytes, count: int) -> IdempotencyKey | None:
    """The request's Idempotency-Key, scoped to the API key it came with: a retry of the same
    request (an ambiguous 503, a lost answer) within a day is answered, not appended again."""
    key = access.text_header(request, IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY or not all("!" <= c <= "~" for c in key):
        raise ApiError(400, "invalid", f"{IDEMPOTENCY_HEADER} must be 1 to "
                       f"{MAX_IDEMPOTENCY_KEY} visible ASCII characters (a UUID, say).",
                       IDEMPOTENCY_HEADER)
    client, _ = access.presented(request)
    digest = hashlib.blake2b(client + b"\0" + key.encode(), digest_size=16).hexdigest()
    return IdempotencyKey(digest, f"{count}|{hashlib.blake2b(body, digest_size=16).hexdigest()}")
