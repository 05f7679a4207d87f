"""Fixtures: a real redis-server of the test session's own (never the machine's 6379), one
namespace per test, the API through pytest-aiohttp's client, and a worker drain helper."""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp import web
from aiohttp.test_utils import TestClient

from service.app import create_app
from service.settings import Settings

Client = TestClient[web.Request, web.Application]

_namespaces = itertools.count()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(directory: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.exit("redis-server is not on PATH: the tests need a real Redis. Install it with "
                    "'apt-get install redis-server' (Debian/Ubuntu) or 'brew install redis'.",
                    returncode=3)
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(directory), "--daemonize", "no", "--loglevel", "warning", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            if client.ping():
                break
        except redis.ConnectionError:
            time.sleep(0.025)
    else:
        proc.kill()
        raise RuntimeError("redis-server did not start")
    client.close()
    return proc, port


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, port = start_redis(tmp_path_factory.mktemp("redis"))
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def settings(redis_url: str) -> Settings:
    """Settings on the test Redis with a namespace of this test's own."""
    return Settings(redis_url=redis_url, namespace=f"t{os.getpid()}-{next(_namespaces)}",
                    partitions=4, block_ms=20, lease_ms=2000)


@pytest.fixture
async def client(aiohttp_client: Any, settings: Settings) -> AsyncIterator[Client]:
    yield await aiohttp_client(create_app(settings))
