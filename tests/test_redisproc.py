"""The ports the private servers (tests, evaluations, benchmarks) listen on: drawn where no
client socket is given its local port, so a port found free stays free until the server binds
it (a browser test lost its port to a connection in between)."""

from __future__ import annotations

import random
import socket
from pathlib import Path

import pytest

from service.offline.redisproc import CLUSTER_PORTS, LISTEN_PORTS, free_cluster_port, free_port


def ephemeral_low() -> int:
    return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])


def test_a_free_port_lies_below_the_range_client_sockets_take_theirs_from() -> None:
    ports = {free_port() for _ in range(50)}
    assert all(LISTEN_PORTS[0] <= port < LISTEN_PORTS[1] for port in ports)
    assert LISTEN_PORTS[1] <= ephemeral_low()
    assert len(ports) > 1  # drawn, not one fixed port for every caller
    for port in ports:  # free: a listener binds it
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_listeners_and_cluster_nodes_draw_from_ranges_that_do_not_meet() -> None:
    node, bus = range(*CLUSTER_PORTS), range(CLUSTER_PORTS[0] + 10000, CLUSTER_PORTS[1] + 10000)
    listen = range(*LISTEN_PORTS)
    assert not set(listen) & (set(node) | set(bus))
    assert bus.stop <= ephemeral_low()
    port = free_cluster_port()
    assert port in node


def test_a_port_in_use_is_passed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        draws = iter([busy, busy, LISTEN_PORTS[0] + 7])
        monkeypatch.setattr(random, "randrange", lambda *_: next(draws))
        assert free_port() == LISTEN_PORTS[0] + 7
