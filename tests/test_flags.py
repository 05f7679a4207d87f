"""Each command's ``--help`` lists only the flags that command reads (issue 27, point 6).

Every command runs here in-process, on tiny inputs against the suite's private Redis, with
``Settings`` instrumented to record which settings are read; each setting flag the command
lists must be among them. ``serve`` and ``worker`` run until they have been exercised enough to
read what they list: the API answers requests of every kind (its ``run_app`` is the test's), the
worker applies a stream with a redelivered entry, an entry on the wrong partition and an
automatic-tuning check.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from service import cli, runtime
from service.core.layout import partition_of, session_hash
from service.offline.redisproc import free_port
from service.settings import COMMANDS, Settings, flags_of
from service.store.keyspace import GROUP
from service.store.state import Store, ensure_groups
from workers import consumer

FIELDS = {f.name for f in fields(Settings)}
DERIVED = {"trusted_networks": "trusted_proxies", "allowed_origins": "cors_origins"}
"""Properties computed once from a setting (at construction, where nothing is recorded): reading
them is reading the setting."""
SECRET, PUBLISHABLE = "sk_flags", "pk_flags"


@contextmanager
def recorded_reads() -> Iterator[set[str]]:
    """The settings read by the code run in the block. Reads of every field at once (the
    object's construction, ``replace``, ``to_env``, comparison, repr) are not the code reading a
    setting, and are left out."""
    seen: set[str] = set()
    muted = [0]

    def getattribute(self: Settings, name: str) -> Any:
        if not muted[0]:
            if name in FIELDS:
                seen.add(name)
            elif name in DERIVED:
                seen.add(DERIVED[name])
        return object.__getattribute__(self, name)

    def muting(method: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            muted[0] += 1
            try:
                return method(*args, **kwargs)
            finally:
                muted[0] -= 1
        return wrapper

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Settings, "__getattribute__", getattribute)
        for name in ("__init__", "replace", "to_env", "__eq__", "__hash__", "__repr__"):
            patch.setattr(Settings, name, muting(getattr(Settings, name)))
        yield seen


def http(method: str, url: str, body: Any = None, key: str = PUBLISHABLE) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={
        "Content-Type": "application/json", "X-API-Key": key,
        "Origin": "http://shop.example", "X-Forwarded-For": "10.1.2.3"})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            text = reply.read()
            return reply.status, json.loads(text) if text.startswith(b"{") else text
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def exercise_api(base: str) -> None:
    """A request of every kind a shop and its operator send (blocking: from a thread)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            if http("GET", base + "/healthz")[0] == 200:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "the API did not come up"
        time.sleep(0.05)
    now = int(time.time())
    assert http("POST", base + "/events", {"events": [
        {"session_id": f"s{n % 7}", "item_id": f"i{n % 11}", "timestamp": now - 100 + n}
        for n in range(60)]})[0] == 202
    assert http("PUT", base + "/items/i1", {"categories": ["c"], "attributes": {"size": 2}},
                SECRET)[0] == 200
    status, answer = http("POST", base + "/iid_recommend", {
        "user_interactions": {"i1": {}, "i2": {}}, "k": 5, "session_id": "s1",
        "filter": {"categories": ["c"]}, "explain": True})
    assert status == 200, answer
    assert http("GET", base + "/sessions/s1/recommendations?k=3")[0] == 200
    assert http("GET", base + "/popular?k=3")[0] == 200
    assert http("PUT", base + "/admin/model", {"params": {"index_cap": 100}}, SECRET)[0] == 200
    assert http("GET", base + "/model")[0] == 200
    assert http("GET", base + "/metrics", None, SECRET)[0] == 200
    assert http("POST", base + "/admin/tune", None, SECRET)[0] in (202, 409)
    while True:  # the run it started (a process of its own) ends before the test does
        state = http("GET", base + "/model")[1]["tuning"]["state"]
        if state == "idle":
            break
        assert time.monotonic() < deadline + 60, state
        time.sleep(0.2)


def keyed(url: str, namespace: str, tmp_path: Path) -> list[str]:
    keys = tmp_path / "keys"
    keys.write_text(f"secret {SECRET}\n", encoding="utf-8")
    return ["--redis-url", url, "--namespace", namespace, "--partitions", "2",
            "--publishable-keys", PUBLISHABLE, "--keys-file", str(keys),
            "--rate-limit", "1000", "--trusted-proxies", "127.0.0.1",
            "--cors-origins", "http://shop.example"]


@pytest.fixture
def quiet_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the commands do to their own process and the test's must not: uvloop as the
    global policy, the collector's thresholds, a lowered priority."""
    monkeypatch.setattr(runtime, "install_uvloop", lambda: None)
    monkeypatch.setattr(runtime, "tune_gc", lambda: None)
    monkeypatch.setattr("service.demo.install_uvloop", lambda: None)
    monkeypatch.setattr(os, "nice", lambda increment: 0)


def click_log(path: Path) -> Path:
    rows = ["SessionId\tItemId\tTime"]
    for s in range(40):
        for n in range(4):
            rows.append(f"s{s}\ti{(s * 3 + n * 5) % 17}\t{1_700_000_000 + s * 100 + n}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def offline_reads(url: str, namespace: str, tmp_path: Path) -> dict[str, set[str]]:
    log = click_log(tmp_path / "clicks.tsv")
    items = tmp_path / "items.jsonl"
    items.write_text('{"id": "i1", "categories": ["c"]}\n', encoding="utf-8")
    redis = ["--redis-url", url, "--namespace", namespace, "--partitions", "2"]
    runs = {
        "load": [["load", str(log), *redis]],
        "catalog": [["catalog", str(items), *redis]],
        "eval": [["eval", "--train", str(log), "--test", str(log), "--protocol", "both",
                  "--models", "sessionrec,pop", *redis, "--namespace", namespace + "-e"]],
        "tune": [["tune", "--train", str(log), "--params", "idf_weight", "--limit", "50",
                  "--out", str(tmp_path / "tuned.env"), *redis, "--namespace",
                  namespace + "-t"],
                 ["tune", "--apply", *redis]],  # on the state load left
        "sequence": [["sequence", "--apply", *redis]],
    }
    reads: dict[str, set[str]] = {}
    for command, argvs in runs.items():
        with recorded_reads() as seen:
            for argv in argvs:
                assert cli.main(argv) == 0, argv
        reads[command] = set(seen)
    return reads


def serve_reads(url: str, namespace: str, tmp_path: Path,
                monkeypatch: pytest.MonkeyPatch) -> set[str]:
    port = free_port()

    def run_app(app: web.Application, *, host: str, port: int, **_: Any) -> None:
        async def main() -> None:
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, host, port).start()
            try:
                await asyncio.to_thread(exercise_api, f"http://{host}:{port}")
            finally:
                await runner.cleanup()
        asyncio.run(main())

    monkeypatch.setattr(web, "run_app", run_app)  # what service.runtime calls
    with recorded_reads() as seen:
        assert cli.main(["serve", "--port", str(port), *keyed(url, namespace, tmp_path)]) == 0
    return set(seen)


async def redelivered_entry(settings: Settings) -> None:
    """An entry delivered twice and never acknowledged (a worker died on it): the next worker
    reads it alone and counts its attempts against max_deliveries."""
    store = Store(settings)
    try:
        await ensure_groups(store.redis, store.keys)
        p = partition_of(session_hash("crashed"), settings.partitions)
        stream = store.keys.stream(p)
        await store.redis.xadd(stream, {"session": "crashed", "item": "i1", "ts": "5"})
        for start in (">", "0"):
            await store.redis.xreadgroup(GROUP, store.keys.consumer(p), {stream: start})
        wrong = (p + 1) % settings.partitions
        await store.redis.xadd(store.keys.stream(wrong),
                               {"session": "crashed", "item": "i2", "ts": "6"})
    finally:
        await store.close()


def worker_reads(url: str, namespace: str, monkeypatch: pytest.MonkeyPatch) -> set[str]:
    settings = Settings(redis_url=url, namespace=namespace, partitions=2)
    asyncio.run(redelivered_entry(settings))
    run = consumer.Worker.run

    async def until_drained(self: consumer.Worker) -> None:
        task = asyncio.create_task(run(self))
        store = Store(settings)
        try:
            deadline = time.monotonic() + 60
            while (stats := await store.stats.read())["pending"] or stats["events_dead"] < 1:
                assert time.monotonic() < deadline, stats
                await asyncio.sleep(0.05)
            # an automatic run is due (a session learned): it starts, as a process, and ends
            keys = store.keys
            while not await store.redis.exists(keys.tune_started()) \
                    or await store.redis.exists(keys.tune_lease()):
                assert time.monotonic() < deadline, "no automatic tuning run"
                await asyncio.sleep(0.1)
        finally:
            await store.close()
        self.stop()
        await task

    monkeypatch.setattr(consumer.Worker, "run", until_drained)
    monkeypatch.setattr(consumer, "AUTO_TUNE_CHECK", 0.0)
    monkeypatch.setattr(consumer, "TRIM_EVERY", 0.0)
    with recorded_reads() as seen:
        assert cli.main(["worker", "--redis-url", url, "--namespace", namespace,
                         "--partitions", "2", "--block-ms", "20", "--auto-tune",
                         "--tune-min-sessions", "1", "--tune-min-interval", "0"]) == 0
    return set(seen)


def demo_reads(url: str, namespace: str, tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch) -> set[str]:
    port = free_port()
    asyncio.run(redelivered_entry(Settings(redis_url=url, namespace=namespace,
                                           partitions=2)))
    monkeypatch.setattr(consumer, "AUTO_TUNE_CHECK", 0.0)

    failed: list[BaseException] = []

    def drive() -> None:
        try:
            exercise_api(f"http://127.0.0.1:{port}")
        except BaseException as exc:
            failed.append(exc)
        finally:  # the demo stops on SIGINT (its handler is in place before it serves)
            os.kill(os.getpid(), signal.SIGINT)

    with recorded_reads() as seen:
        driver = threading.Thread(target=drive)
        driver.start()
        assert cli.main(["demo", "--port", str(port), "--auto-tune",
                         "--tune-min-sessions", "1000000", *keyed(url, namespace, tmp_path)]) == 0
        driver.join()
    if failed:
        raise failed[0]
    return set(seen)


@pytest.mark.usefixtures("quiet_process")
def test_no_command_lists_a_flag_it_ignores(standalone_url: str, tmp_path: Path) -> None:
    namespace = f"flags{os.getpid()}"
    reads = offline_reads(standalone_url, namespace, tmp_path)
    with pytest.MonkeyPatch.context() as patch:
        reads["serve"] = serve_reads(standalone_url, namespace + "-serve", tmp_path, patch)
    with pytest.MonkeyPatch.context() as patch:
        reads["worker"] = worker_reads(standalone_url, namespace + "-worker", patch)
    with pytest.MonkeyPatch.context() as patch:
        reads["demo"] = demo_reads(standalone_url, namespace + "-demo", tmp_path, patch)
    assert set(reads) == set(COMMANDS)
    ignored = {command: sorted(set(flags_of(command)) - reads[command])
               for command in COMMANDS}
    if os.environ.get("SHOW_READS"):
        for command in COMMANDS:
            print(command, "reads but does not list:",
                  sorted(reads[command] - set(flags_of(command))))
    assert ignored == {command: [] for command in COMMANDS}, reads


OWN_FLAGS = {
    "serve": set(), "worker": set(), "demo": set(),
    "load": {"--format", "--columns", "--delimiter"},
    "catalog": {"--format"},
    "eval": {"--train", "--test", "--format", "--columns", "--delimiter", "--protocol",
             "--models", "--limit", "--no-http", "--self-tune", "--out", "--title"},
    "tune": {"--train", "--apply", "--format", "--columns", "--delimiter", "--valid-fraction",
             "--limit", "--params", "--out"},
    "sequence": {"--apply"},
}


def help_of(command: str) -> str:
    return subprocess.run([sys.executable, "-m", "service.cli", command, "--help"],
                          capture_output=True, text=True, check=True,
                          env={**os.environ, "COLUMNS": "200"}).stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_help_lists_the_commands_flags_with_their_defaults_by_section(command: str) -> None:
    text = help_of(command)
    settings = {"--" + name.replace("_", "-") for name in flags_of(command)}
    listed = set(re.findall(r"^  (--[a-z-]+)", text, re.M)) - {"--help"}
    switches = {"--no-" + flag[2:] for flag in settings} & listed  # --flag/--no-flag
    assert listed - switches == settings | OWN_FLAGS[command]
    # each with its default (a switch's is its absence), each setting under its section
    entries = re.split(r"\n  (?=-)", text.split("options:", 1)[1])
    for entry in entries[1:]:
        flag = entry.split()[0].rstrip(",")
        if flag not in ("-h", "--help", "--no-http", "--self-tune", "--apply", "--train",
                        "--test"):  # the help, switches, and flags one must give
            assert "default" in entry, entry
    for section in ("Redis", "Scoring", "Worker", "API"):
        if f"\n{section}:\n" in text:
            block = text.split(f"\n{section}:\n", 1)[1].split("\n\n", 1)[0]
            assert re.search(r"^  --", block, re.M), section
    assert "--protocol" not in text or "static: every prefix" in text


def test_where_the_commands_default_is_not_the_settings_it_says_so() -> None:
    assert "default: memory://" in help_of("demo")
    for command in ("eval", "tune"):
        assert "a private redis-server" in " ".join(help_of(command).split())


def test_the_demos_default_is_the_embedded_store() -> None:
    from service.store.backends import MEMORY_URL

    assert cli.EMBEDDED == MEMORY_URL
