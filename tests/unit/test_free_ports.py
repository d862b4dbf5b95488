"""Ports for servers that bind later: outside the kernel's ephemeral range."""

from __future__ import annotations

import socket

from bms.services import free_http_port


def test_free_http_ports_are_below_the_ephemeral_range_and_bindable() -> None:
    """Each port is in 20000-29999 (Ray's workers take ephemeral ports, 32768 up, for their
    connections: one such port was taken before HAProxy bound it) and can be bound."""
    for _ in range(20):
        port = free_http_port()
        assert 20_000 <= port < 30_000
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_taken_port_is_not_handed_out() -> None:
    """Ports something listens on are skipped."""
    held = []
    try:
        for _ in range(30):
            s = socket.socket()
            s.bind(("127.0.0.1", free_http_port()))
            s.listen()
            held.append(s)
        taken = {s.getsockname()[1] for s in held}
        assert all(free_http_port() not in taken for _ in range(50))
    finally:
        for s in held:
            s.close()
