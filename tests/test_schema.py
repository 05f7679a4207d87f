"""Schemathesis against the live API's own /openapi.json: every operation, every check
(no 5xx, documented statuses and shapes, schema-valid accepted, schema-invalid refused).
Shortened for CI; the long run is in docs/RELIABILITY.md."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from service.offline.redisproc import free_port
from service.settings import Settings
from tests.test_cli import wait_until_up


def test_schemathesis_finds_nothing(settings: Settings) -> None:
    tool = Path(sys.executable).parent / "schemathesis"
    assert tool.exists() or shutil.which("schemathesis"), "schemathesis is a dev dependency"
    port = free_port()
    env = dict(os.environ, SESSIONREC_REDIS_URL=settings.redis_url,
               SESSIONREC_NAMESPACE=settings.namespace, SESSIONREC_PORT=str(port))
    serve = subprocess.Popen([sys.executable, "-m", "service.cli", "--log-level", "ERROR",
                              "serve"], env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(base, serve)
        run = subprocess.run(
            [str(tool), "--config-file", str(Path(__file__).with_name("schemathesis.toml")),
             "run", base + "/openapi.json", "--max-examples",
             os.environ.get("SESSIONREC_SCHEMATHESIS_EXAMPLES", "20"), "--workers", "1",
             "--seed", "1"], capture_output=True, text=True, timeout=600,
            env=dict(os.environ, SCHEMATHESIS_HOOKS="tests.schemathesis_hooks",
                     PYTHONPATH=str(Path(__file__).parent.parent)))
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
        assert "passed" in run.stdout
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(15)
