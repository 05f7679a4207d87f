"""Redis dies and comes back: nothing accepted is lost, the API says 503 meanwhile, the worker
backs off without spinning and resumes on its own."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from service.api.app import create_app
from service.api.context import STORE
from service.offline.redisproc import RedisProcess, free_port
from service.settings import Settings
from service.store.state import Store
from tests.conftest import Client
from tests.helpers import wait_drained
from tests.test_worker import click_log
from workers.consumer import Worker


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def test_redis_crash_and_restart(aiohttp_client: Any, tmp_path: Path) -> None:
    aof = ("--appendonly", "yes", "--appendfsync", "always")
    redis1 = RedisProcess(*aof, directory=tmp_path)
    settings = Settings(redis_url=redis1.url, namespace="outage", partitions=2, block_ms=20,
                        lease_ms=1000)
    client: Client = await aiohttp_client(create_app(settings))
    events = click_log(400)
    for start in range(0, 400, 100):
        batch = [{"session_id": e.session_id, "item_id": e.item_id, "timestamp": e.timestamp}
                 for e in events[start:start + 100]]
        assert (await client.post("/events", json={"events": batch})).status == 202
    env = dict(os.environ, SESSIONREC_REDIS_URL=redis1.url, SESSIONREC_NAMESPACE="outage",
               SESSIONREC_PARTITIONS="2", SESSIONREC_BLOCK_MS="20", SESSIONREC_LEASE_MS="1000")
    worker = subprocess.Popen([sys.executable, "-m", "service.cli", "--log-level", "ERROR",
                               "worker"], env=env)
    try:
        store = Store(settings)
        await wait_drained(store)
        redis1.proc.send_signal(signal.SIGKILL)  # a crash, not a shutdown
        redis1.proc.wait()
        await store.close()

        # during the outage: fast 503s, liveness fine, and the worker does not spin
        cpu_before = cpu_seconds(worker.pid)
        outage_started = time.monotonic()
        for path, body in [("/iid_recommend", {"user_interactions": {}}),
                           ("/events", {"session_id": "s", "item_id": "a"})]:
            started = time.monotonic()
            resp = await client.post(path, json=body)
            assert resp.status == 503 and time.monotonic() - started < 1.0
        assert (await client.get("/readyz")).status == 503
        assert (await client.get("/healthz")).status == 200
        await asyncio.sleep(3.0)
        spent = cpu_seconds(worker.pid) - cpu_before
        assert spent < 0.5, f"worker used {spent:.2f}s of CPU during a 3 s outage"
        assert worker.poll() is None, "worker exited during the outage"

        # Redis returns (same port, same AOF): every accepted event is still there
        redis2 = RedisProcess(*aof, directory=tmp_path, port=redis1.port)
        restarted = time.monotonic()
        try:
            store = Store(settings)
            while True:  # the API recovers without a restart
                resp = await client.post("/events", json={"session_id": "late", "item_id": "z"})
                if resp.status == 202:
                    break
                assert time.monotonic() - restarted < 10
                await asyncio.sleep(0.05)
            api_back = time.monotonic() - restarted
            stats = await wait_drained(store, timeout=20)  # and the worker resumes by itself
            worker_back = time.monotonic() - restarted
            assert stats["events_accepted"] == stats["events_processed"] == 401
            print(f"outage {restarted - outage_started:.1f}s; API back after {api_back:.2f}s, "
                  f"worker caught up after {worker_back:.2f}s")
            await store.close()
        finally:
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(15) == 0
            redis2.stop()
    finally:
        if worker.poll() is None:
            worker.kill()
        redis1.stop()


# --- a Redis that comes back empty -------------------------------------------------------------
@pytest.mark.parametrize("how", ["flushall", "restart"])
async def test_the_same_processes_recover_from_a_redis_that_comes_back_empty(
        aiohttp_client: Any, tmp_path: Any, how: str) -> None:
    port = free_port()
    server = RedisProcess(directory=tmp_path / "a", port=port)
    s = Settings(redis_url=server.url, namespace="empty", partitions=2, block_ms=20,
                 lease_ms=2000)
    client: Client = await aiohttp_client(create_app(s))
    worker = Worker(s, worker_id="w")
    task = asyncio.create_task(worker.run())
    store = client.app[STORE]

    async def send(prefix: str) -> None:
        events = [{"session_id": f"{prefix}{n}", "item_id": i} for n in range(4)
                  for i in ("x", "y")]
        assert (await client.post("/events", json={"events": events})).status == 202

    try:
        await send("before")
        await wait_drained(store, timeout=10)
        if how == "flushall":
            await store.redis.flushall()
        else:
            server.stop()
            tmp = tmp_path / "b"
            server = RedisProcess(directory=tmp, port=port)
        deadline = time.monotonic() + 10
        while True:  # the API answers 503 until it has reconnected
            events = [{"session_id": f"after{n}", "item_id": i} for n in range(4)
                      for i in ("x", "y")]
            if (await client.post("/events", json={"events": events})).status == 202:
                break
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        stats = await wait_drained(store, timeout=10)
        assert stats["events_processed"] == 8
        similar = await (await client.get("/items/x/similar")).json()
        assert [r["id"] for r in similar["recommendations"]] == ["y"]
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10)
        await worker.redis.aclose()
        server.stop()
