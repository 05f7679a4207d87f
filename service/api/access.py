"""Who may call what: API keys, and per-client rate limits.

Two kinds of key, sent as the ``X-API-Key`` header, or as ``Authorization: Bearer KEY`` (what
Prometheus sends), or ``?key=`` for publishable keys on POST (``navigator.sendBeacon`` cannot
set headers):

* publishable: safe to embed in a page; may ask for recommendations and send events;
* secret: everything, including the admin operations (hide, forget, reset).

``/metrics`` (``OPERATOR``) is open only while no key at all is configured: it shows the running
experiment's live counts, which whoever tries to tilt an experiment must not watch.

Until a publishable key is configured the public routes are open, which suits a trusted
network and the demo (and a shop that set a secret key first, for the admin routes, keeps its
pages working); serving on a non-loopback address that way logs a loud warning (and /readyz
says so). Admin routes are never open: with no secret key configured they are disabled. Keys
are compared in constant time, as bytes (a header is whatever bytes a client sent).

Rate limits are per client address: the peer's, or, when the peer is a configured trusted
proxy, the first address in ``X-Forwarded-For`` (read from the right) that is not one. A key
is no identity: the publishable key is in every page, so every visitor shares it.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from service.api.errors import ApiError
from service.settings import Settings
from service.store.scripts import Scripts

log = logging.getLogger("sessionrec.access")

OPEN, PUBLIC, OPERATOR, ADMIN = "open", "public", "operator", "admin"
HEADER = "X-API-Key"
BEARER = "Bearer "


@dataclass(frozen=True)
class ApiKeys:
    publishable: tuple[str, ...]
    secret: tuple[str, ...]

    @property
    def enabled(self) -> bool:
        return bool(self.publishable or self.secret)

    @property
    def publishable_bytes(self) -> tuple[bytes, ...]:
        return tuple(k.encode() for k in self.publishable)

    @property
    def secret_bytes(self) -> tuple[bytes, ...]:
        return tuple(k.encode() for k in self.secret)

    @classmethod
    def from_settings(cls, s: Settings) -> ApiKeys:
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


def raw(value: str) -> bytes:
    """A header or query value as the bytes the client sent (aiohttp decodes them as UTF-8
    with surrogate escapes, so bytes that are not UTF-8 survive as lone surrogates)."""
    return value.encode("utf-8", "surrogateescape")


def text_header(request: web.Request, name: str) -> str | None:
    """A header's value, or 400 naming the header when it is not valid UTF-8: such a value
    can be neither compared as text nor written into an answer."""
    value = request.headers.get(name)
    if value is not None:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(400, "invalid_header",
                           f"The {name} header is not valid UTF-8 text; send printable "
                           "characters.", name) from None
    return value


def _matches(key: bytes, candidates: tuple[bytes, ...]) -> bool:
    found = False
    for candidate in candidates:  # no early exit: constant time in the number of keys
        found |= hmac.compare_digest(key, candidate)
    return found


def presented(request: web.Request) -> tuple[bytes, bool]:
    """The key the request presents, and whether it came in the query (where only a
    publishable key may travel: a URL ends up in logs and histories)."""
    header = request.headers.get(HEADER)
    if header is None:
        authorization = request.headers.get("Authorization", "")
        if authorization.startswith(BEARER):
            header = authorization[len(BEARER):].strip()
    if header is not None:
        return raw(header), False
    return raw(request.query.get("key", "")), True


def is_secret(request: web.Request, keys: ApiKeys) -> bool:
    """Whether the request presents a secret key (in a header: never from a URL)."""
    key, from_query = presented(request)
    return bool(key) and not from_query and _matches(key, keys.secret_bytes)


def check(request: web.Request, keys: ApiKeys, need: str) -> None:
    """Raise 401/403 unless the request may call an endpoint needing ``need``."""
    if need == OPEN or (need == OPERATOR and not keys.enabled):
        return
    if need in (ADMIN, OPERATOR) and not keys.secret:
        what = "Admin operations are" if need == ADMIN else "Metrics are"
        raise ApiError(403, "admin_disabled",
                       f"{what} disabled: the server has no secret key. Set "
                       "SESSIONREC_SECRET_KEYS and send one in the X-API-Key header.", HEADER)
    if need == PUBLIC and not keys.publishable:
        return  # public routes are open until a publishable key is configured
    key, from_query = presented(request)
    if from_query and request.method != "POST":
        # only navigator.sendBeacon needs a key in the URL, and it posts: a key in a GET's URL
        # would let any page spend the API from its visitors' browsers with an <img>
        key = b""
    if not key:
        raise ApiError(401, "unauthorized",
                       f"Send an API key in the {HEADER} header.", HEADER)
    if not from_query and _matches(key, keys.secret_bytes):
        return
    if need == PUBLIC and _matches(key, keys.publishable_bytes):
        return
    if need in (ADMIN, OPERATOR) and _matches(key, keys.publishable_bytes):
        raise ApiError(403, "forbidden", "This operation needs a secret key.", HEADER)
    raise ApiError(401, "unauthorized", "The API key is not valid.", HEADER)


class RateLimiter:
    """A token bucket per client in Redis (so every API process shares it), refilled at
    ``rate`` per second up to ``burst``. One extra round trip per limited request."""

    def __init__(self, scripts: Scripts, key_of: Callable[[str], str], rate: float,
                 burst: int) -> None:
        self.scripts = scripts
        self.key_of = key_of
        self.rate = rate
        self.burst = burst

    async def admit(self, client: str) -> None:
        wait_ms = await self.scripts.ratelimit(self.key_of(client), int(time.time() * 1000),
                                               self.rate, self.burst)
        if wait_ms > 0:
            retry = max(1, -(-int(wait_ms) // 1000))
            raise ApiError(429, "rate_limited",
                           f"Too many requests; retry in {retry} s.", None,
                           {"Retry-After": str(retry)})


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def ip_of(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None


def _trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address | None,
             proxies: tuple[Network, ...]) -> bool:
    return address is not None and any(address in net for net in proxies)


def client_address(request: web.Request, proxies: tuple[Network, ...]) -> str:
    """Who the request comes from, for rate limits and the feedback's per-client share: an
    IPv4 address, or an IPv6 /64 (one host commonly holds a whole /64, so single IPv6
    addresses would let it rotate past any limit). ``X-Forwarded-For`` counts only when the
    peer is a trusted proxy, and then only as far as the chain of trusted proxies goes: each
    proxy appends the address it saw, so entries to the left of the last untrusted one are
    whatever the client wrote."""
    peer = request.remote or "?"
    if not proxies or not _trusted(ip_of(peer), proxies):
        return _group(peer)
    forwarded = text_header(request, "X-Forwarded-For") or ""
    for entry in reversed(forwarded.split(",")):
        address = ip_of(entry)
        if address is None:
            return _group(peer)  # a malformed chain: the proxy we trust is the last we know
        if not _trusted(address, proxies):
            return _group(str(address))
    return _group(peer)


@functools.lru_cache(maxsize=4096)
def _group(address: str) -> str:
    """The client an address counts as (cached: every request with a session asks, and
    parsing an address costs more than the rest of the check)."""
    found = ip_of(address)
    if isinstance(found, ipaddress.IPv6Address) and found.ipv4_mapped is None:
        return str(ipaddress.IPv6Network((found, 64), strict=False))
    return address


LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def is_loopback(host: str) -> bool:
    address = ip_of(host)
    return host in LOOPBACK_HOSTS or (address is not None and address.is_loopback)


def open_warning(keys: ApiKeys, host: str) -> str | None:
    """What to shout when the public routes are open to a network (None when they are not)."""
    if keys.publishable or is_loopback(host):
        return None
    return (f"no publishable key configured while serving on {host}: anyone who can reach "
            "this address may send events and ask for recommendations. Set "
            "SESSIONREC_PUBLISHABLE_KEYS (and SESSIONREC_SECRET_KEYS for the admin routes).")


def warn_if_open(keys: ApiKeys, host: str) -> str | None:
    warning = open_warning(keys, host)
    if warning is not None:
        log.warning("*** OPEN API *** %s", warning)
    if not keys.secret:
        log.info("no secret key configured: admin routes are disabled")
    return warning
