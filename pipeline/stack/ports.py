"""TCP port helpers for services bound to 127.0.0.1."""
from __future__ import annotations

import socket
import time
from contextlib import ExitStack

from .errors import StackError

LOCALHOST = "127.0.0.1"


def free_ports(count: int, host: str = LOCALHOST) -> list[int]:
    """Return ``count`` distinct TCP ports that were free on ``host`` a moment ago.

    All sockets are held open together, so the ports are distinct; they are closed before
    returning, so another process could in principle grab one before the caller binds it.
    """
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]


def free_port(host: str = LOCALHOST) -> int:
    """Return one TCP port that was free on ``host`` a moment ago."""
    return free_ports(1, host)[0]


def is_port_open(host: str, port: int, timeout: float = 0.25) -> bool:
    """True when something accepts a TCP connection on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def check_port(port: int) -> int:
    """Return ``port`` if it is a valid TCP port number (1-65535), else raise StackError."""
    if not 0 < port < 65536:
        raise StackError(f"invalid port {port}: must be 1-65535")
    return port


def is_port_free(port: int, host: str = LOCALHOST) -> bool:
    """True when ``host:port`` can be bound right now (nothing listens on it)."""
    check_port(port)
    with socket.socket() as sock:
        # like the servers themselves: TIME_WAIT leftovers of a stopped server do not count
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def wait_for_port(host: str, port: int, timeout: float, interval: float = 0.05) -> bool:
    """Poll until ``host:port`` accepts TCP connections; False if ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        if is_port_open(host, port):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
