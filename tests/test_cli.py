"""The console script as an operator runs it: ``sessionrec serve`` + ``sessionrec worker``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.cli import build_parser
from service.offline.redisproc import free_port
from service.settings import Settings, from_args


def call(base: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_until_up(base: str, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(200):
        assert proc.poll() is None, "server exited"
        try:
            if call(base, "/healthz")[0] == 200:
                return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.05)
    raise AssertionError("server did not come up")


@pytest.fixture
def stack(settings: Settings) -> Iterator[str]:
    port = free_port()
    env = dict(os.environ, SESSIONREC_REDIS_URL=settings.redis_url,
               SESSIONREC_NAMESPACE=settings.namespace, SESSIONREC_PORT=str(port))
    cmd = [sys.executable, "-m", "service.cli", "--log-level", "WARNING"]
    serve = subprocess.Popen([*cmd, "serve"], env=env)
    worker = subprocess.Popen([*cmd, "worker", "--block-ms", "20"], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(base, serve)
        yield base
    finally:
        for proc in (serve, worker):
            proc.send_signal(signal.SIGTERM)
        assert serve.wait(15) == 0 and worker.wait(15) == 0


def test_serve_and_worker_learn_and_answer_the_seed_request(stack: str) -> None:
    status, body = call(stack, "/iid_recommend", {
        "user_interactions": {"89898": {"timestamp": 1704060026, "rating": 4.5},
                              "22898": {"timestamp": 1704060026, "rating": 4.5},
                              "21255": {"timestamp": 1704060026, "rating": 4.5}},
        "k": 10, "recommend_seen": True})
    assert status == 200 and set(body) == {"recommendations", "message", "recommendation_id"}

    events = []
    for s in range(40):
        events += [{"session_id": f"s{s}", "item_id": 89898, "timestamp": 1704060000 + s},
                   {"session_id": f"s{s}", "item_id": "21098", "timestamp": 1704060001 + s},
                   {"session_id": f"s{s}", "item_id": f"other{s % 9}",
                    "timestamp": 1704060002 + s}]
    assert call(stack, "/events", {"events": events}) == (202, {"accepted": 120})
    for _ in range(200):
        stats = call(stack, "/stats")[1]
        if stats["pending"] == 0 and stats["events_processed"] == 120:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"worker did not apply the events: {stats}")
    status, body = call(stack, "/iid_recommend", {
        "user_interactions": {"89898": {"timestamp": 1704060026, "rating": 4.5}},
        "k": 10, "recommend_seen": True})
    top3 = [r["id"] for r in body["recommendations"][:3]]
    assert status == 200 and "21098" in top3


def test_flags_override_env_and_env_overrides_defaults() -> None:
    parser = build_parser()
    args = parser.parse_args(["serve", "--port", "9001"])
    env = {"SESSIONREC_PORT": "9000", "SESSIONREC_REDIS_URL": "redis://example:1/2",
           "SESSIONREC_MAX_K": "50"}
    s = from_args(args, env)
    assert (s.port, s.redis_url, s.max_k, s.host) == (9001, "redis://example:1/2", 50,
                                                      "127.0.0.1")
    with pytest.raises(ValueError, match="SESSIONREC_PORT"):
        Settings.from_env({"SESSIONREC_PORT": "eighty"})
    with pytest.raises(ValueError, match="namespace"):
        Settings(namespace="has{brace}")


def test_every_command_has_help() -> None:
    for command in ("serve", "worker", "demo"):
        out = subprocess.run([sys.executable, "-m", "service.cli", command, "--help"],
                             capture_output=True, text=True, check=True).stdout
        assert "--redis-url" in out


def pause_redis(url: str, ms: int) -> None:
    """CLIENT PAUSE every node of ``url`` (each master of a cluster URL)."""
    import redis

    from service.store.backends import Cluster, backend_class, cluster_seeds

    nodes = [redis.Redis(host=n.host, port=int(n.port)) for n in cluster_seeds(url)] \
        if backend_class(url) is Cluster else [redis.Redis.from_url(url)]
    for node in nodes:
        node.execute_command("CLIENT", "PAUSE", ms, "ALL")  # type: ignore[no-untyped-call]
        node.close()


def test_serve_finishes_in_flight_requests_on_sigterm(settings: Settings) -> None:
    """Requests already being answered when SIGTERM arrives complete; then exit 0."""
    import asyncio

    import aiohttp

    port = free_port()
    # Redis is paused while the requests arrive, so each is certainly mid-answer (waiting on
    # Redis) when SIGTERM comes, however fast or slow the machine: the Redis timeout is longer
    # than the pause
    env = dict(os.environ, SESSIONREC_REDIS_URL=settings.redis_url,
               SESSIONREC_NAMESPACE=settings.namespace, SESSIONREC_PORT=str(port),
               SESSIONREC_REDIS_TIMEOUT="10")
    serve = subprocess.Popen([sys.executable, "-m", "service.cli", "--log-level", "WARNING",
                              "serve"], env=env)
    base = f"http://127.0.0.1:{port}"
    wait_until_up(base, serve)
    batch = {"events": [{"session_id": f"s{n}", "item_id": str(n)} for n in range(500)]}

    async def storm() -> tuple[list[int], float]:
        async with aiohttp.ClientSession() as session:
            async def one() -> int:
                async with session.post(base + "/events", json=batch) as resp:
                    return resp.status
            pause_redis(settings.redis_url, 3000)
            paused = time.monotonic()
            tasks = [asyncio.create_task(one()) for _ in range(40)]
            await asyncio.sleep(1.5)  # every request has reached its Redis call
            serve.send_signal(signal.SIGTERM)
            statuses = await asyncio.gather(*tasks, return_exceptions=False)
            return statuses, time.monotonic() - paused
    statuses, elapsed = asyncio.run(storm())
    assert serve.wait(15) == 0
    assert statuses == [202] * 40
    assert elapsed >= 2.9  # they were answered after the pause, so after SIGTERM


def test_serve_and_worker_processes_collect_garbage_less_often() -> None:
    code = ("import gc; from service.runtime import tune_gc; tune_gc(); "
            "print(gc.get_threshold()[0], gc.get_freeze_count() > 1000)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["20000", "True"]


def test_serve_restarts_a_dead_api_process(standalone_url: str) -> None:
    """``serve --processes 2``: a child killed (the OOM killer, a crash) comes back, and the
    port keeps answering; SIGTERM still stops them all."""
    port = free_port()
    env = dict(os.environ, SESSIONREC_REDIS_URL=standalone_url, SESSIONREC_PORT=str(port),
               SESSIONREC_NAMESPACE=f"restart-{os.getpid()}")
    serve = subprocess.Popen([sys.executable, "-m", "service.cli", "--log-level", "WARNING",
                              "serve", "--processes", "2"], env=env, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(base, serve)

        def children() -> set[int]:
            path = Path(f"/proc/{serve.pid}/task/{serve.pid}/children")
            return {int(pid) for pid in path.read_text().split()}

        for _ in range(100):
            if len(children()) == 2:
                break
            time.sleep(0.05)
        first = children()
        assert len(first) == 2
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            now = children()
            if len(now) == 2 and victim not in now:
                break
            time.sleep(0.1)
        assert len(children()) == 2 and victim not in children()
        for _ in range(20):  # both processes serve: the kernel spreads connections
            assert call(base, "/healthz")[0] == 200
    finally:
        serve.send_signal(signal.SIGTERM)
        _, err = serve.communicate(timeout=20)
    assert serve.returncode == 0
    assert b"restarting it" in err


def test_the_redis_password_never_reaches_the_logs(standalone_url: str) -> None:
    port = int(standalone_url.rsplit(":", 1)[1].split("/")[0])
    url = f"redis://:hunter2-secret@127.0.0.1:{port}/0"
    worker = subprocess.Popen([sys.executable, "-m", "service.cli", "worker",
                               "--redis-url", url], stderr=subprocess.PIPE,
                              env=dict(os.environ, SESSIONREC_NAMESPACE="pw"))
    time.sleep(2)
    worker.send_signal(signal.SIGTERM)
    _, err = worker.communicate(timeout=20)
    assert b"consuming" in err and b"127.0.0.1" in err
    assert b"hunter2" not in err


# --- failures: one line saying what to do, exit 2 (issue 27, points 3-5) ----------------------
def sessionrec(*args: str, env: dict[str, str] | None = None,
               timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service.cli", *args], capture_output=True,
                          text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})


def one_line_refusal(done: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The command exited 2 with one line on stderr, after any line saying which Redis it
    works on, naming each of ``needles``; no traceback."""
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if "writing to" not in line
             and "tuning on" not in line and " INFO " not in line]
    assert len(lines) == 1, done.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def tiny_log(path: Path, sessions: int = 30) -> Path:
    rows = ["SessionId\tItemId\tTime"] + [
        f"s{s}\ti{(s + n) % 9}\t{1_700_000_000 + 10 * s + n}"
        for s in range(sessions) for n in range(3)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def on(settings: Settings) -> list[str]:
    return ["--redis-url", settings.redis_url, "--namespace", settings.namespace,
            "--partitions", str(settings.partitions)]


def test_load_into_a_namespace_with_state_says_so_in_one_line(settings: Settings,
                                                              tmp_path: Path) -> None:
    log = tiny_log(tmp_path / "clicks.tsv")
    first = sessionrec("load", str(log), *on(settings))
    assert first.returncode == 0, first.stderr
    # the first line says which Redis, then the work
    assert first.stderr.splitlines()[0] == (f"sessionrec load: writing to "
                                           f"{settings.redis_url}, namespace "
                                           f"{settings.namespace}")
    missing = str(tmp_path / "not-read.tsv")  # refused before any file is read
    again = sessionrec("load", missing, *on(settings))
    one_line_refusal(again, "already has learned state", "--namespace",
                     f"namespace {settings.namespace!r}")
    # with --log-level DEBUG, the traceback too
    debug = sessionrec("--log-level", "DEBUG", "load", str(log), *on(settings))
    assert debug.returncode == 2 and "Traceback" in debug.stderr
    assert debug.stderr.rstrip().splitlines()[-1].startswith("sessionrec load: namespace")


def test_every_command_refuses_an_unreachable_redis_in_one_line(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    log = tiny_log(tmp_path / "clicks.tsv")
    items = tmp_path / "items.jsonl"
    items.write_text('{"id": "a"}\n', encoding="utf-8")
    for args in (["load", str(log)], ["catalog", str(items)], ["tune", "--apply"],
                 ["eval", "--train", str(log), "--test", str(log), "--models", "sessionrec"],
                 ["demo", "--port", str(free_port())]):
        done = sessionrec(*args, "--redis-url", url, "--redis-timeout", "0.2")
        one_line_refusal(done, f"cannot reach Redis at {url}", "--redis-url")


def test_a_missing_file_and_an_empty_one_are_refused_in_one_line(settings: Settings,
                                                                tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere.jsonl")
    one_line_refusal(sessionrec("catalog", missing, *on(settings)), missing, "No such file")
    one_line_refusal(sessionrec("load", missing, *on(settings)), missing, "No such file")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    one_line_refusal(sessionrec("catalog", str(empty), *on(settings)), "no record")
    header = tmp_path / "header.tsv"
    header.write_text("SessionId\tItemId\tTime\n", encoding="utf-8")
    one_line_refusal(sessionrec("load", str(header), *on(settings)), "no events",
                     "nothing to learn")
    one_line_refusal(sessionrec("tune", "--train", str(header), *on(settings)),
                     "too few sessions")


def test_a_tsv_read_as_csv_suggests_the_delimiter(settings: Settings, tmp_path: Path) -> None:
    log = tiny_log(tmp_path / "clicks.tsv")
    done = sessionrec("load", str(log), "--format", "csv", "--columns",
                      "session=SessionId,item=ItemId,time=Time", *on(settings))
    one_line_refusal(done, "no column ItemId, SessionId, Time", "--delimiter $'\\t'")
    fixed = sessionrec("load", str(log), "--columns", "session=SessionId,item=ItemId,time=Time",
                       "--delimiter", "\t", *on(settings))  # --columns implies --format csv
    assert fixed.returncode == 0, fixed.stderr
    assert "loaded 90 events" in fixed.stdout


def test_the_worker_refuses_an_evicting_redis_as_serve_does() -> None:
    from service.offline.redisproc import RedisProcess

    with RedisProcess("--maxmemory", "100mb", "--maxmemory-policy", "allkeys-lru") as url:
        worker = sessionrec("worker", "--redis-url", url, timeout=30)
        line = one_line_refusal(worker, "allkeys-lru", "noeviction")
        serve = sessionrec("serve", "--redis-url", url, "--port", str(free_port()),
                           timeout=30)
    assert serve.returncode == 2 and line.split(": ", 1)[1] in serve.stderr


def test_a_password_in_the_url_is_masked_in_the_first_line(tmp_path: Path) -> None:
    import redis

    from service.offline.redisproc import RedisProcess

    with RedisProcess() as url:
        client = redis.Redis.from_url(url)
        client.config_set("requirepass", "hunter2-secret")
        client.close()
        masked = url.replace("redis://", "redis://:***@")
        done = sessionrec("load", str(tiny_log(tmp_path / "clicks.tsv")), "--redis-url",
                          url.replace("redis://", "redis://:hunter2-secret@"))
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[0] == f"sessionrec load: writing to {masked}, namespace sr"
    assert "hunter2" not in done.stderr + done.stdout


def test_tune_apply_refuses_an_empty_namespace_and_flags_of_train(settings: Settings,
                                                                  tmp_path: Path) -> None:
    done = sessionrec("tune", "--apply", *on(settings))
    assert done.stderr.splitlines()[0].startswith(
        f"sessionrec tune: tuning on {settings.redis_url}, namespace {settings.namespace}")
    one_line_refusal(done, "has learned fewer than two sessions", "nothing to tune on")
    one = tmp_path / "one.tsv"  # one session: nothing left to judge a candidate on
    one.write_text("SessionId\tItemId\tTime\ns\ta\t1\ns\tb\t2\ns\tc\t3\n", encoding="utf-8")
    assert sessionrec("load", str(one), *on(settings)).returncode == 0
    one_line_refusal(sessionrec("tune", "--apply", *on(settings)), "fewer than two sessions")
    log = str(tiny_log(tmp_path / "clicks.tsv"))
    for contradiction, named in ((["--train", log], "--train"), (["--out", "x.env"], "--out"),
                                 (["--params", "neighbours"], "--params")):
        refused = sessionrec("tune", "--apply", *contradiction, *on(settings))
        assert refused.returncode == 2 and "usage: sessionrec tune" in refused.stderr
        error = refused.stderr.strip().splitlines()[-1]
        assert named in error and "--apply" in error and "not allowed" in error, error
    neither = sessionrec("tune", *on(settings))
    assert neither.returncode == 2 and "--train --apply" in neither.stderr


def test_contradictory_flags_are_refused_naming_both(tmp_path: Path) -> None:
    log = str(tiny_log(tmp_path / "clicks.tsv"))
    nowhere = ["--redis-url", f"redis://127.0.0.1:{free_port()}/0"]  # should one run
    for args, named in (
            (["eval", "--train", log, "--test", log, "--no-http", "--self-tune"],
             ("--self-tune", "--no-http")),
            (["load", log, "--format", "srgnn", "--columns", "session=a,item=b"],
             ("--columns", "--format srgnn")),
            (["eval", "--train", log, "--test", log, "--format", "sessionrec", "--delimiter",
              ";"], ("--delimiter", "--format sessionrec"))):
        done = sessionrec(*args, *nowhere)
        error = done.stderr.strip().splitlines()[-1]
        assert done.returncode == 2 and all(flag in error for flag in named), done.stderr


def test_a_client_dropping_its_body_is_no_redis_outage(standalone_url: str) -> None:
    """A client that closes its connection before its body is whole is its own failure: no
    "redis unavailable" in the log, no 503 in the metrics (anyone could raise false outage
    alerts). Against the real server: under uvloop the handler meets the reset itself."""
    import socket

    port = free_port()
    env = dict(os.environ, SESSIONREC_REDIS_URL=standalone_url, SESSIONREC_PORT=str(port),
               SESSIONREC_NAMESPACE="dropped")
    serve = subprocess.Popen([sys.executable, "-m", "service.cli", "--log-level", "WARNING",
                              "serve"], env=env, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(base, serve)
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: "
                             b"application/json\r\nContent-Length: 100\r\n\r\n{")
        time.sleep(0.5)
        with urllib.request.urlopen(base + "/metrics", timeout=5) as resp:
            metrics = resp.read().decode()
    finally:
        serve.send_signal(signal.SIGTERM)
        _, err = serve.communicate(timeout=20)
    assert 'route="/events",status="503"' not in metrics
    assert 'route="/events",status="400"} 3.0' in metrics
    assert b"redis unavailable" not in err
