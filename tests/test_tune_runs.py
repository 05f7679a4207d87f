"""A tuning run's process (issue 23, points 5 and 6): whatever it waits for, it ends by its
deadline with its lease released; a lease still renewed by a run that finished is taken back;
and the process imports only the installed package, never a module planted in the working
directory of the process that starts it."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from service.core.model import Event
from service.settings import Settings
from service.store import tuning
from service.store.state import Store
from service.store.tuning import RUN_COMMAND
from tests.helpers import drain, ingest, running_workers


async def a_little_learned(settings: Settings) -> None:
    """Sessions to tune on (a command-line run refuses a namespace with nothing learned)."""
    await ingest(settings, [Event(f"s{n}", f"i{(n + step) % 7}", 1000.0 + 10 * n + step)
                            for n in range(30) for step in range(3)])
    await drain(settings)

SLOW_RENEWAL = """
import asyncio
from redis.exceptions import ConnectionError as RedisConnectionError
from service.store.scripts import Scripts
original = Scripts.lease
async def lease(self, key, worker, lease_ms, action):
    if action == "renew":
        try:
            await asyncio.sleep(3600)  # a reply that never comes
        except asyncio.CancelledError:
            # what redis-py can make of a cancellation that meets a call under way
            raise RedisConnectionError("Connection closed by server.") from None
    return await original(self, key, worker, lease_ms, action)
Scripts.lease = lease
import service.offline.livetune as livetune
run = livetune.tune_live
async def slow(*args, **kwargs):
    await asyncio.sleep(1.0)  # a renewal is under way when the run ends
    return await run(*args, **kwargs)
livetune.tune_live = slow
"""

ENDLESS_RUN = """
import asyncio
import service.offline.livetune as livetune
async def endless(*args, **kwargs):
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass  # a wait that swallows its cancellation
livetune.tune_live = endless
"""


def run_with(settings: Settings, patch: str, run_id: str, timeout: float
             ) -> subprocess.CompletedProcess[str] | None:
    """``sessionrec tune --apply`` with ``patch`` applied first; None if it is still running
    after ``timeout`` seconds (then killed)."""
    code = f"{patch}\nimport sys\nfrom service.cli import main\nsys.exit(main(sys.argv[1:]))"
    try:
        return subprocess.run([*RUN_COMMAND[:2], "-c", code, "--log-level", "WARNING", "tune",
                               "--apply", "--run-id", run_id],
                              env={**os.environ, **settings.to_env()}, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


async def test_a_run_ends_even_when_its_renewal_swallows_the_cancellation(
        settings: Settings) -> None:
    """The run finishes (its record written) while a renewal waits on Redis, and the
    cancellation of that renewal comes back as a connection error: the renewal loop went on
    renewing for good and the process waited on it, the hang seen on a 116k-session state."""
    quick = settings.replace(tune_lease_ms=900)  # a renewal every 0.3 s
    await a_little_learned(quick)
    done = await asyncio.to_thread(run_with, quick, SLOW_RENEWAL, "swallowed", 30)
    assert done is not None, "the run's process never exited"
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["id"] == "swallowed"
    store = Store(quick)
    try:
        assert await store.redis.get(store.keys.tune_lease()) is None  # released
    finally:
        await store.close()


async def test_a_run_that_waits_forever_stops_at_its_deadline_and_releases_its_lease(
        settings: Settings) -> None:
    """Whatever a run awaits, and even if the wait swallows its cancellation: past
    ``tune_deadline`` it stops, releases the lease and exits (a renewal period or two
    later)."""
    quick = settings.replace(tune_lease_ms=900, tune_deadline=2.0)
    await a_little_learned(quick)
    started = time.monotonic()
    done = await asyncio.to_thread(run_with, quick, ENDLESS_RUN, "endless", 30)
    assert done is not None, "the run's process never exited"
    assert done.returncode == 3 and "deadline" in done.stderr, done.stderr
    assert time.monotonic() - started < 2.0 + 10
    store = Store(quick)
    try:
        assert await store.redis.get(store.keys.tune_lease()) is None
        assert (await store.model.record()).last_run is None  # nothing recorded, nor promoted
    finally:
        await store.close()


async def test_a_run_called_in_process_leaves_its_caller_alive(settings: Settings) -> None:
    """The timers that end a run's process when its event loop never comes back are
    cancelled once it does: a program that runs the command in process goes on."""
    quick = settings.replace(tune_lease_ms=900)
    await a_little_learned(quick)
    later = "import time\ntime.sleep(1.5)\nprint('still here')"  # five renewal periods
    code = ("import sys\nfrom service.cli import main\n"
            "main(sys.argv[1:])\n" + later)
    done = await asyncio.to_thread(
        subprocess.run, [*RUN_COMMAND[:2], "-c", code, "--log-level", "WARNING", "tune",
                         "--apply", "--run-id", "in-process"],
        env={**os.environ, **quick.to_env()}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and json.loads(done.stdout.splitlines()[0])["id"] == \
        "in-process", done.stderr
    assert "still here" in done.stdout


async def test_a_worker_takes_the_lease_back_from_a_finished_run_that_still_renews_it(
        settings: Settings) -> None:
    """The record says the run finished; its process still renews the lease. A worker (with
    or without automatic runs) deletes the lease, and the next renewal finds it gone."""
    store = Store(settings)
    lease = store.keys.tune_lease()
    now = time.time()
    await store.model.update(lambda record: dataclasses.replace(record, last_run=json.dumps(
        {"id": "hung", "trigger": "auto", "started_at": now - 60, "finished_at": now - 1})))
    assert await store.scripts.lease(lease, "hung", 3000, "take")
    renewed: list[bool] = []

    async def hung_process() -> None:
        while not renewed or renewed[-1]:
            renewed.append(await store.scripts.lease(lease, "hung", 3000, "renew"))
            await asyncio.sleep(0.2)

    renewing = asyncio.create_task(hung_process())
    try:
        async with running_workers(settings.replace(auto_tune=False), 1, auto_tune_every=0.1):
            started = time.monotonic()
            while await store.redis.get(lease) is not None:
                assert time.monotonic() - started < 10, "the lease was never taken back"
                await asyncio.sleep(0.05)
        await asyncio.wait_for(renewing, 5)  # its next renewal: no longer its own
        assert renewed[-1] is False
        # a lease that is another run's (one that has not finished) is left alone
        assert await store.scripts.lease(lease, "running", 3000, "take")
        assert await tuning.reclaim_lease(store.redis, store.scripts, store.keys,
                                          settings) is None
        assert await tuning.running(store.redis, store.keys) == "running"
    finally:
        renewing.cancel()
        await store.close()


async def test_a_run_never_imports_code_from_the_working_directory(
        settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``service/cli.py`` planted where the serve process (or a worker) runs: the run it
    starts imports the installed package and runs, the planted file never does."""
    planted = tmp_path / "service"
    planted.mkdir()
    (planted / "__init__.py").write_text("")
    ran = tmp_path / "planted-code-ran"
    (planted / "cli.py").write_text(f"open({str(ran)!r}, 'w').close()\n")
    monkeypatch.chdir(tmp_path)
    store = Store(settings)
    try:
        run_id, started = await tuning.start_run(store.redis, store.scripts, store.keys,
                                                 settings, "admin")
        assert started and run_id is not None
        waited = time.monotonic()
        while json.loads((await store.model.record()).last_run or "{}").get("id") != run_id:
            assert not ran.exists(), "the planted service/cli.py ran"
            assert time.monotonic() - waited < 60, "the run never finished"
            await asyncio.sleep(0.1)
        assert not ran.exists()
    finally:
        await store.close()


THREADS_PROBE = """
import json
import numpy
import threadpoolctl
import service.offline.sequencerun as sequencerun
def threads():
    return sorted({pool["num_threads"] for pool in threadpoolctl.threadpool_info()})
async def probe(store, run_id, say=None):
    return {"id": run_id, "threads": threads()}
sequencerun.fit_live = probe
print(json.dumps({"outside": threads()}))
"""


async def test_a_run_started_by_hand_computes_on_one_thread(settings: Settings) -> None:
    """An operator's ``sessionrec sequence --apply`` on a serving host, in an environment that
    gives numpy's BLAS two threads: the run's matrix products take one, as a worker's runs do,
    and the process' own setting is what it was outside the run. Before, only a worker's
    environment held a run to one thread: a run by hand took every core's."""
    await a_little_learned(settings)
    code = (f"{THREADS_PROBE}\nimport sys\nfrom service.cli import main\n"
            "code = main(sys.argv[1:])\nprint(json.dumps({'after': threads()}))\nsys.exit(code)")
    environment = {**os.environ, **settings.to_env(), "OPENBLAS_NUM_THREADS": "2"}
    done = await asyncio.to_thread(
        subprocess.run, [*RUN_COMMAND[:2], "-c", code, "--log-level", "WARNING", "sequence",
                         "--apply", "--run-id", "by-hand"],
        env=environment, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    outside, record, after = map(json.loads, done.stdout.splitlines())
    assert outside == {"outside": [2]}  # the probe sees the BLAS it limits
    assert record == {"id": "by-hand", "threads": [1]}
    assert after == {"after": [2]}
