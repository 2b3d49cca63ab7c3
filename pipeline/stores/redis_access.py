"""How every Redis client of VAR connects: URL plus ACL user, password and TLS files.

``rediss://`` URLs use TLS (the server's certificate checked against ``ca_file``, default the
system's CAs; ``cert_file``/``key_file`` presented when the server asks for a client
certificate). The user and password may come from the settings (``REDIS_USERNAME``,
``REDIS_PASSWORD`` or ``REDIS_PASSWORD_FILE``) or sit in the URL; the settings win. Neither the
password nor the URL's password ever appears in a repr, an error or a log line: use
:attr:`RedisAccess.display` to name the server.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from pipeline.settings import Settings, redact_url


@dataclass(frozen=True)
class RedisAccess:
    url: str = field(repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> "RedisAccess":
        return cls(settings.redis_url, settings.redis_username, settings.redis_password, settings.redis_ca_file,
                   settings.redis_cert_file, settings.redis_key_file)

    @property
    def display(self) -> str:
        """The URL without its password (for messages)."""
        return redact_url(self.url)

    def __repr__(self) -> str:
        return f"RedisAccess({self.display!r}, username={self.username!r})"

    @property
    def uses_tls(self) -> bool:
        return self.url.lower().startswith("rediss://")

    def options(self, timeout_s: float, **extra: Any) -> dict[str, Any]:
        """``Redis.from_url`` keyword arguments: timeouts, credentials, TLS files, then ``extra``."""
        options: dict[str, Any] = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
        if self.username is not None:
            options["username"] = self.username
        if self.password is not None:
            options["password"] = self.password
        if self.uses_tls:
            options.update(ssl_cert_reqs="required", ssl_ca_certs=self.ca_file, ssl_certfile=self.cert_file,
                           ssl_keyfile=self.key_file)
        return {**options, **extra}

    def client(self, timeout_s: float = 5.0, **extra: Any) -> aioredis.Redis:
        """A new asyncio client (connects lazily)."""
        return aioredis.Redis.from_url(self.url, **self.options(timeout_s, **extra))


def redis_access(target: "RedisAccess | str") -> RedisAccess:
    """``target`` itself, or an access to the URL it is (credentials only from the URL)."""
    return target if isinstance(target, RedisAccess) else RedisAccess(target)
