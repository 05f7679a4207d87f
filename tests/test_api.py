"""Every endpoint through HTTP against a real Redis, with a real worker applying the events."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

import pytest

from service.api.app import create_app
from service.api.context import STORE
from service.core.feedback import ID_LENGTH
from service.core.model import Event
from service.core.rules import NO_RULES
from service.requests.jsonutil import dumps
from service.settings import Settings
from service.store.state import Store
from tests.conftest import Client
from tests.helpers import drain

pytestmark = pytest.mark.kernel  # ./dev test runs these on both kernels

SEED = {"user_interactions": {"89898": {"timestamp": 1704060026, "rating": 4.5},
                              "22898": {"timestamp": 1704060026, "rating": 4.5},
                              "21255": {"timestamp": 1704060026, "rating": 4.5}},
        "k": 10, "recommend_seen": True}


def check_answer(body: dict[str, Any], k: int) -> list[str]:
    assert set(body) - {"variant"} == {"recommendations", "message", "recommendation_id"}
    rid = body["recommendation_id"]
    assert isinstance(rid, str) and len(rid) == ID_LENGTH
    recs = body["recommendations"]
    ids = [r["id"] for r in recs]
    scores = [r["score"] for r in recs]
    assert len(recs) <= k and len(set(ids)) == len(ids)
    assert all(isinstance(i, str) for i in ids)
    assert all(0 <= s <= 1 for s in scores) and scores == sorted(scores, reverse=True)
    return ids


def check_error(body: dict[str, Any], code: str | None = None, field: str | None = None) -> None:
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "field"}
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    if field is not None:
        assert body["error"]["field"] == field


def shop_events() -> list[dict[str, Any]]:
    """'grinder' is always visited with 'espresso'; other sessions browse unrelated items."""
    events: list[dict[str, Any]] = []
    t = 1_700_000_000
    for s in range(30):
        seq = ["espresso", "grinder", f"filler{s % 7}"] if s % 2 == 0 else \
            [f"filler{s % 7}", "espresso", "grinder"]
        for n, item in enumerate(seq):
            events.append({"session_id": f"shop-{s}", "item_id": item, "timestamp": t + n})
        t += 100
    for s in range(20):
        for n in range(3):
            events.append({"session_id": f"other-{s}", "item_id": f"filler{(s + n) % 7}",
                           "timestamp": t + n})
        t += 100
    return events


async def post_all(client: Client, events: list[dict[str, Any]]) -> None:
    for start in range(0, len(events), 100):
        resp = await client.post("/events", json={"events": events[start:start + 100]})
        assert resp.status == 202, await resp.text()
        assert (await resp.json()) == {"accepted": len(events[start:start + 100])}


async def test_seed_request_on_an_empty_model(client: Client) -> None:
    resp = await client.post("/iid_recommend", json=SEED)
    assert resp.status == 200
    body = await resp.json()
    # nothing learned yet: with recommend_seen the visitor's own items come back (repeat
    # consumption), under their own ids; without it there is nothing to recommend
    assert sorted(check_answer(body, 10)) == ["21255", "22898", "89898"]
    assert body["message"] == "Recommendations based on session interactions."
    unseen = await (await client.post("/iid_recommend", json={**SEED,
                                                               "recommend_seen": False})).json()
    assert check_answer(unseen, 10) == [] and unseen["message"]


async def test_learns_co_visitation_end_to_end(client: Client, settings: Settings) -> None:
    await post_all(client, shop_events())
    stats = await drain(settings)
    assert stats["events_processed"] == stats["events_accepted"] == 150
    assert stats["pending"] == 0 and stats["items"] == 9

    body = {"user_interactions": {"espresso": {"timestamp": 1_800_000_000}}, "k": 5}
    resp = await client.post("/iid_recommend", json=body)
    ids = check_answer(await resp.json(), 5)
    assert ids[0] == "grinder" and "espresso" not in ids
    assert (await resp.json())["message"] == "Recommendations based on session interactions."

    similar = await (await client.get("/items/espresso/similar?k=3")).json()
    assert check_answer(similar, 3)[0] == "grinder"
    assert "espresso" not in [r["id"] for r in similar["recommendations"]]

    popular = await (await client.get("/popular?k=4")).json()
    assert len(check_answer(popular, 4)) == 4


async def test_recommend_seen_both_ways(client: Client, settings: Settings) -> None:
    await post_all(client, shop_events())
    await drain(settings)
    inter = {"espresso": {"timestamp": 1}, "grinder": {"timestamp": 2}}
    hidden = await (await client.post("/iid_recommend", json={
        "user_interactions": inter, "k": 20, "recommend_seen": False})).json()
    assert not {"espresso", "grinder"} & set(check_answer(hidden, 20))
    shown = await (await client.post("/iid_recommend", json={
        "user_interactions": inter, "k": 20, "recommend_seen": True})).json()
    assert {"espresso", "grinder"} <= set(check_answer(shown, 20))


async def test_fewer_than_k_only_when_nothing_else_is_eligible(client: Client,
                                                               settings: Settings) -> None:
    pair = [{"session_id": "pair", "item_id": i, "timestamp": 1_790_000_000} for i in "ab"]
    await post_all(client, shop_events() + pair)
    await drain(settings)
    body = await (await client.post("/iid_recommend", json={
        "user_interactions": {"a": {}}, "k": 1000})).json()
    ids = check_answer(body, 1000)
    assert len(ids) == 10 and ids[0] == "b"  # eleven items, one seen; the rest trending
    assert "trending" in body["message"]
    one = await (await client.post("/iid_recommend", json={
        "user_interactions": {"espresso": {}}, "k": 1})).json()
    assert check_answer(one, 1) == ["grinder"]


async def test_session_endpoint_uses_live_interactions(client: Client,
                                                       settings: Settings) -> None:
    await post_all(client, shop_events())
    await drain(settings)
    resp = await client.post("/events", json={"session_id": "visitor", "item_id": "espresso"})
    assert resp.status == 202
    # no worker ran since: the live session is already there
    body = await (await client.get("/sessions/visitor/recommendations?k=3")).json()
    assert check_answer(body, 3)[0] == "grinder"
    with_seen = await (await client.get(
        "/sessions/visitor/recommendations?k=9&recommend_seen=true")).json()
    assert "espresso" in check_answer(with_seen, 9)
    assert (await (await client.get("/stats")).json())["live_sessions"] == 51  # 50 + visitor
    unknown = await (await client.get("/sessions/nobody/recommendations")).json()
    assert unknown["message"].startswith("Trending")


async def test_text_plain_body_is_accepted(client: Client) -> None:
    resp = await client.post("/events", data=b'{"session_id": "b", "item_id": 7}',
                             headers={"Content-Type": "text/plain;charset=UTF-8"})
    assert resp.status == 202
    assert (await (await client.get("/stats")).json())["events_accepted"] == 1


async def test_a_body_its_content_encoding_does_not_decode_is_a_400(
        client: Client, caplog: pytest.LogCaptureFixture) -> None:
    """Red team: a corrupt gzip body (or a valid one with bytes after it) was a 500; then,
    answered 400, aiohttp read on after the answer and logged each one as an unhandled
    exception (a traceback at ERROR per request anyone can send)."""
    import gzip

    for body in (b"\x1f\x8b garbage", gzip.compress(b'{"session_id": "s", "item_id": 1}')
                 + b"garbage"):
        resp = await client.post("/events", data=body, headers={
            "Content-Type": "application/json", "Content-Encoding": "gzip", "Connection": "close"})
        assert resp.status == 400, await resp.text()
        check_error(await resp.json(), "invalid_body", "body")
    assert (await (await client.get("/stats")).json())["events_accepted"] == 0
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


async def test_bodies_decode_from_gzip_and_deflate_and_other_codings_are_a_415(
        client: Client, aiohttp_client: Any, settings: Settings,
        caplog: pytest.LogCaptureFixture) -> None:
    """Red team: a coding aiohttp could not decode (br, zstd without their packages) was its
    plain-text 400 before any key check, with a traceback logged at ERROR per request; codings
    it did not know passed as if none. Now every body's codings are undone by the app: gzip
    and deflate (zlib's or raw) decode, within the body limit as decoded; any other is a 415
    naming the body, in the JSON shape, after the key check."""
    import gzip
    import zlib

    event = b'{"session_id": "s", "item_id": "a"}'
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    for coding, body in (("gzip", gzip.compress(event)), ("x-gzip", gzip.compress(event)),
                         ("deflate", zlib.compress(event)),
                         ("deflate", raw.compress(event) + raw.flush()),
                         ("identity", event), ("gzip, gzip", gzip.compress(gzip.compress(event))),
                         ("GZIP", gzip.compress(event))):
        resp = await client.post("/events", data=body, headers={"Content-Encoding": coding})
        assert resp.status == 202, (coding, await resp.text())
    for coding in ("br", "zstd", "compress", "gzip, br", "foo", "gzip, gzip, gzip"):
        resp = await client.post("/events", data=event, headers={"Content-Encoding": coding})
        assert resp.status == 415, (coding, await resp.text())
        check_error(await resp.json(), "unsupported_encoding", "body")
    keyed = await aiohttp_client(create_app(settings.replace(publishable_keys="pk_test")))
    anonymous = await keyed.post("/events", data=event, headers={"Content-Encoding": "br"})
    assert anonymous.status == 401  # the key is checked first, as for any body
    check_error(await anonymous.json(), "unauthorized", None)
    # a small body that inflates past the limit: refused as it inflates, not after
    bomb = gzip.compress(b" " * (settings.max_body_bytes + 10))
    resp = await client.post("/events", data=bomb, headers={"Content-Encoding": "gzip"})
    assert resp.status == 413
    check_error(await resp.json(), "body_too_large", "body")
    assert (await (await client.get("/stats")).json())["events_accepted"] == 7
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


@pytest.mark.parametrize("request_bytes", [
    b"POST /events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n"
    b"Connection: close\r\n\r\n0\r\n\r\n",
    b"POST /events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Encoding\x01: gzip\r\nContent-Length: 2\r\n"
    b"\r\n{}",
])
async def test_malformed_http_is_a_400_logged_without_a_traceback(
        client: Client, caplog: pytest.LogCaptureFixture, request_bytes: bytes) -> None:
    """Red team: framing aiohttp's parser refuses (before any handler, without a key) was
    logged at ERROR with an 11-line traceback per request, so anyone could flood the log. It
    is still aiohttp's 400 (the connection closes: nothing in it can be trusted), logged at
    INFO in one line."""
    caplog.set_level(logging.INFO, "aiohttp.server")
    assert client.server.host is not None and client.server.port is not None
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(request_bytes)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answer.startswith((b"HTTP/1.0 400", b"HTTP/1.1 400")), answer[:80]
    server = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert server and all(r.levelno == logging.INFO and not r.exc_info for r in server)
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


async def test_batch_is_all_or_nothing(client: Client) -> None:
    events = [{"session_id": "s", "item_id": str(n)} for n in range(5)]
    events.append({"session_id": "s", "item_id": "x", "rating": "high"})
    resp = await client.post("/events", json={"events": events})
    assert resp.status == 400
    check_error(await resp.json(), "invalid", "events[5].rating")
    assert (await (await client.get("/stats")).json())["events_accepted"] == 0


@pytest.mark.parametrize(("method", "path", "body", "status", "field"), [
    ("POST", "/iid_recommend", b"{", 400, "body"),
    ("POST", "/iid_recommend", b"", 400, "body"),
    ("POST", "/iid_recommend", b'{"user_interactions": {}, "k": 0}', 400, "k"),
    ("POST", "/iid_recommend", b'{"user_interactions": {}, "k": 1001}', 400, "k"),
    ("POST", "/iid_recommend", b'{"user_interactions": {"a": {"rating": NaN}}}', 400, "body"),
    ("POST", "/events", b'{"session_id": "s"}', 400, "item_id"),
    ("GET", "/items/a/similar?k=abc", None, 400, "k"),
    ("GET", "/popular?k=-1", None, 400, "k"),
    ("GET", "/sessions/s/recommendations?recommend_seen=perhaps", None, 400, "recommend_seen"),
    ("GET", "/nope", None, 404, "path"),
    ("GET", "/iid_recommend", None, 405, "method"),
    ("DELETE", "/events", None, 405, "method"),
])
async def test_errors_have_the_json_shape(client: Client, method: str, path: str,
                                          body: bytes | None, status: int, field: str) -> None:
    resp = await client.request(method, path, data=body)
    assert resp.status == status
    assert resp.content_type == "application/json"
    check_error(await resp.json(), field=field)


async def test_body_over_the_limit_is_413(aiohttp_client: Any, settings: Settings) -> None:
    from service.api.app import create_app

    small: Client = await aiohttp_client(create_app(settings.replace(max_body_bytes=1000)))
    resp = await small.post("/events", data=b'{"events": [' + b" " * 2000 + b"]}")
    assert resp.status == 413
    check_error(await resp.json(), "body_too_large", "body")


async def test_operational_endpoints(client: Client) -> None:
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200
    stats = await (await client.get("/stats")).json()
    assert {"events_accepted", "events_processed", "pending", "items", "live_sessions"} <= set(
        stats)
    await client.post("/iid_recommend", json=SEED)
    metrics = await (await client.get("/metrics")).text()
    assert 'sessionrec_http_requests_total{route="/iid_recommend",status="200"} 1.0' in metrics
    assert 'sessionrec_http_request_seconds_count{route="/iid_recommend"} 1.0' in metrics
    assert 'sessionrec_http_request_seconds_bucket{le="+Inf",route="/iid_recommend"} 1.0' \
        in metrics
    assert 'sessionrec_state{figure="pending"}' in metrics
    doc = await (await client.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.") and "/iid_recommend" in doc["paths"]
    page = await client.get("/docs")
    assert page.status == 200 and "/iid_recommend" in await page.text()
    sdk = await client.get("/sdk.js")
    assert sdk.status == 200 and "sessionrec" in await sdk.text()
    demo = await client.get("/demo")
    assert demo.status == 200 and "/sdk.js" in await demo.text()
    catalogue = await (await client.get("/demo/catalogue.json")).json()
    assert len(catalogue) >= 40 and {"id", "name", "price"} <= set(catalogue[0])


async def test_html_pages_cannot_be_framed_and_run_only_their_own_code(client: Client) -> None:
    """The dashboard, the demo shop and /docs: no frame may hold them, and their policy allows
    no inline code but their own (by hash), and nothing from another origin. (Chromium runs
    them under it: tests/test_browser.py.)"""
    for path in ("/dashboard", "/demo", "/docs"):
        resp = await client.get(path)
        assert resp.status == 200 and resp.content_type == "text/html"
        assert resp.headers["X-Frame-Options"] == "DENY"
        policy = {d.split()[0]: d.split()[1:]
                  for d in resp.headers["Content-Security-Policy"].split(";")}
        assert policy["frame-ancestors"] == ["'none'"] and policy["default-src"] == ["'none'"]
        assert policy["connect-src"] == ["'self'"] and policy["base-uri"] == ["'none'"]
        for directive in ("script-src", "style-src"):
            assert policy[directive][0] == "'self'"
            assert all(s.startswith("'sha256-") for s in policy[directive][1:]), policy
        inline_styles = (await resp.text()).count("<style>")
        assert len(policy["style-src"]) == 1 + inline_styles
    for path in ("/sdk.js", "/iid_recommend"):  # what other sites load or call: no page policy
        resp = await (client.get(path) if path == "/sdk.js" else client.post(path, json=SEED))
        assert "X-Frame-Options" not in resp.headers


ODD_IDS = ["{tag}", "a}b{c", "ns:{p0}:events", "with space", 'quo"te', "ünïcødé ☕", "日本語",
           "new\nline", "nul\u0000byte", "*", "x" * 256]


async def test_odd_ids_round_trip_byte_identical(client: Client, settings: Settings) -> None:
    events = []
    for n, odd in enumerate(ODD_IDS):
        sid = f"{odd[:240]}-s{n}"  # odd characters in session ids too
        events += [{"session_id": sid, "item_id": odd, "timestamp": 100 + n},
                   {"session_id": sid, "item_id": "anchor", "timestamp": 101 + n}]
    await post_all(client, events)
    stats = await drain(settings)
    assert stats["items"] == len(ODD_IDS) + 1
    body = await (await client.get("/items/anchor/similar?k=50")).json()
    assert sorted(check_answer(body, 50)) == sorted(ODD_IDS)
    for odd in ODD_IDS:
        live = await (await client.post("/iid_recommend", json={
            "user_interactions": {odd: {}}, "k": 5})).json()
        assert check_answer(live, 5)[0] == "anchor"
    # the namespace holds only keys it laid out: no id leaked into a key name
    store = Store(settings)
    try:
        keys = [k.decode() async for k in store.redis.scan_iter(match=f"{settings.namespace}:*")]
    finally:
        await store.close()
    assert keys and all(k.split(":")[1].startswith("{") for k in keys)
    assert not any(odd in k for k in keys for odd in ODD_IDS if odd not in ("*",))


async def test_cors_allow_list_and_preflight(aiohttp_client: Any, settings: Settings) -> None:
    from service.api.app import create_app

    client: Client = await aiohttp_client(create_app(
        settings.replace(cors_origins="https://shop.example, https://m.shop.example/")))
    body: dict[str, Any] = {"user_interactions": {}}
    ok = await client.post("/iid_recommend", json=body,
                           headers={"Origin": "https://m.shop.example"})
    assert ok.status == 200
    assert ok.headers["Access-Control-Allow-Origin"] == "https://m.shop.example"
    pre = await client.options("/events", headers={
        "Origin": "https://shop.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-api-key"})
    assert pre.status == 204
    assert "POST" in pre.headers["Access-Control-Allow-Methods"]
    assert "X-API-Key" in pre.headers["Access-Control-Allow-Headers"]
    assert pre.headers["Access-Control-Allow-Origin"] == "https://shop.example"
    # an error answer is readable by an allowed origin too
    bad = await client.post("/events", data=b"{", headers={"Origin": "https://shop.example"})
    assert bad.status == 400 and bad.headers["Access-Control-Allow-Origin"]
    # anyone else: refused, even for a "simple" text/plain beacon post
    for method, path in [("POST", "/events"), ("POST", "/iid_recommend")]:
        resp = await client.request(method, path, data=b'{"session_id": "s", "item_id": 1}',
                                    headers={"Origin": "https://evil.example",
                                             "Content-Type": "text/plain"})
        assert resp.status == 403
        check_error(await resp.json(), "origin_not_allowed", "Origin")
        assert "Access-Control-Allow-Origin" not in resp.headers
    evil_pre = await client.options("/events", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert evil_pre.status == 403
    assert (await (await client.get("/stats")).json())["events_accepted"] == 0
    # same origin is always allowed; no Origin header (curl, back ends) too
    host = f"http://{client.host}:{client.port}"
    assert (await client.post("/iid_recommend", json=body, headers={"Origin": host})).status \
        == 200


async def test_path_ids_may_hold_any_character(client: Client, settings: Settings) -> None:
    from urllib.parse import quote

    odd = "a/b\nc {x}:y"
    events = [{"session_id": odd, "item_id": odd}, {"session_id": odd, "item_id": "z"},
              {"session_id": "t", "item_id": odd}, {"session_id": "t", "item_id": "z"}]
    await post_all(client, events)
    await drain(settings)
    similar = await client.get(f"/items/{quote(odd, safe='')}/similar")
    assert similar.status == 200
    assert check_answer(await similar.json(), 10) == ["z"]
    session = await client.get(f"/sessions/{quote(odd, safe='')}/recommendations"
                               "?recommend_seen=true")
    assert session.status == 200
    assert set(check_answer(await session.json(), 10)) == {odd, "z"}
    too_long = await client.get(f"/items/{'x' * 10_000}/similar")
    assert too_long.status == 400
    check_error(await too_long.json(), "invalid", "item_id")


async def test_null_rating_means_none(client: Client) -> None:
    resp = await client.post("/events", json={"session_id": "s", "item_id": "a",
                                              "rating": None})
    assert resp.status == 202


async def raw_request(client: Client, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """An HTTP/1.1 request written byte for byte (clients refuse to send non-UTF-8 headers)."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    status = int(answer.split(b" ", 2)[1])
    return status, answer.split(b"\r\n\r\n", 1)[1]


# --- header bytes that are not UTF-8 ----------------------------------------------------------
async def test_non_utf8_headers_are_a_4xx_json_error_never_a_500(aiohttp_client: Any,
                                                                 settings: Settings) -> None:
    open_client: Client = await aiohttp_client(create_app(settings))
    body = b'{"user_interactions": {"89898": {}}}'
    status, answer = await raw_request(open_client, b"POST /iid_recommend HTTP/1.1\r\n"
                                       b"Host: 127.0.0.1\r\nOrigin: http://a\xff\r\n", body)
    assert status == 400, answer
    error = (await asyncio.to_thread(__import__("orjson").loads, answer))["error"]
    assert error["field"] == "Origin" and "\ufffd" not in error["message"]
    keyed: Client = await aiohttp_client(create_app(settings.replace(
        publishable_keys="pk", secret_keys="sk")))
    for head in (b"X-API-Key: \xff\xfe\r\n", b"X-API-Key: pk\xff\r\n"):
        status, answer = await raw_request(keyed, b"POST /iid_recommend HTTP/1.1\r\n"
                                           b"Host: 127.0.0.1\r\n" + head, body)
        assert status == 401, answer
        assert b'"field":"X-API-Key"' in answer
    status, answer = await raw_request(keyed, b"DELETE /admin/items/a HTTP/1.1\r\n"
                                       b"Host: 127.0.0.1\r\nX-API-Key: sk\xff\r\n")
    assert status == 401, answer


def test_an_answer_with_a_lone_surrogate_is_still_json() -> None:
    assert dumps({"id": "a\ud800b"}) == '{"id":"a\ufffdb"}'.encode()


async def test_item_ids_a_producer_wrote_as_invalid_utf8_never_break_answers(
        client: Client, settings: Settings) -> None:
    store = client.app[STORE]
    stream = store.keys.stream(0)
    session = next(f"s{n}" for n in range(100)
                   if store.ingestion.partition(Event(f"s{n}", "", 0)) == 0)
    for item in (b"good", b"bad\xed\xa0\x80"):  # an encoded lone surrogate
        await store.redis.xadd(stream, {b"session": session.encode(), b"item": item,
                                        b"ts": b"1700000000", b"type": b"view"})
    stats = await drain(settings)
    assert stats["events_dead"] == 1
    bodies: list[dict[str, Any]] = [{"user_interactions": {"good": {}}, "recommend_seen": True},
                                    {"user_interactions": {}}]
    for body in bodies:
        assert (await client.post("/iid_recommend", json=body)).status == 200
    assert (await client.get(f"/sessions/{session}/recommendations")).status == 200


async def test_a_full_session_answer_reads_as_its_rows_and_survives_an_unwritable_id(
        client: Client, settings: Settings) -> None:
    """A session's answer of k rows of its own is written as JSON by the kernel: the same
    ids, and scores relative to the first rounded to 6 decimals, as the rows the answer
    holds; an id the kernel cannot write (a lone surrogate Redis gave as a name) is written
    the other way, with U+FFFD, and the answer is still 200."""
    import numpy as np

    from service import kernel
    from service.answers.recommender import Recommender
    from service.core.layout import item_hash

    store = client.app[STORE]
    events = [Event(f"s{s}", f"i{(s + n) % 30}", 1_700_000_000 + 60 * s + n, "view")
              for s in range(60) for n in range(6)]
    await store.ingestion.append(events)
    await drain(settings)
    recommender = Recommender(store, settings)
    answer = await recommender.recommend([("i3", 1_700_009_000.0, 1.0)], 5, False)
    assert answer.encoded is not None and not answer.recommendations
    rows = answer.rows()
    assert len(rows) == 5 and rows[0]["score"] == 1.0
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    plain = await recommender.recommend([("i3", 1_700_009_000.0, 1.0)], 5, False,
                                        rules=dataclasses.replace(NO_RULES, explain=True))
    assert [(r["id"], r["score"]) for r in plain.rows()] == \
        [(r["id"], r["score"]) for r in rows]  # explained: the rows as dicts
    store.reads.names.put(int.from_bytes(item_hash(rows[0]["id"]), "little"), "bad\ud800")
    assert kernel.rows_json(["bad\ud800"], np.zeros(1, np.int64), np.ones(1), 1) is None
    response = await client.post("/iid_recommend", json={
        "user_interactions": {"i3": {"timestamp": 1_700_009_000}}, "k": 5})
    assert response.status == 200
    body = await response.json()
    assert [r["id"] for r in body["recommendations"]] == \
        ["bad\ufffd"] + [r["id"] for r in rows[1:]]
