"""Ports on 127.0.0.1: free ones picked by the kernel, asked-for ones checked before use."""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping

from kubus.devstack.errors import PortInUseError

__all__ = ["HOST", "allocate_ports"]

HOST = "127.0.0.1"


def allocate_ports(names: Iterable[str], requested: Mapping[str, int]) -> dict[str, int]:
    """A port for every name: the requested one if it is free, else one the kernel picks.

    All sockets stay bound until every port is chosen, so no two names get the same port. A
    process started later can still lose a race for a picked port; the stack then reports that
    component as failed to start.
    """
    held: list[socket.socket] = []
    ports: dict[str, int] = {}
    try:
        for name in names:
            wanted = requested.get(name, 0)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(sock)
            try:
                sock.bind((HOST, wanted))
            except OSError as error:
                raise PortInUseError(
                    f"port {wanted} for {name} is already in use on {HOST} ({error.strerror})"
                ) from error
            ports[name] = sock.getsockname()[1]
    finally:
        for sock in held:
            sock.close()
    return ports
