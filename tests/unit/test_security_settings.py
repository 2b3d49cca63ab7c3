"""Security settings and clients without services: secrets from files, never printed; the Kafka and
Redis client options; the role credentials of local workers; the secrets generator and the ACL."""
from __future__ import annotations

import ssl
import stat
import subprocess
from pathlib import Path

import pytest

from pipeline.cli.main import main
from pipeline.settings import Settings, SettingsError, redact_url, secret_fields
from pipeline.stack.secure import (ROLES, generate, kafka_acls, read_env_file, scram_format_args, secure_broker_config,
                                   write_env_files)
from pipeline.stack.kafka_broker import render_config
from pipeline.stores.keys import acl_key_selectors
from pipeline.stores.redis_access import RedisAccess
from pipeline.stream.kafka_access import KafkaAccess
from pipeline.stream.worker_pool import worker_env


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("secrets") / "s", "ns").root


def test_secret_settings_come_from_files_and_never_from_both(tmp_path):
    (tmp_path / "pw").write_text("s3cret-value\n")
    loaded = Settings.load(env={"KAFKA_PASSWORD_FILE": str(tmp_path / "pw")})
    assert loaded.kafka_password == "s3cret-value"
    with pytest.raises(SettingsError, match="not both"):
        Settings.load(env={"KAFKA_PASSWORD_FILE": str(tmp_path / "pw"), "KAFKA_PASSWORD": "x"})
    with pytest.raises(SettingsError, match="cannot read") as missing:
        Settings.load(env={"REDIS_PASSWORD_FILE": str(tmp_path / "nope")})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(SettingsError, match="empty"):
        Settings.load(env={"VAR_CERTIFICATE_KEY_FILE": str(tmp_path / "empty")})
    assert "nope" in str(missing.value)
    assert {"kafka_password", "redis_password", "certificate_key"} <= set(secret_fields())


def test_invalid_security_settings_fail_in_one_line_without_the_secret(tmp_path):
    with pytest.raises(SettingsError, match="needs KAFKA_USERNAME"):
        Settings.load(env={"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_PASSWORD": "pw"})
    with pytest.raises(SettingsError, match="must be one of"):
        Settings.load(env={"KAFKA_SECURITY_PROTOCOL": "TLS"})
    with pytest.raises(SettingsError, match="no such readable file"):
        Settings.load(env={"KAFKA_CA_FILE": str(tmp_path / "missing.pem")})
    with pytest.raises(SettingsError, match="go together"):
        Settings.load(env={"REDIS_CERT_FILE": __file__})
    with pytest.raises(SettingsError) as bad:
        Settings.load(env={"VAR_BUDGET": "2", "REDIS_URL": "redis://u:hunter2@h:1/0"})
    assert "hunter2" not in str(bad.value)


def test_repr_and_config_never_show_secrets(capsys, monkeypatch):
    env = {"KAFKA_PASSWORD": "kafka-pw-1", "REDIS_PASSWORD": "redis-pw-2", "VAR_CERTIFICATE_KEY": "hmac-3",
           "REDIS_URL": "rediss://router:url-pw-4@redis:6379/0"}
    settings = Settings.load(env=env)
    for secret in ("kafka-pw-1", "redis-pw-2", "hmac-3", "url-pw-4"):
        assert secret not in repr(settings)
    assert "rediss://router:***@redis:6379/0" in repr(settings)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for argv in (["config"], ["config", "--json"]):
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert "<set>" in out and not any(s in out for s in ("kafka-pw-1", "redis-pw-2", "hmac-3", "url-pw-4"))
    assert redact_url("x redis://:pw@h/0 and kafka://u:p@b") == "x redis://:***@h/0 and kafka://u:***@b"


def test_kafka_access_options_for_each_protocol(secrets_dir):
    plain = KafkaAccess("127.0.0.1:9092")
    assert plain.options() == {"bootstrap_servers": "127.0.0.1:9092", "security_protocol": "PLAINTEXT"}
    assert plain.faust_options() == {}
    sasl = KafkaAccess("b:9093", "SASL_SSL", "SCRAM-SHA-512", "router", "pw-x", str(secrets_dir / "ca.pem"))
    options = sasl.options(group_id=None)
    assert options["security_protocol"] == "SASL_SSL" and options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "router" and options["sasl_plain_password"] == "pw-x"
    assert isinstance(options["ssl_context"], ssl.SSLContext) and options["ssl_context"].check_hostname
    assert "group_id" in options and "pw-x" not in repr(sasl)
    credentials = sasl.faust_options()["broker_credentials"]
    assert credentials.mechanism.value == "SCRAM-SHA-512" and credentials.protocol.value == "SASL_SSL"
    assert "pw-x" not in repr(credentials)
    assert "sasl_mechanism" not in KafkaAccess("b", "SSL").options()
    assert KafkaAccess("b", "SASL_PLAINTEXT", username="u", password="p").options().get("ssl_context") is None


def test_redis_access_options_and_display():
    tls = RedisAccess("rediss://redis:6379/0", "router", "pw-y", "/ca.pem")
    options = tls.options(2.0)
    assert options["username"] == "router" and options["password"] == "pw-y"
    assert options["ssl_ca_certs"] == "/ca.pem" and options["ssl_cert_reqs"] == "required"
    assert "pw-y" not in repr(tls)
    plain = RedisAccess("redis://u:pw-z@h:1/0")
    assert "ssl_ca_certs" not in plain.options(1.0) and plain.display == "redis://u:***@h:1/0"
    assert "pw-z" not in repr(plain)


def test_generated_secrets_are_private_stable_and_signed(secrets_dir, tmp_path):
    before = {p.name: p.read_text() for p in secrets_dir.iterdir()}
    generate(secrets_dir, "ns")  # again: nothing changes
    assert {p.name: p.read_text() for p in secrets_dir.iterdir()} == before
    assert stat.S_IMODE(secrets_dir.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in secrets_dir.iterdir())
    text = subprocess.run(["openssl", "x509", "-in", str(secrets_dir / "server.pem"), "-noout", "-text"],
                          capture_output=True, text=True, check=True).stdout
    assert all(name in text for name in ("DNS:localhost", "IP Address:127.0.0.1", "DNS:kafka", "DNS:redis"))
    subprocess.run(["openssl", "verify", "-CAfile", str(secrets_dir / "ca.pem"), str(secrets_dir / "server.pem")],
                   check=True, capture_output=True)
    assert (secrets_dir / "server.key").read_text().startswith("-----BEGIN PRIVATE KEY-----")
    acl = (secrets_dir / "redis-users.acl").read_text()
    assert acl.startswith("user default off\n")
    assert not any((secrets_dir / f"redis-{r}.password").read_text().strip() in acl for r in ROLES)


def test_acl_selectors_follow_the_key_schema():
    router = acl_key_selectors("ns", "router")
    assert "%RW~var:ns:dc:*" in router and "%R~var:ns:fp:*" in router and "%RW~var:ns-*:dc:*" in router
    assert not any(s.startswith("%RW~") and ":fp:" in s for s in router)
    stats = acl_key_selectors("ns", "stats")
    assert "%RW~var:ns:fp:*" in stats and not any(":dc:" in s for s in stats)


def test_secure_broker_config_has_no_plaintext_client_listener(secrets_dir, tmp_path):
    secrets = generate(secrets_dir, "ns")
    text = secure_broker_config(render_config(19092, 19093, tmp_path), secrets, 19092)
    props = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    assert props["listeners"] == "SASL_SSL://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "SASL_SSL://127.0.0.1:19092"
    assert props["listener.security.protocol.map"] == "CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL"
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512" and props["ssl.keystore.type"] == "PEM"
    assert props["authorizer.class.name"].endswith("StandardAuthorizer")
    assert props["allow.everyone.if.no.acl.found"] == "false"
    args = scram_format_args(secrets)
    assert [a.split("name=")[1].split(",")[0] for a in args if a.startswith("SCRAM")] == list(ROLES)


def test_local_workers_log_in_with_their_own_role(secrets_dir):
    write_env_files(generate(secrets_dir, "ns"), "127.0.0.1:1", "rediss://127.0.0.1:2/0", "ns")
    admin = read_env_file(secrets_dir / "admin.env")
    settings = Settings.load(env=admin)
    assert settings.kafka_username == "admin" and settings.role_env_dir == str(secrets_dir)
    router = worker_env(settings, "router-0", "router")
    stats = worker_env(settings, "stats", "stats")
    assert router["KAFKA_USERNAME"] == router["REDIS_USERNAME"] == "router"
    assert stats["KAFKA_USERNAME"] == stats["REDIS_USERNAME"] == "stats"
    # the operator's password values are replaced by the role's files, not passed alongside
    assert "KAFKA_PASSWORD" not in router and router["KAFKA_PASSWORD_FILE"].endswith("kafka-router.password")
    assert Settings.load(env=router).kafka_password == (secrets_dir / "kafka-router.password").read_text().strip()
    assert Settings.load(env=stats).redis_username == "stats"
    assert router["VAR_NAMESPACE"] == "ns"  # the run's settings, not overwritten by the login


def test_kafka_acls_grant_each_role_its_topics_and_groups_by_prefix():
    settings = Settings.load(env={})
    acls = [" ".join(a) for a in kafka_acls(settings)]
    assert all(a.endswith("--resource-pattern-type prefixed") for a in acls)
    router = [a for a in acls if "User:router" in a]
    stats = [a for a in acls if "User:stats" in a]
    assert any("--operation Read" in a and "--topic var-tokens" in a and "--group var-router" in a for a in router)
    assert any("--operation Write" in a and "--topic var-outcomes" in a for a in router)
    assert not any("--operation Write" in a and "var-tokens" in a for a in router)
    assert any("--operation Read" in a and "--topic var-outcomes" in a and "--group var-stats" in a for a in stats)
    assert not any("Write" in a or "All" in a for a in stats)
    assert not any("User:admin" in a for a in acls)  # a super user
