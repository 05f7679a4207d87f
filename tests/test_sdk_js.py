"""The SDK's JavaScript unit tests (node's built-in runner), and its size."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_sdk_unit_tests_pass_in_node() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: the SDK's unit tests need Node.js >= 18 "
                    "(apt-get install nodejs)")
    done = subprocess.run([node, "--test", str(ROOT / "tests" / "js")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "# fail 0" in done.stdout


def test_sdk_stays_small() -> None:
    source = (ROOT / "service" / "api" / "static" / "sdk.js").read_bytes()
    assert len(source) < 17_000
