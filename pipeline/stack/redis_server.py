"""A throw-away Redis server (Debian's ``redis-server``) on 127.0.0.1: no persistence, LRU-capped.

Secured (``secrets`` given): TLS only (no plain-text port) with the stack's certificate, and the
ACL file of :mod:`pipeline.stack.secure` (default user off; admin, router and stats users)."""
from __future__ import annotations

import socket
import ssl
from pathlib import Path

from .packages import ensure_package
from .ports import LOCALHOST
from .process import ProcessInfo
from .secure import StackSecrets
from .service import Service


def ping(port: int, host: str = LOCALHOST, timeout: float = 0.5, secrets: StackSecrets | None = None) -> bool:
    """True when a Redis server on ``host:port`` answers PING with PONG (secured: over TLS, as
    the stack's admin user)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            sock: socket.socket = raw
            if secrets is not None:
                sock = ssl.create_default_context(cafile=str(secrets.ca)).wrap_socket(raw, server_hostname=host)
                password = secrets.password("redis", "admin")
                sock.sendall(f"AUTH admin {password}\r\n".encode())
                if not sock.recv(64).startswith(b"+OK"):
                    return False
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def ensure_installed() -> str:
    """Path of ``redis-server`` (Debian's package, installed when missing: :func:`ensure_package`)."""
    return ensure_package("redis-server", "redis-server", None, "Redis 7")


class RedisServer(Service):
    """One redis-server process whose files live in ``home_dir`` (redis.log, redis.pid).

    Nothing is persisted (``--save ""``, no AOF); stop() then start() on the same port works.
    """

    name = "redis"
    stop_timeout = 10.0

    def __init__(
        self,
        home_dir: Path | str,
        port: int = 6379,
        maxmemory: str = "256mb",
        policy: str = "allkeys-lru",
        *,
        startup_timeout: float = 15.0,
        secrets: StackSecrets | None = None,
    ) -> None:
        super().__init__(home_dir, startup_timeout)
        self.secrets = secrets
        self.port = port
        self.maxmemory = maxmemory
        self.policy = policy

    @property
    def url(self) -> str:
        """Client URL, ``redis://127.0.0.1:<port>/0`` (``rediss://`` when secured)."""
        return f"{'rediss' if self.secrets else 'redis'}://{LOCALHOST}:{self.port}/0"

    def argv(self, binary: str = "redis-server") -> list[str]:
        """The server's command line."""
        ports = ["--port", str(self.port)]
        if self.secrets is not None:
            s = self.secrets
            ports = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(s.path("server.pem")),
                     "--tls-key-file", str(s.path("server.key")), "--tls-ca-cert-file", str(s.ca),
                     "--tls-auth-clients", "no", "--aclfile", str(s.path("redis-users.acl"))]
        return [
            binary, *ports, "--bind", LOCALHOST, "--save", "", "--appendonly", "no",
            "--maxmemory", self.maxmemory, "--maxmemory-policy", self.policy,
            "--dir", str(self.home), "--daemonize", "no",
        ]

    def start(self) -> ProcessInfo:
        """Launch the server and return once it answers PING; StackError on failure."""
        binary = ensure_installed()
        self._check_can_start([self.port])
        return self._launch(self.argv(binary), lambda _offset: ping(self.port, secrets=self.secrets))
