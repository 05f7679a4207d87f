"""docker-compose.cluster.yml's topology run natively (no Docker daemon needed): the local
cluster, two ``sessionrec serve`` processes behind nginx started with deploy/nginx.conf, and
three ``sessionrec worker`` processes. Events posted through nginx are learned and answered."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.offline.redisproc import free_port
from tests.test_cli import call, wait_until_up

ROOT = Path(__file__).resolve().parent.parent
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


@pytest.fixture
def topology(cluster_url: str, tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    if not os.path.exists(NGINX):
        pytest.fail("nginx not found: apt-get install nginx (.ci/run does)")
    env = dict(os.environ, SESSIONREC_REDIS_URL=cluster_url,
               SESSIONREC_NAMESPACE=f"topo{os.getpid()}", SESSIONREC_BLOCK_MS="20")
    procs: list[subprocess.Popen[bytes]] = []
    apis = []
    for _ in range(2):
        port = free_port()
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "service.cli", "--log-level", "WARNING", "serve",
             "--port", str(port)], env=env))
        apis.append(f"http://127.0.0.1:{port}")
    for _ in range(3):
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "service.cli", "--log-level", "WARNING", "worker"], env=env))
    front = free_port()
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    conf = conf.replace("api-1:8000", apis[0].removeprefix("http://"))
    conf = conf.replace("api-2:8000", apis[1].removeprefix("http://"))
    conf = conf.replace("listen 8000", f"listen 127.0.0.1:{front}")
    conf = conf.replace("/tmp/sessionrec-nginx", str(tmp_path / "nginx"))
    (tmp_path / "nginx.conf").write_text(conf)
    try:
        for base, proc in zip(apis, procs, strict=False):
            wait_until_up(base, proc)
        procs.append(subprocess.Popen([NGINX, "-c", str(tmp_path / "nginx.conf"),
                                       "-p", str(tmp_path), "-g", "daemon off;"]))
        yield f"http://127.0.0.1:{front}", apis
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_events_through_nginx_are_learned_by_three_workers(
        topology: tuple[str, list[str]]) -> None:
    front, apis = topology
    deadline = time.monotonic() + 10
    while True:
        try:
            if call(front, "/readyz")[0] == 200:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "nginx did not come up"
        time.sleep(0.05)
    sent = 0
    for n in range(60):
        events = [{"session_id": f"s{n}", "item_id": f"i{(n + j) % 9}", "timestamp": n + j}
                  for j in range(4)]
        status, body = call(front, "/events", {"events": events})
        assert (status, body) == (202, {"accepted": 4})
        sent += 4
    deadline = time.monotonic() + 30
    while (stats := call(front, "/stats")[1])["pending"] or stats["events_accepted"] < sent:
        assert time.monotonic() < deadline, stats
        time.sleep(0.05)
    assert stats["events_processed"] == sent
    status, body = call(front, "/items/i3/similar?k=3")
    assert status == 200 and len(body["recommendations"]) == 3
    status, body = call(front, "/iid_recommend", {"user_interactions": {"i1": {}, "i2": {}}})
    assert status == 200 and body["message"].startswith("Recommendations based on session")
    # nginx spread the requests over both API processes
    for base in apis:
        with urllib.request.urlopen(base + "/metrics") as r:
            text = r.read().decode()
        served = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                     if line.startswith("sessionrec_http_requests_total{") and "/events" in line)
        assert served > 0, base
