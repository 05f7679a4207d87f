"""Fixtures: a real redis-server of the test session's own (never the machine's 6379), one
namespace per test, the API through pytest-aiohttp's client, and a worker drain helper."""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from service.api.app import create_app
from service.offline.redisproc import RedisClusterProcess, RedisProcess
from service.settings import Settings

Client = TestClient[web.Request, web.Application]

_namespaces = itertools.count()


def _need_redis() -> None:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.exit("redis-server and redis-cli are not on PATH: the tests need a real Redis. "
                    "Install it with 'apt-get install redis-server' (Debian/Ubuntu) or "
                    "'brew install redis'.", returncode=3)


@pytest.fixture(scope="session", autouse=True)
def no_automatic_tuning() -> Iterator[None]:
    """Workers start tuning runs of their own (``--auto-tune``, on by default), which write the
    model record and run a process beside a test: off, in this process' workers and in the
    processes tests start, except where a test turns it on (tests/test_livetune.py)."""
    from workers import consumer

    saved, os.environ["SESSIONREC_AUTO_TUNE"] = os.environ.get("SESSIONREC_AUTO_TUNE"), "false"
    every, consumer.AUTO_TUNE_CHECK = consumer.AUTO_TUNE_CHECK, float("inf")
    yield
    consumer.AUTO_TUNE_CHECK = every
    if saved is None:
        del os.environ["SESSIONREC_AUTO_TUNE"]
    else:
        os.environ["SESSIONREC_AUTO_TUNE"] = saved


@pytest.fixture(scope="session")
def standalone_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    _need_redis()
    with RedisProcess(directory=tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(scope="session")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A local 3-master Redis Cluster (``redis+cluster://`` URL naming the masters)."""
    _need_redis()
    with RedisClusterProcess(masters=3, directory=tmp_path_factory.mktemp("cluster")) as url:
        yield url


@pytest.fixture(scope="session", params=["standalone", "cluster"])
def redis_url(request: pytest.FixtureRequest) -> str:
    """Every integration test runs twice: on a standalone Redis and on the local cluster."""
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
def settings(redis_url: str) -> Settings:
    """Settings on the test Redis with a namespace of this test's own."""
    return Settings(redis_url=redis_url, namespace=f"t{os.getpid()}-{next(_namespaces)}",
                    partitions=4, block_ms=20, lease_ms=2000)


@pytest.fixture
async def client(aiohttp_client: Any, settings: Settings) -> AsyncIterator[Client]:
    yield await aiohttp_client(create_app(settings))
