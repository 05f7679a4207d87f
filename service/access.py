"""Who may call what: API keys, and per-client rate limits.

Two kinds of key, sent as the ``X-API-Key`` header (or ``?key=`` for publishable keys, since
``navigator.sendBeacon`` cannot set headers):

* publishable: safe to embed in a page; may ask for recommendations and send events;
* secret: everything, including the admin operations (hide, forget, reset).

With no key configured the API is open, which suits a trusted network and the demo; the server
logs a warning at start. Keys are compared in constant time.
"""

from __future__ import annotations

import hmac
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from service.errors import ApiError
from service.settings import Settings

log = logging.getLogger("sessionrec.access")

OPEN, PUBLIC, ADMIN = "open", "public", "admin"
HEADER = "X-API-Key"


@dataclass(frozen=True)
class Keys:
    publishable: tuple[str, ...]
    secret: tuple[str, ...]

    @property
    def enabled(self) -> bool:
        return bool(self.publishable or self.secret)

    @classmethod
    def from_settings(cls, s: Settings) -> Keys:
        publishable = [k.strip() for k in s.publishable_keys.split(",") if k.strip()]
        secret = [k.strip() for k in s.secret_keys.split(",") if k.strip()]
        if s.keys_file:
            for n, line in enumerate(Path(s.keys_file).read_text("utf-8").splitlines(), 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                kind, _, key = line.partition(" ")
                if kind not in ("publishable", "secret") or not key.strip():
                    raise ValueError(f"{s.keys_file}:{n}: expected 'publishable KEY' or "
                                     "'secret KEY'")
                (publishable if kind == "publishable" else secret).append(key.strip())
        return cls(tuple(publishable), tuple(secret))


def _matches(key: str, candidates: tuple[str, ...]) -> bool:
    found = False
    for candidate in candidates:  # no early exit: constant time in the number of keys
        found |= hmac.compare_digest(key.encode(), candidate.encode())
    return found


def check(request: web.Request, keys: Keys, need: str) -> str | None:
    """Raise 401/403 unless the request may call an endpoint needing ``need``; returns the
    key used (the rate limiter's client identity), if any."""
    if need == OPEN or not keys.enabled:
        return None
    key = request.headers.get(HEADER)
    from_query = key is None
    if key is None:
        key = request.query.get("key")
    if not key:
        raise ApiError(401, "unauthorized",
                       f"Send an API key in the {HEADER} header.", HEADER)
    if _matches(key, keys.secret) and not from_query:
        return key
    if need == PUBLIC and _matches(key, keys.publishable):
        return key
    if need == ADMIN and _matches(key, keys.publishable):
        raise ApiError(403, "forbidden", "This operation needs a secret key.", HEADER)
    raise ApiError(401, "unauthorized", "The API key is not valid.", HEADER)


class RateLimiter:
    """A token bucket per client in Redis (so every API process shares it), refilled at
    ``rate`` per second up to ``burst``. One extra round trip per limited request."""

    def __init__(self, script: object, key_of: object, rate: float, burst: int) -> None:
        self.script = script
        self.key_of = key_of
        self.rate = rate
        self.burst = burst

    async def admit(self, client: str) -> None:
        key = self.key_of(client)  # type: ignore[operator]
        wait_ms = await self.script(  # type: ignore[operator]
            keys=[key], args=[int(time.time() * 1000), self.rate, self.burst])
        if int(wait_ms) > 0:
            retry = max(1, -(-int(wait_ms) // 1000))
            raise ApiError(429, "rate_limited",
                           f"Too many requests; retry in {retry} s.", None,
                           {"Retry-After": str(retry)})


def client_identity(request: web.Request, key: str | None) -> str:
    if key:
        return "key:" + key
    forwarded = request.headers.get("X-Forwarded-For")
    return "ip:" + (forwarded.split(",")[0].strip() if forwarded else (request.remote or "?"))


def warn_if_open(keys: Keys) -> None:
    if not keys.enabled:
        log.warning("no API keys configured: the API is open to anyone who can reach it "
                    "(set SESSIONREC_PUBLISHABLE_KEYS and SESSIONREC_SECRET_KEYS)")
