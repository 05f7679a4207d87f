"""The catalogue: records through the API (secret key), in bulk, through ``sessionrec catalog``
from JSON lines and CSV, on standalone Redis and on the cluster; bad input is a 400 naming the
field, and nothing of a bad request or file is stored."""

from __future__ import annotations

import asyncio
import gzip
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.api.app import create_app
from service.api.context import STORE
from service.core.catalog import Record
from service.core.catalog import encode as encode_record
from service.core.layout import item_hash, shard_of
from service.demo import sample_catalogue
from service.offline import catalog
from service.settings import Settings
from service.store.state import Store
from tests.conftest import Client
from tests.helpers import drain

SECRET = "sk_test_catalog"
ADMIN = {"X-API-Key": SECRET}


async def admin_client(aiohttp_client: Any, settings: Settings) -> Client:
    client: Client = await aiohttp_client(create_app(settings.replace(
        publishable_keys="pk_test_catalog", secret_keys=SECRET)))
    return client


async def test_a_record_is_put_read_replaced_and_deleted(aiohttp_client: Any,
                                                         settings: Settings) -> None:
    client = await admin_client(aiohttp_client, settings)
    body = {"name": "Burr grinder", "categories": ["Coffee", "Grinders"], "price": 18.5,
            "tags": ["sale"], "attributes": {"colour": "black", "watts": 150, "new": True}}
    put = await client.put("/items/g%2F1", json=body, headers=ADMIN)  # ids may hold "/"
    assert put.status == 200
    want = {"id": "g/1", "available": True, **body}
    assert await put.json() == want
    got = await client.get("/items/g%2F1", headers=ADMIN)
    assert got.status == 200 and await got.json() == want
    # a record replaces the earlier one whole
    assert (await client.put("/items/g%2F1", json={"available": False},
                             headers=ADMIN)).status == 200
    assert await (await client.get("/items/g%2F1", headers=ADMIN)).json() == {
        "id": "g/1", "categories": [], "available": False, "tags": [], "attributes": {}}
    deleted = await client.delete("/items/g%2F1", headers=ADMIN)
    assert await deleted.json() == {"item_id": "g/1", "deleted": True}
    missing = await client.get("/items/g%2F1", headers=ADMIN)
    assert missing.status == 404 and (await missing.json())["error"]["field"] == "item_id"
    assert await (await client.delete("/items/g%2F1", headers=ADMIN)).json() == {
        "item_id": "g/1", "deleted": False}
    # a path ending in /similar stays the similar-items route's, for every method; such an id
    # goes in through POST /items
    assert (await client.get("/items/a/similar", headers={"X-API-Key": "pk_test_catalog"})
            ).status == 200
    assert (await client.put("/items/a/similar", json={}, headers=ADMIN)).status == 405
    assert (await client.post("/items", json={"items": [{"id": "a/similar"}]},
                              headers=ADMIN)).status == 200
    store = Store(settings)
    try:
        assert await store.items.get("a/similar") == Record("a/similar")
    finally:
        await store.close()


async def test_an_integer_attribute_reads_back_as_an_integer(aiohttp_client: Any,
                                                            settings: Settings) -> None:
    """``size: 2`` comes back as ``2``, not ``2.0`` (issue 27, point 9), and rules still take
    2 and 2.0 for the same value."""
    client = await admin_client(aiohttp_client, settings)
    body = {"attributes": {"size": 2, "weight": 2.5, "big": 10**15}}
    assert (await client.put("/items/shoe", json=body, headers=ADMIN)).status == 200
    got = await client.get("/items/shoe", headers=ADMIN)
    text = await got.text()
    assert '"size":2,' in text.replace(" ", "") and '"big":1000000000000000' in text
    attributes = json.loads(text)["attributes"]
    assert type(attributes["size"]) is int and type(attributes["weight"]) is float
    public = {"X-API-Key": "pk_test_catalog"}
    for wanted in (2, 2.0, [2.0, 3], [1, 2]):
        rule = json.dumps({"attributes": {"size": wanted}})
        answer = await (await client.get("/popular", params={"filter": rule},
                                         headers=public)).json()
        assert [r["id"] for r in answer["recommendations"]] == ["shoe"], wanted
    assert (await client.put("/items/shoe", json={"attributes": {"size": 10**16}},
                             headers=ADMIN)).status == 400


async def test_the_catalogue_needs_a_secret_key(aiohttp_client: Any,
                                                settings: Settings) -> None:
    client = await admin_client(aiohttp_client, settings)
    public = {"X-API-Key": "pk_test_catalog"}
    assert (await client.put("/items/a", json={}, headers=public)).status == 403
    assert (await client.get("/items/a", headers=public)).status == 403
    assert (await client.post("/items", json={"items": [{"id": "a"}]})).status == 401
    open_client: Client = await aiohttp_client(create_app(settings))
    disabled = await open_client.put("/items/a", json={})
    assert disabled.status == 403 and (await disabled.json())["error"]["code"] == \
        "admin_disabled"


async def test_records_in_bulk_land_in_their_shards(aiohttp_client: Any,
                                                    settings: Settings) -> None:
    client = await admin_client(aiohttp_client, settings)
    items = [{"id": f"i{n}", "categories": [f"c{n % 7}"], "price": n} for n in range(900)]
    stored = await client.post("/items", json={"items": items}, headers=ADMIN)
    assert await stored.json() == {"stored": 900}
    store = Store(settings)
    try:
        shards = {shard_of(item_hash(f"i{n}")) for n in range(900)}
        assert len(shards) == 64  # spread over every item shard (cluster-safe, one per slot)
        for n in (0, 451, 899):
            record = await store.items.get(f"i{n}")
            assert record == Record(f"i{n}", None, (f"c{n % 7}",), True, float(n))
    finally:
        await store.close()


BAD_RECORDS = [
    ({"colour": "red"}, "colour"),
    ({"price": "cheap"}, "price"),
    ({"price": -1}, "price"),
    ({"available": "yes"}, "available"),
    ({"categories": "Coffee"}, "categories"),
    ({"categories": ["x"] * 10_000}, "categories"),
    ({"tags": ["ok", 3]}, "tags[1]"),
    ({"tags": ["x" * 300]}, "tags[0]"),
    ({"attributes": {"size": [1, 2]}}, "attributes.size"),
    ({"attributes": {"w": 1e16}}, "attributes.w"),
    ({"name": "n" * 1001}, "name"),
    ({"id": "other"}, "id"),
    ({"attributes": {f"a{n}": "v" * 900 for n in range(30)}}, "body"),
]


@pytest.mark.parametrize(("body", "field"), BAD_RECORDS)
async def test_a_bad_record_is_a_400_naming_the_field_and_stores_nothing(
        aiohttp_client: Any, settings: Settings, body: dict[str, Any], field: str) -> None:
    client = await admin_client(aiohttp_client, settings)
    put = await client.put("/items/a", json=body, headers=ADMIN)
    assert put.status == 400, await put.text()
    assert (await put.json())["error"]["field"] == field
    assert (await client.get("/items/a", headers=ADMIN)).status == 404
    # in a batch, one bad record stores none of the good ones before it
    batch = {"items": [{"id": "good"}, {"id": "a", **{k: v for k, v in body.items()
                                                       if k != "id"}}]}
    if "id" not in body:
        posted = await client.post("/items", json=batch, headers=ADMIN)
        assert posted.status == 400
        assert (await posted.json())["error"]["field"].startswith("items[1]")
        assert (await client.get("/items/good", headers=ADMIN)).status == 404


async def test_oversized_batches_and_ids_are_refused(aiohttp_client: Any,
                                                     settings: Settings) -> None:
    client = await admin_client(aiohttp_client, settings)
    too_many = {"items": [{"id": f"i{n}"} for n in range(settings.max_batch + 1)]}
    refused = await client.post("/items", json=too_many, headers=ADMIN)
    assert refused.status == 400 and (await refused.json())["error"]["field"] == "items"
    long_id = "x" * (settings.max_id_length + 1)
    refused = await client.put(f"/items/{long_id}", json={}, headers=ADMIN)
    assert refused.status == 400 and (await refused.json())["error"]["field"] == "item_id"
    for body, field in (({"items": []}, "items"), ({"items": [{"name": "no id"}]},
                                                    "items[0].id"), ({}, "items")):
        answer = await client.post("/items", json=body, headers=ADMIN)
        assert answer.status == 400 and (await answer.json())["error"]["field"] == field


async def test_sessionrec_catalog_imports_100k_jsonl_records(settings: Settings,
                                                             tmp_path: Path) -> None:
    path = tmp_path / "catalogue.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for n in range(100_000):
            f.write(json.dumps({"id": n, "name": f"item {n}", "categories": [f"c{n % 50}"],
                                "price": n / 100, "available": n % 10 != 0}) + "\n")
    store = Store(settings)
    seen: list[int] = []
    try:
        assert await catalog.import_file(store, str(path), "auto", seen.append) == 100_000
        assert seen and seen[-1] == 100_000 - 100_000 % catalog.BATCH
        for n in (0, 12_345, 99_999):
            assert await store.items.get(str(n)) == Record(
                str(n), f"item {n}", (f"c{n % 50}",), n % 10 != 0, n / 100)
    finally:
        await store.close()


async def test_a_bad_line_stores_nothing_and_names_line_and_field(settings: Settings,
                                                                  tmp_path: Path) -> None:
    path = tmp_path / "catalogue.csv"
    path.write_text("id,name,categories,tags,available,price,colour,watts\n"
                    "a,Grinder,Coffee|Grinders,sale,true,18.5,black,150\n"
                    "b,Kettle,Tea,,false,,steel,\n"
                    "c,Broken,Tea,,maybe,,,\n", encoding="utf-8")
    store = Store(settings)
    try:
        with pytest.raises(catalog.BadRecord, match=r"line 4: available must be true or false"):
            await catalog.import_file(store, str(path), "auto")
        assert await store.items.get("a") is None  # the whole file is checked first
        path.write_text(path.read_text().replace("maybe", "true"), encoding="utf-8")
        assert await catalog.import_file(store, str(path), "csv") == 3
        assert await store.items.get("a") == Record(
            "a", "Grinder", ("Coffee", "Grinders"), True, 18.5, ("sale",),
            {"colour": "black", "watts": 150})
        assert await store.items.get("b") == Record("b", "Kettle", ("Tea",), False,
                                                   attributes={"colour": "steel"})
    finally:
        await store.close()


def test_the_cli_reports_a_bad_file_and_exits_2(settings: Settings, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from service.cli import main

    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b", "price": "x"}\n', encoding="utf-8")
    args = ["catalog", str(path), "--redis-url", settings.redis_url,
            "--namespace", settings.namespace, "--partitions", str(settings.partitions)]
    assert main(args) == 2  # a refusal, as every command's (issue 27, point 4)
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == (f"sessionrec catalog: {path}, line 2: price must be a number, not a "
                       "string; nothing stored")
    path.write_text('{"id": "a"}\n{"id": "b", "price": 3}\n', encoding="utf-8")
    assert main(args) == 0
    assert "catalog: 2 records stored" in capsys.readouterr().out


async def test_the_demo_catalogue_goes_through_the_catalogue(settings: Settings) -> None:
    store = Store(settings)
    try:
        records = sample_catalogue()
        await store.items.put(records)
        espresso = await store.items.get("1001")
        assert espresso is not None and espresso.name == "Espresso machine"
        assert espresso.categories == ("Coffee",) and len(records) > 40
    finally:
        await store.close()


async def test_another_process_sees_a_change_within_half_a_second(settings: Settings) -> None:
    """Each serve process holds copies of the hidden set and of the catalogue; the contract's
    second is the copies' age plus the request under way, so a copy may be half of it old,
    counted from the start of the read that made it."""
    writer, reader = Store(settings), Store(settings)
    grinder = int.from_bytes(item_hash("grinder"), "little")
    try:
        await writer.items.put([Record("grinder", price=20.0)])
        # the reader's copies are read just before the change: as fresh as they get
        assert grinder not in (await reader.reads.hidden_items()).tolist()
        assert (await reader.items.mirror.current()).prices[
            (await reader.items.mirror.current()).row_of[grinder]] == 20.0
        await writer.items.put([Record("grinder", price=25.0, available=False)])
        changed = time.monotonic()
        while grinder not in (await reader.reads.hidden_items()).tolist():
            assert time.monotonic() - changed < 0.7, "the hidden set's copy is too old"
            await asyncio.sleep(0.02)
        while (index := await reader.items.mirror.current()).prices[index.row_of[grinder]] != 25.0:
            assert time.monotonic() - changed < 0.7, "the catalogue's copy is too old"
            await asyncio.sleep(0.02)
    finally:
        await writer.close()
        await reader.close()


async def test_an_unavailable_item_leaves_every_answer_of_every_process_within_a_second(
        aiohttp_client: Any, settings: Settings) -> None:
    from tests.helpers import drain

    first = await admin_client(aiohttp_client, settings)
    second = await admin_client(aiohttp_client, settings)  # another serve process' store
    public = {"X-API-Key": "pk_test_catalog"}
    events = []
    for s in range(12):
        events += [{"session_id": f"s{s}", "item_id": "espresso", "timestamp": 100 + s},
                   {"session_id": f"s{s}", "item_id": "grinder", "timestamp": 101 + s},
                   {"session_id": f"s{s}", "item_id": f"x{s % 3}", "timestamp": 102 + s}]
    assert (await first.post("/events", json={"events": events}, headers=public)).status == 202
    await drain(settings)
    ask = {"user_interactions": {"espresso": {}}, "k": 10}

    async def everywhere(client: Client) -> set[str]:
        answers = [await client.post("/iid_recommend", json=ask, headers=public),
                   await client.get("/items/espresso/similar", headers=public),
                   await client.get("/popular?k=50", headers=public),
                   await client.get("/sessions/s1/recommendations?recommend_seen=true",
                                    headers=public)]
        return {r["id"] for a in answers for r in (await a.json())["recommendations"]}

    assert "grinder" in await everywhere(second)
    assert (await first.put("/items/grinder", json={"available": False},
                            headers=ADMIN)).status == 200
    changed = time.monotonic()
    while "grinder" in await everywhere(second):
        assert time.monotonic() - changed < 1.0, "still recommended a second after the change"
        await asyncio.sleep(0.05)
    assert "grinder" not in await everywhere(first)  # the writing process at once
    # available again: back in the answers; a record removed: available (no record, no rule)
    await first.post("/items", json={"items": [{"id": "grinder", "available": True}]},
                     headers=ADMIN)
    changed = time.monotonic()
    while "grinder" not in await everywhere(second):
        assert time.monotonic() - changed < 1.0
        await asyncio.sleep(0.05)
    await first.put("/items/grinder", json={"available": False}, headers=ADMIN)
    await first.delete("/items/grinder", headers=ADMIN)
    assert "grinder" in await everywhere(first)


# --- the serve process' copy of the catalogue -------------------------------------------------
async def test_another_process_filters_by_a_changed_record_within_a_second(
        aiohttp_client: Any, settings: Settings) -> None:
    """A record's categories change in one process; another one's filter follows within a
    second, through the change log (no whole read)."""
    from tests.helpers import drain

    first = await admin_client(aiohttp_client, settings)
    second = await admin_client(aiohttp_client, settings)
    events = [{"session_id": f"s{s}", "item_id": item, "timestamp": 100 + s}
              for s in range(6) for item in ("espresso", "grinder", "kettle")]
    assert (await first.post("/events", json={"events": events}, headers=ADMIN)).status == 202
    await drain(settings)
    await first.post("/items", json={"items": [
        {"id": "espresso", "categories": ["machines"]},
        {"id": "grinder", "categories": ["machines"]},
        {"id": "kettle", "categories": ["kettles"]}]}, headers=ADMIN)
    ask = {"user_interactions": {"espresso": {}}, "k": 5,
           "filter": {"categories": ["kettles"]}}

    async def kettles(client: Client) -> list[str]:
        reply = await client.post("/iid_recommend", json=ask, headers=ADMIN)
        return [r["id"] for r in (await reply.json())["recommendations"]]

    assert await kettles(second) == ["kettle"]
    mirror = second.app[STORE].items.mirror
    reads = mirror.full_reads
    assert (await first.put("/items/grinder", json={"categories": ["kettles"]},
                            headers=ADMIN)).status == 200
    changed = time.monotonic()
    while sorted(await kettles(second)) != ["grinder", "kettle"]:
        assert time.monotonic() - changed < 1.0, "the other process still filters by the old"
        await asyncio.sleep(0.05)
    assert await kettles(first) == ["grinder", "kettle"] or \
        sorted(await kettles(first)) == ["grinder", "kettle"]
    await first.delete("/items/kettle", headers=ADMIN)  # no record: fails any filter
    changed = time.monotonic()
    while "kettle" in await kettles(second):
        assert time.monotonic() - changed < 1.0
        await asyncio.sleep(0.05)
    assert mirror.full_reads == reads  # followed the log


async def test_a_copy_that_missed_changes_reads_the_catalogue_whole(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A log trimmed past the copy, and a catalogue that came back empty (version reset),
    both end in a whole read that matches Redis."""
    import service.store.catalogue as catalogue

    monkeypatch.setattr(catalogue, "CHANGE_LOG_CAP", 2)
    writer, reader = Store(settings), Store(settings)
    reader.items.mirror.max_age = 0.0
    try:
        await writer.items.put([Record("a", categories=("x",))])
        assert len(await reader.items.index()) == 1 and reader.items.mirror.full_reads == 1
        await writer.items.put([Record("b", categories=("x",))])
        await reader.items.index()
        assert reader.items.mirror.full_reads == 1  # one entry behind: followed
        for n in range(4):  # more changes than the log keeps
            await writer.items.put([Record(f"c{n}", categories=("y",))])
        index = await reader.items.index()
        assert reader.items.mirror.full_reads == 2 and len(index) == 6
        # everything of the namespace gone (a Redis that came back empty), then one record
        keys = [k async for k in writer.redis.scan_iter(match=f"{settings.namespace}:*")]
        for key in keys:
            await writer.redis.delete(key)
        await writer.items.put([Record("d", categories=("z",))])
        index = await reader.items.index()
        assert reader.items.mirror.full_reads == 3 and len(index) == 1
        from service.core.rules import Filter
        d, gone = (int.from_bytes(item_hash(i), "little") for i in ("d", "c0"))
        assert index.admits(Filter(categories=("z",)), np.array([d, gone], np.uint64)).tolist() \
            == [True, False]
    finally:
        await writer.close()
        await reader.close()


async def test_a_starting_process_reads_the_catalogue_before_any_request_needs_it(
        aiohttp_client: Any, settings: Settings) -> None:
    """The first requests with rules after a start would all wait for the whole read (seconds
    for a million records): a process reads it in the background as it starts, and a
    namespace without a catalogue is not read at all."""
    bare = await admin_client(aiohttp_client, settings)
    await asyncio.sleep(0.3)
    assert bare.app[STORE].items.mirror.full_reads == 0  # no catalogue: nothing read
    records = [{"id": f"sku-{n}", "categories": [f"c{n % 3}"]} for n in range(50)]
    assert (await bare.post("/items", json={"items": records}, headers=ADMIN)).status == 200
    started = await admin_client(aiohttp_client, settings)
    store = started.app[STORE]
    began = time.monotonic()
    # the catalogue, then the trending snapshot the fill orders by
    while store.items.mirror.full_reads == 0 or store.reads._trending.made == -math.inf:
        assert time.monotonic() - began < 2.0, "the catalogue was not read at start"
        await asyncio.sleep(0.02)
    assert len(store.items.mirror.index) == 50


async def test_a_large_change_reaches_a_serve_process_without_holding_its_loop(
        settings: Settings) -> None:
    """Red team: after 60,000 records changed, the first request with a rule took 0.8 s: the
    copy applied every changed record in one go. Now a few hundred at a time, between which
    the event loop serves others."""
    writer, reader = Store(settings), Store(settings)
    try:
        await writer.prepare()
        await writer.items.put([Record("first", categories=("x",))])
        await reader.items.index()
        for start in range(0, 40_000, 10_000):
            await writer.items.put([Record(f"r{n}", None, ("c", "d"), True, float(n),
                                           ("t",), {"size": n % 7})
                                    for n in range(start, start + 10_000)])
        reader.items.mirror.expire()
        gaps: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            last = time.perf_counter()
            while not done.is_set():
                await asyncio.sleep(0)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now
        ticking = asyncio.create_task(ticker())
        index = await reader.items.index()
        done.set()
        await ticking
        assert len(index) == 40_001 and reader.items.mirror.full_reads == 1
        assert max(gaps) < 0.25, f"the loop was held {max(gaps) * 1000:.0f} ms"
    finally:
        await writer.close()
        await reader.close()


# --- allow-list mode ---------------------------------------------------------------------------
async def test_catalog_only_mode_learns_catalogue_items_only(client: Client,
                                                             settings: Settings) -> None:
    """With --catalog-only, a flood of invented ids is accepted and consumed (pending falls
    to 0, counted as unlisted) without growing the learned state."""
    s = settings.replace(catalog_only=True)
    store = client.app[STORE]
    r: Any = store.redis
    for item in ("a", "b"):  # what the catalogue will write (PUT /items/{id})
        h = item_hash(item)
        await r.hset(store.keys.catalog(int.from_bytes(h, "little") % 64), h.hex(),
                     encode_record(Record(item)))
    events = [{"session_id": f"s{n}", "item_id": i} for n in range(5)
              for i in ("a", "b", f"invented-{n}")]
    assert (await client.post("/events", json={"events": events})).status == 202
    stats = await drain(s)
    assert stats["pending"] == 0 and stats["events_unlisted"] == 5
    assert stats["items"] == 2
    similar = await (await client.get("/items/a/similar")).json()
    assert [row["id"] for row in similar["recommendations"]] == ["b"]
    assert not await r.exists(store.keys.index(item_hash("invented-0")))
