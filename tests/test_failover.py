"""A master of a 6-node cluster is killed under load: its replica takes over and the API and
the worker carry on without a restart. What was accepted is measured against what the streams
hold (Redis replicates asynchronously, so a write acknowledged in the instant before the kill
may be gone: the documented window), and the learned state must equal one clean pass over what
the streams hold: nothing applied twice, nothing dropped by the worker."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
from redis.crc import key_slot

from service.api.app import create_app
from service.core.model import Event
from service.core.stream import decode
from service.offline.redisproc import RedisClusterProcess, command
from service.settings import Settings
from service.store.keyspace import Keys
from service.store.state import Store
from tests.conftest import Client
from tests.helpers import assert_same_state, drain, ingest, snapshot, wait_drained
from workers.consumer import Worker
from workers.housekeeping import Housekeeping


@pytest.fixture(scope="module")
def six_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcess]:
    cluster = RedisClusterProcess(masters=3, replicas=1, node_timeout_ms=1000,
                                  directory=tmp_path_factory.mktemp("six"))
    try:
        yield cluster
    finally:
        cluster.stop()


def owner_of(cluster: RedisClusterProcess, key: str) -> int:
    """Index in ``cluster.nodes`` of the master serving ``key``'s slot."""
    slot = key_slot(key.encode())
    for line in command(cluster.nodes[0].port, "CLUSTER", "NODES").decode().splitlines():
        fields = line.split()
        if "master" not in fields[2] or "fail" in fields[2]:
            continue
        for part in fields[8:]:
            lo, _, hi = part.partition("-")
            if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                port = int(fields[1].split(":")[1].split("@")[0])
                return next(n for n, node in enumerate(cluster.nodes) if node.port == port)
    raise AssertionError(f"no master serves slot {slot}")


async def test_killing_a_master_fails_over_and_the_service_carries_on(
        six_nodes: RedisClusterProcess, standalone_url: str, aiohttp_client: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def keep_every_entry(self: Housekeeping) -> None:
        """The streams are what the final state is compared with: no trimming (the first trim
        runs at start, and removing acknowledged entries is what it is for)."""

    monkeypatch.setattr(Housekeeping, "trim", keep_every_entry)
    settings = Settings(redis_url=six_nodes.url, namespace=f"f{os.getpid()}", partitions=8,
                        block_ms=20, lease_ms=2000)
    client: Client = await aiohttp_client(create_app(settings))
    worker = Worker(settings, worker_id="survivor")
    running = asyncio.create_task(worker.run())

    sent: list[Event] = []
    refused_events: list[Event] = []  # answered 503: in the stream or not
    answers: list[tuple[float, int]] = []
    victim = owner_of(six_nodes, Keys(settings.namespace, 8).stream(0))
    killed_at = 0.0

    async def post(n: int) -> None:
        events = [Event(f"s{n}", f"i{(n * 7 + j) % 23}", 1_700_000_000.0 + n + j / 10)
                  for j in range(3)]
        body = {"events": [{"session_id": e.session_id, "item_id": e.item_id,
                            "timestamp": e.timestamp} for e in events]}
        response = await client.post("/events", json=body)
        answers.append((time.monotonic(), response.status))
        if response.status == 202:
            sent.extend(events)
        else:
            assert response.status == 503, await response.text()
            refused_events.extend(events)

    n = 0
    started = time.monotonic()
    while time.monotonic() - started < 12.0:
        await post(n)
        n += 1
        if not killed_at and time.monotonic() - started > 2.0:
            os.kill(six_nodes.nodes[victim].proc.pid, signal.SIGKILL)
            killed_at = time.monotonic()
        await asyncio.sleep(0.005)

    refused = [t for t, status in answers if status == 503]
    assert refused, "killing a master refused nothing: the test did not hit its slots"
    outage = max(refused) - killed_at
    accepted_after = [t for t, status in answers if t > max(refused) and status == 202]
    assert outage < 8.0 and len(accepted_after) > 100  # back without a restart
    assert (await client.get("/readyz")).status == 200

    store = Store(settings)
    stats = await wait_drained(store, timeout=60)
    worker.stop()
    await running
    await worker.redis.aclose()

    in_streams: list[Event] = []
    for p in range(settings.partitions):
        r: Any = store.redis
        for _, fields in await r.xrange(store.keys.stream(p)):
            in_streams.append(decode(fields))
    stored = set(in_streams)
    lost = len(set(sent) - stored)
    # a request that timed out after its write reached the stream is answered 503 and is in
    # it: a client retries it with its Idempotency-Key, so it is neither lost nor doubled
    extra = stored - set(sent)
    print(f"\nfailover: {len(answers)} batches posted, {len(refused)} refused (503); the "
          f"last refusal {outage:.2f}s after the kill; accepted events lost: "
          f"{lost} of {len(sent)}; refused events stored: {len(extra)}")
    assert lost <= 3 * 5  # at most the few batches acknowledged just before the kill
    assert extra <= set(refused_events) and len(in_streams) == len(stored)
    assert stats["events_processed"] == len(in_streams)

    reference = settings.replace(redis_url=standalone_url)
    in_streams.sort(key=lambda e: (e.session_id, e.timestamp))
    await ingest(reference, in_streams)
    await drain(reference)
    clean = Store(reference)
    try:
        assert_same_state(await snapshot(store.redis, settings.namespace),
                          await snapshot(clean.redis, settings.namespace))
    finally:
        await clean.close()
        await store.close()
