"""A private redis-server on a free loopback port: for the evaluator, benchmarks and tests,
which must never touch a Redis they do not own."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from service.failures import Refused

CLUSTER_PORTS = (20000, 22700)
"""Where a cluster node's port is drawn from (its bus port 10000 above it: 30000-32700)."""

LISTEN_PORTS = (22700, 30000)
"""Where any other listener's port is drawn from: like the cluster's, below Linux's ephemeral
range (32768 and up), from which every client socket takes its local port. A port found free
there can be taken by any connection between the check and the server's bind; here only
another listener could take it."""


def free_port() -> int:
    """A loopback port free now, from ``LISTEN_PORTS``."""
    return _drawn(LISTEN_PORTS, 0, "a free port")


def free_cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too, from ``CLUSTER_PORTS``: a
    client socket picking the bus port between this check and the node's start would make
    the node fail to start."""
    return _drawn(CLUSTER_PORTS, 10000, "a free port pair for a cluster node")


def _drawn(ports: tuple[int, int], bus: int, what: str) -> int:
    """A random port of the range ``ports`` that binds, and whose ``+ bus`` binds too."""
    for _ in range(1000):
        port = random.randrange(*ports)
        try:
            for candidate in {port, port + bus}:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no {what}")


def command(port: int, *args: str) -> Any:
    """One raw command to a local node (replies unparsed, so the same on every Redis)."""
    client = redis.Redis(port=port)
    try:
        return client.execute_command(*args, NEVER_DECODE=True)  # type: ignore[no-untyped-call]
    finally:
        client.close()


class _Throwaway:
    """``with X(...) as url:``: the server(s) stop and their files go on exit."""

    url: str
    _tmp: tempfile.TemporaryDirectory[str] | None

    def stop(self) -> None:
        raise NotImplementedError

    def _cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> str:
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RedisProcess(_Throwaway):
    """``with RedisProcess() as url: ...`` runs a throwaway redis-server (no persistence unless
    extra arguments ask for it) and stops it on exit."""

    def __init__(self, *extra: str, directory: Path | None = None,
                 port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise Refused("redis-server is not on PATH: install it with "
                               "'apt-get install redis-server' (or 'brew install redis')")
        self._tmp = None if directory else tempfile.TemporaryDirectory(prefix="sessionrec-")
        self.directory = directory or Path(self._tmp.name)  # type: ignore[union-attr]
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory), "--daemonize", "no",
             "--loglevel", "warning", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port)
        try:
            for _ in range(400):
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    if self.proc.poll() is not None:
                        break
                    time.sleep(0.025)
            self.stop()
            raise RuntimeError("redis-server did not start")
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._cleanup()


class RedisClusterProcess(_Throwaway):
    """``with RedisClusterProcess(masters=3, replicas=0) as url: ...`` runs a throwaway Redis
    Cluster on free loopback ports (``redis-cli --cluster create``) and yields its
    ``redis+cluster://`` URL naming every master as a seed node. ``nodes`` are the processes,
    masters first, so a test can kill one to force a failover."""

    def __init__(self, masters: int = 3, replicas: int = 0, node_timeout_ms: int = 1000,
                 directory: Path | None = None) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise Refused("redis-cli is not on PATH: install it with "
                               "'apt-get install redis-server' (or 'brew install redis')")
        self._tmp = None if directory else tempfile.TemporaryDirectory(prefix="sessionrec-c-")
        root = directory or Path(self._tmp.name)  # type: ignore[union-attr]
        self.nodes: list[RedisProcess] = []
        try:
            for n in range(masters * (1 + replicas)):
                for attempt in range(5):  # a port taken between the check and the start
                    port = free_cluster_port()
                    try:
                        self.nodes.append(RedisProcess(
                            "--cluster-enabled", "yes", "--cluster-config-file",
                            f"nodes-{port}.conf", "--cluster-node-timeout", str(node_timeout_ms),
                            "--cluster-require-full-coverage", "no",
                            directory=root / f"node{n}", port=port))
                        break
                    except RuntimeError:
                        if attempt == 4:
                            raise
            subprocess.run(
                [cli, "--cluster", "create",
                 *(f"127.0.0.1:{node.port}" for node in self.nodes),
                 "--cluster-replicas", str(replicas), "--cluster-yes"],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, timeout=60)
            self._wait_ready(masters, replicas)
            roles = {node.port: self._role(node.port) for node in self.nodes}
            self.nodes.sort(key=lambda node: roles[node.port] != "master")
        except BaseException:
            self.stop()
            raise
        self.url = "redis+cluster://" + ",".join(
            f"127.0.0.1:{node.port}" for node in self.nodes[:masters])

    def _wait_ready(self, masters: int, replicas: int, timeout: float = 30.0) -> None:
        """Every node agrees the cluster is ok and knows every node (gossip has converged)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ok = True
            for node in self.nodes:
                known = len(command(node.port, "CLUSTER", "NODES").decode().strip().splitlines())
                ok = (ok and b"cluster_state:ok" in command(node.port, "CLUSTER", "INFO")
                      and known == len(self.nodes))
                if ok and self._role(node.port) == "slave":
                    info = redis.Redis(port=node.port)
                    try:
                        ok = info.info("replication").get("master_link_status") == "up"
                    finally:
                        info.close()
            if ok:
                return
            time.sleep(0.1)
        raise RuntimeError("the local Redis Cluster did not become ready")

    @staticmethod
    def _role(port: int) -> str:
        return str(command(port, "ROLE")[0].decode())

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self._cleanup()
