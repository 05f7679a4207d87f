"""Hostile input: malformed JSON, wrong types, NaN, huge numbers, booleans as ints, odd ids.
Whatever is sent, the answer is a 2xx or a 4xx with the error shape: never a 5xx."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Client

EXAMPLES = int(os.environ.get("SESSIONREC_SWEEP_EXAMPLES", "250"))
"""Generated requests per test (4 tests). SESSIONREC_SWEEP_EXAMPLES=2500 sends 10,000."""
SWEEP = settings(max_examples=EXAMPLES, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])
STATUSES: Counter[int] = Counter()


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    yield
    print(f"\nhostile sweep: {sum(STATUSES.values())} requests, statuses "
          f"{dict(sorted(STATUSES.items()))}")

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=2**63, max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
    st.sampled_from(["", "NaN", "1e999", "{", "}", ":", "\u0000", "☕", "x" * 300]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=12)
interaction = st.one_of(values, st.fixed_dictionaries(
    {}, optional={"timestamp": values, "rating": values, "extra": values}))
recommend_bodies = st.one_of(
    values,
    st.fixed_dictionaries({"user_interactions": st.dictionaries(
        st.text(max_size=300), interaction, max_size=5)},
        optional={"k": values, "recommend_seen": values, "other": values}))
event = st.fixed_dictionaries(
    {}, optional={"session_id": values, "item_id": values, "timestamp": values,
                  "type": st.one_of(values, st.sampled_from(["view", "purchase"])),
                  "rating": values})
event_bodies = st.one_of(values, event,
                         st.fixed_dictionaries({"events": st.one_of(
                             values, st.lists(event, max_size=5))}))


def encode(body: Any) -> bytes:
    return json.dumps(body, allow_nan=True).encode()


async def check(resp: Any) -> None:
    STATUSES[resp.status] += 1
    assert resp.status < 500, await resp.text()
    if resp.status >= 400:
        body = await resp.json()
        assert set(body["error"]) == {"code", "message", "field"} and body["error"]["message"]


@SWEEP
@given(body=recommend_bodies)
async def test_iid_recommend_never_5xx(client: Client, body: Any) -> None:
    await check(await client.post("/iid_recommend", data=encode(body)))


@SWEEP
@given(body=event_bodies)
async def test_events_never_5xx(client: Client, body: Any) -> None:
    await check(await client.post("/events", data=encode(body)))


@SWEEP
@given(raw=st.binary(max_size=300), path=st.sampled_from(["/iid_recommend", "/events"]))
async def test_raw_bytes_never_5xx(client: Client, raw: bytes, path: str) -> None:
    await check(await client.post(path, data=raw, headers={"Content-Type": "text/plain"}))


@SWEEP
@given(ident=st.text(min_size=1, max_size=300), k=st.text(max_size=8),
       seen=st.text(max_size=6), route=st.sampled_from(
           ["/items/{}/similar", "/items/{}/bought-together", "/sessions/{}/recommendations",
            "/popular"]))
async def test_get_routes_never_5xx(client: Client, ident: str, k: str, seen: str,
                                    route: str) -> None:
    path = route.format(quote(ident, safe="")) + f"?k={quote(k)}&recommend_seen={quote(seen)}"
    await check(await client.get(path))
