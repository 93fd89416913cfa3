"""tests/support/processes.py's free_port: ports that no outgoing connection can take before a service
binds them."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.support.processes import free_port

DRAWS = 200


def ephemeral_range() -> tuple[int, int]:
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return int(low), int(high)


def test_ports_come_from_below_the_kernels_ephemeral_range_and_are_never_handed_out_twice() -> None:
    ports = [free_port() for _ in range(DRAWS)]

    assert max(ports) < ephemeral_range()[0]
    assert len(set(ports)) == DRAWS


def test_a_port_handed_out_can_be_bound_on_every_interface() -> None:
    port = free_port()

    with socket.socket() as server:
        server.bind(("0.0.0.0", port))
        server.listen()
