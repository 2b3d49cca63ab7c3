"""Throwaway credentials for a secured local stack (or a compose deployment): ``var stack secrets``.

One directory holds everything (the directory 0700; the files 0600, or 0644 for docker compose,
whose containers read them as other users -- deploy/README.md, "Permissions")::

    ca.pem ca.key                 a local CA (openssl), valid 30 days
    server.pem server.key         the brokers' and Redis' certificate (SANs: localhost, 127.0.0.1,
                                  kafka, redis) and its PKCS#8 key; server-keystore.pem = both
    kafka-{admin,router,stats}.password    SCRAM-SHA-512 users (admin: inter-broker, operators)
    redis-{admin,router,stats}.password    Redis ACL users; redis-users.acl holds their rules
                                           with SHA-256 password hashes (``user default off``)
    grafana-admin.password, certificate.key (HMAC key of routing certificates)

Existing files are kept, so re-running never changes a password a running service uses.
:func:`write_env_files` adds ``admin.env`` (the operator's settings for a running stack) and
``router.env``/``stats.env`` (each role's login), ``KEY=VALUE`` with passwords only as ``*_FILE``
paths. A worker started by hand: ``set -a; . admin.env; . router.env; set +a; var worker``.
"""
from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pipeline.settings import Settings
from pipeline.stores.keys import ROLE_KEYS, acl_user_rule

from .errors import StackError, require_tool

ROLES = tuple(ROLE_KEYS)  # admin, router, stats: the same users in Kafka and Redis
SERVER_NAMES = ("DNS:localhost", "IP:127.0.0.1", "DNS:kafka", "DNS:redis")
CERT_DAYS = 30


@dataclass(frozen=True)
class StackSecrets:
    """The files of one secrets directory (see the module docstring)."""

    root: Path

    def path(self, name: str) -> Path:
        return self.root / name

    def password(self, service: str, role: str) -> str:
        return self.path(f"{service}-{role}.password").read_text().strip()

    @property
    def ca(self) -> Path:
        return self.path("ca.pem")

    @property
    def keystore(self) -> Path:
        return self.path("server-keystore.pem")

    def admin_client_config(self) -> Path:
        """A Kafka client config (kafka-acls, kafka-topics ``--command-config``) for the admin user."""
        path = self.path("kafka-admin-client.properties")
        _write_private(path, "security.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\n"
                             f"sasl.jaas.config={_scram_login('admin', self.password('kafka', 'admin'))}\n"
                             f"ssl.truststore.type=PEM\nssl.truststore.location={self.ca}\n")
        return path


def generate(root: Path | str, namespace: str = "default", file_mode: int = 0o600) -> StackSecrets:
    """Create whatever is missing in ``root``; the ACL file is rewritten for ``namespace``; every
    file gets ``file_mode``."""
    out = StackSecrets(Path(root).resolve())
    out.root.mkdir(parents=True, exist_ok=True)
    os.chmod(out.root, 0o700)
    for name in [f"{s}-{r}.password" for s in ("kafka", "redis") for r in ROLES] + ["grafana-admin.password",
                                                                                   "certificate.key"]:
        if not out.path(name).exists():
            _write_private(out.path(name), secrets.token_urlsafe(24) + "\n")
    if not (out.ca.exists() and out.path("server.pem").exists() and out.keystore.exists()):
        _certificates(out)
    rules = ["user default off"] + [
        acl_user_rule(namespace, role, role, hashlib.sha256(out.password("redis", role).encode()).hexdigest())
        for role in ROLES]
    _write_private(out.path("redis-users.acl"), "\n".join(rules) + "\n")
    for path in out.root.iterdir():
        if path.is_file() and not path.name.startswith("."):
            os.chmod(path, file_mode)
    return out


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines (``#`` comments and blank lines skipped; no quoting, no expansion)."""
    env = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise StackError(f"{path} line {number}: expected KEY=VALUE")
        env[key.strip()] = value.strip()
    return env


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def _certificates(out: StackSecrets) -> None:
    """A CA and one server certificate signed by it (openssl; keys never leave ``out.root``)."""
    openssl = require_tool("openssl")
    ext = out.path("server.ext")
    ext.write_text(f"subjectAltName={','.join(SERVER_NAMES)}\nbasicConstraints=CA:FALSE\n"
                   "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n")
    steps = [
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days",
         str(CERT_DAYS), "-subj", "/CN=VAR local CA", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj",
         "/CN=localhost"],
        ["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
         "-out", "server.pem", "-days", str(CERT_DAYS), "-extfile", "server.ext"],
    ]
    for step in steps:
        result = subprocess.run([openssl, *step], cwd=out.root, capture_output=True, text=True)
        if result.returncode != 0:
            raise StackError(f"openssl {step[0]} failed (exit {result.returncode})", result.stderr[-2000:])
    for name in ("ca.key", "server.key"):
        os.chmod(out.path(name), 0o600)
    _write_private(out.keystore, out.path("server.key").read_text() + out.path("server.pem").read_text())
    for name in ("server.csr", "server.ext", "ca.srl"):
        out.path(name).unlink(missing_ok=True)


def role_credentials(out: StackSecrets, role: str) -> dict[str, str]:
    """The login of ``role`` (its Kafka and Redis user, passwords as files): what ``<role>.env``
    holds for router and stats, laid over the operator's settings by the workers var starts."""
    env = {"KAFKA_USERNAME": role, "KAFKA_PASSWORD_FILE": str(out.path(f"kafka-{role}.password")),
           "REDIS_USERNAME": role, "REDIS_PASSWORD_FILE": str(out.path(f"redis-{role}.password"))}
    if role != "stats":  # routers seal certificates, operators verify them
        env["VAR_CERTIFICATE_KEY_FILE"] = str(out.path("certificate.key"))
    return env


def operator_env(out: StackSecrets, bootstrap: str, redis_url: str, namespace: str) -> dict[str, str]:
    """``admin.env``: where the secured services are, how to reach them, and the admin login."""
    return {
        "KAFKA_BOOTSTRAP": bootstrap, "KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_CA_FILE": str(out.ca), "REDIS_URL": redis_url, "REDIS_CA_FILE": str(out.ca),
        "VAR_NAMESPACE": namespace, "VAR_ROLE_ENV_DIR": str(out.root), **role_credentials(out, "admin"),
    }


def write_env_files(out: StackSecrets, bootstrap: str, redis_url: str, namespace: str) -> Path:
    """Write ``admin.env`` (:func:`operator_env`) and ``router.env``/``stats.env``
    (:func:`role_credentials`); returns the admin one (``set -a; . admin.env; set +a``)."""
    files = {"admin": operator_env(out, bootstrap, redis_url, namespace),
             **{role: role_credentials(out, role) for role in ROLES if role != "admin"}}
    for role, env in files.items():
        _write_private(out.path(f"{role}.env"), "".join(f"{k}={v}\n" for k, v in env.items()))
    return out.path("admin.env")


def secure_broker_config(plain: str, out: StackSecrets, port: int) -> str:
    """``plain`` server.properties turned into a SASL_SSL broker: the client (and inter-broker)
    listener speaks TLS and SCRAM-SHA-512 only; the KRaft controller listener stays on loopback."""
    replaced = {
        "listeners": lambda v: v.replace(f"PLAINTEXT://127.0.0.1:{port}", f"SASL_SSL://127.0.0.1:{port}"),
        "advertised.listeners": lambda v: f"SASL_SSL://127.0.0.1:{port}",
        "inter.broker.listener.name": lambda v: "SASL_SSL",
        "listener.security.protocol.map": lambda v: "CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL",
    }
    lines = []
    for line in plain.splitlines():
        key, sep, value = line.partition("=")
        lines.append(f"{key}={replaced[key](value)}" if sep and key in replaced else line)
    jaas = _scram_login("admin", out.password("kafka", "admin"))
    lines += [
        "", "############ security (pipeline/stack/secure.py) ############",
        "sasl.enabled.mechanisms=SCRAM-SHA-512", "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
        f"listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={jaas}",
        "ssl.keystore.type=PEM", f"ssl.keystore.location={out.keystore}",
        "ssl.truststore.type=PEM", f"ssl.truststore.location={out.ca}", "ssl.client.auth=none",
        # Authorization: only what kafka_acls() grants. The broker reaches its (plain-text,
        # loopback) controller listener as ANONYMOUS, which must be a super user in KRaft.
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users=User:admin;User:ANONYMOUS", "allow.everyone.if.no.acl.found=false",
    ]
    return "\n".join(lines) + "\n"


def scram_format_args(out: StackSecrets) -> list[str]:
    """``kafka-storage format`` arguments that create every role's SCRAM-SHA-512 credential."""
    args = []
    for role in ROLES:
        args += ["--add-scram", f"SCRAM-SHA-512=[name={role},password={out.password('kafka', role)}]"]
    return args


def _scram_login(user: str, password: str) -> str:
    return f'org.apache.kafka.common.security.scram.ScramLoginModule required username="{user}" password="{password}";'


def kafka_acls(settings: Settings) -> list[list[str]]:
    """``kafka-acls --add`` arguments granting each role what it uses, by topic and group name
    prefixes from ``settings`` (so run-scoped ``<topic>-<run id>`` names are covered too):

    - router: read the token topic in its consumer group (the app id); write outcomes, dead
      letters and certificates; everything on its Faust internal topics (``<app id>-...``:
      the windows changelog, the leader topic);
    - stats: read the outcome topic in its group; see (describe) the other pipeline topics;
    - admin (operators: replay, verify, topic creation) is a super user.
    """
    s = settings
    prefixed = ["--resource-pattern-type", "prefixed"]
    def grant(role: str, ops: tuple[str, ...], topics: tuple[str, ...], groups: tuple[str, ...] = ()) -> list[str]:
        return ["--allow-principal", f"User:{role}", *[a for op in ops for a in ("--operation", op)],
                *[a for t in topics for a in ("--topic", t)], *[a for g in groups for a in ("--group", g)], *prefixed]
    return [
        grant("router", ("Read", "Describe"), (s.topic_tokens,), (s.app_id,)),
        grant("router", ("Write", "Describe"), (s.topic_outcomes, s.topic_deadletter, s.topic_certificates)),
        grant("router", ("All",), (s.app_id,)),
        grant("stats", ("Read", "Describe"), (s.topic_outcomes,), (s.stats_group,)),
        grant("stats", ("Describe",), (s.topic_tokens, s.topic_deadletter, s.topic_certificates)),
    ]
