"""How every Kafka client of VAR connects: address plus security, built once from the settings.

The router workers (Faust), the stats worker, the producer, tail, replay, verify, capture, chaos
and the benches all make their aiokafka clients through :class:`KafkaAccess`, so a secured
cluster (SASL_SSL with SCRAM, say) needs nothing but the ``KAFKA_*`` settings. A plain
``"host:port"`` string still works wherever an access is expected (PLAINTEXT, for tests and the
open development stack): :func:`kafka_access` turns it into one.

The password is never part of the repr, of an error or of a log line.
"""
from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.helpers import create_ssl_context

from pipeline.settings import Settings


@dataclass(frozen=True)
class KafkaAccess:
    """Bootstrap servers and the credentials to talk to them (``protocol``: PLAINTEXT,
    SASL_PLAINTEXT, SSL or SASL_SSL; SASL ones use ``mechanism``, ``username``, ``password``;
    SSL ones verify the brokers with ``ca_file`` (default: the system's CAs) and present
    ``cert_file``/``key_file`` when given)."""

    bootstrap: str
    protocol: str = "PLAINTEXT"
    mechanism: str = "SCRAM-SHA-512"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> "KafkaAccess":
        return cls(settings.kafka_bootstrap, settings.kafka_security_protocol, settings.kafka_sasl_mechanism,
                   settings.kafka_username, settings.kafka_password, settings.kafka_ca_file,
                   settings.kafka_cert_file, settings.kafka_key_file)

    @property
    def uses_tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client TLS context (hostname checked), or None without TLS."""
        if not self.uses_tls:
            return None
        return create_ssl_context(cafile=self.ca_file, certfile=self.cert_file, keyfile=self.key_file)

    def security_options(self) -> dict[str, Any]:
        """The aiokafka keyword arguments of the security part (no bootstrap)."""
        options: dict[str, Any] = {"security_protocol": self.protocol}
        if self.uses_tls:
            options["ssl_context"] = self.ssl_context()
        if self.uses_sasl:
            options.update(sasl_mechanism=self.mechanism, sasl_plain_username=self.username,
                           sasl_plain_password=self.password)
        return options

    def options(self, **extra: Any) -> dict[str, Any]:
        """Every aiokafka keyword argument: bootstrap, security, then ``extra``."""
        return {"bootstrap_servers": self.bootstrap, **self.security_options(), **extra}

    def consumer(self, *topics: str, **extra: Any) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(*topics, **self.options(**extra))

    def producer(self, **extra: Any) -> AIOKafkaProducer:
        return AIOKafkaProducer(**self.options(**extra))

    def admin(self, **extra: Any) -> AIOKafkaAdminClient:
        return AIOKafkaAdminClient(**self.options(**extra))

    def faust_options(self) -> dict[str, Any]:
        """Faust app settings for these credentials (``broker_credentials``), empty for PLAINTEXT."""
        import faust

        context = self.ssl_context()
        if self.uses_sasl:
            return {"broker_credentials": faust.SASLCredentials(
                username=self.username, password=self.password, mechanism=self.mechanism, ssl_context=context)}
        if context is not None:
            return {"broker_credentials": faust.SSLCredentials(context)}
        return {}


def kafka_access(target: "KafkaAccess | str") -> KafkaAccess:
    """``target`` itself, or a PLAINTEXT access to the bootstrap servers it names."""
    return target if isinstance(target, KafkaAccess) else KafkaAccess(target)
