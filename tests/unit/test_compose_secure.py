"""The secured compose deployment (deploy/compose.secure.yml over docker-compose.yml), checked
with the Compose-spec loader itself -- no Docker engine needed.

The loader: deploy/tools/compose-check, a small Go program on compose-go v2 (the library
`docker compose` uses), built with `go build` into ~/.cache/var/compose-check (override with
VAR_COMPOSE_CHECK_CACHE), one binary per hash of its sources, so it is rebuilt when they change.
Without Go, `docker compose config --format json` is used instead; with neither, the tests that
need the loader skip (the start-script tests still run).

The secrets: made by the project's generator (`var stack secrets --out DIR --namespace NS`) when
the CLI has it, else dummies with the same file names, in a temporary directory that the
compose files see through VAR_SECRETS_DIR.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.settings import Settings
from tests.unit.test_compose import METRICS_PORT, PROMETHEUS, interpolate, unknown_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SECURE = ROOT / "deploy" / "compose.secure.yml"
KAFKA_SCRIPT = ROOT / "deploy" / "secure" / "kafka-start.sh"
LOADER_SRC = ROOT / "deploy" / "tools" / "compose-check"
LOADER_CACHE = Path(os.environ.get("VAR_COMPOSE_CHECK_CACHE") or Path.home() / ".cache" / "var" / "compose-check")
OURS = ("router", "stats", "replay")
RUN_SECRETS = "/run/secrets/"

# The generator's layout (deploy/README.md, "Secured deployment").
SECRET_FILES = {
    "ca.pem", "server.pem", "server.key",
    "kafka-admin.password", "kafka-router.password", "kafka-stats.password",
    "redis-users.acl", "redis-admin.password", "redis-router.password", "redis-stats.password",
    "grafana-admin.password", "certificate.key",
}
KAFKA_USERS = {"admin", "router", "stats"}
EXPECTED_USERS = {"router": "router", "stats": "stats", "replay": "admin"}  # replay: an operator job


# --------------------------------------------------------------------------------------- loader

class LoaderError(Exception):
    """The loader rejected the files; ``str(err)`` is its message."""


def _go_loader() -> Path | None:
    go = shutil.which("go")
    if go is None:
        return None
    digest = hashlib.sha256()
    for name in ("main.go", "go.mod", "go.sum"):
        digest.update(name.encode() + b"\0" + (LOADER_SRC / name).read_bytes() + b"\0")
    binary = LOADER_CACHE / f"compose-check-{digest.hexdigest()[:16]}"
    if binary.exists():
        return binary
    LOADER_CACHE.mkdir(parents=True, exist_ok=True)
    partial = binary.with_name(f".{binary.name}.{os.getpid()}")
    result = subprocess.run([go, "build", "-trimpath", "-o", str(partial), "."], cwd=LOADER_SRC,
                            capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"go build of {LOADER_SRC} failed:\n{result.stderr[-4000:]}")
    os.replace(partial, binary)  # atomic: concurrent test runs never see half a binary
    for old in LOADER_CACHE.glob("compose-check-*"):
        if old != binary:
            old.unlink(missing_ok=True)
    return binary


def _docker_compose() -> list[str] | None:
    docker = shutil.which("docker")
    if docker is None:
        return None
    try:
        ok = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return [docker, "compose"] if ok else None


@pytest.fixture(scope="module")
def load():
    """``load(*files, env={})``: the project as the Compose-spec loader resolves it (every profile)."""
    go_error = None
    try:
        binary = _go_loader()
    except RuntimeError as err:
        binary, go_error = None, err
    docker = None if binary else _docker_compose()
    if binary is None and docker is None:
        if go_error:
            pytest.fail(str(go_error))
        pytest.skip("neither `docker compose` nor the Go toolchain (`go`, to build deploy/tools/compose-check) "
                    "is available: cannot run the Compose-spec loader")

    def run(*files: Path, env: dict[str, str] | None = None, profiles: tuple[str, ...] = ("*",)) -> dict:
        env = dict(env or {})
        if binary:
            args = [str(binary), "-project-dir", str(ROOT)]
            for key, value in sorted(env.items()):
                args += ["-e", f"{key}={value}"]
            for profile in profiles:
                args += ["-profile", profile]
            args += [str(f) for f in files]
            process_env = None
        else:
            args = [*docker, "--project-directory", str(ROOT)]
            for f in files:
                args += ["-f", str(f)]
            for profile in profiles:
                args += ["--profile", profile]
            args += ["config", "--format", "json"]
            keep = ("PATH", "HOME", "DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_CONTEXT")
            process_env = {k: v for k, v in os.environ.items() if k in keep} | env
        result = subprocess.run(args, capture_output=True, text=True, env=process_env, timeout=120)
        if result.returncode != 0:
            raise LoaderError(result.stderr.strip())
        return json.loads(result.stdout)

    return run


# -------------------------------------------------------------------------------------- secrets

def _dummy_secrets(out: Path, namespace: str) -> None:
    """The generator's file layout with throwaway content (no openssl needed)."""
    out.mkdir(parents=True)
    pem = "-----BEGIN {0}-----\nZHVtbXkgZm9yIHRlc3Rz\n-----END {0}-----\n"
    (out / "ca.pem").write_text(pem.format("CERTIFICATE"))
    (out / "server.pem").write_text(pem.format("CERTIFICATE"))
    (out / "server.key").write_text(pem.format("PRIVATE KEY"))
    acl = ["user default off"]
    for service in ("kafka", "redis"):
        for user in ("admin", "router", "stats"):
            password = secrets.token_urlsafe(24)
            (out / f"{service}-{user}.password").write_text(password + "\n")
            if service == "redis":
                keys = "~*" if user == "admin" else f"~var:{namespace}*"
                commands = "+@all" if user == "admin" else "+@all -@admin -@dangerous"
                acl.append(f"user {user} on #{hashlib.sha256(password.encode()).hexdigest()} {keys} {commands}")
    (out / "redis-users.acl").write_text("\n".join(acl) + "\n")
    (out / "grafana-admin.password").write_text(secrets.token_urlsafe(24) + "\n")
    (out / "certificate.key").write_text(secrets.token_hex(32) + "\n")


def _has_generator() -> bool:
    from pipeline.cli.main import build_parser

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            build_parser().parse_args(["stack", "secrets", "--out", "x", "--namespace", "default"])
    except SystemExit:
        return False
    return True


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("compose-secrets") / "secrets"
    if _has_generator():
        result = subprocess.run([sys.executable, "-m", "pipeline", "stack", "secrets", "--out", str(out),
                                 "--namespace", "default"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert result.returncode == 0, result.stderr[-2000:]
    else:  # the generator is being written on another branch
        _dummy_secrets(out, "default")
    return out


@pytest.fixture(scope="module")
def secure(load, secrets_dir) -> dict:
    return load(COMPOSE, SECURE, env={"VAR_SECRETS_DIR": str(secrets_dir)})


@pytest.fixture(scope="module")
def base(load) -> dict:
    return load(COMPOSE)


def mounted(project: dict, service: str) -> dict[str, Path]:
    """The secrets a service mounts: target path in the container -> file on the host."""
    out = {}
    for ref in project["services"][service].get("secrets") or []:
        target = ref.get("target") or ref["source"]
        target = target if target.startswith("/") else RUN_SECRETS + target
        out[target] = Path(project["secrets"][ref["source"]]["file"])
    return out


def read_secret(path: Path) -> str:
    return path.read_text().rstrip("\n")


# ---------------------------------------------------------------------------------- the loader

def test_loader_rejects_what_compose_rejects(load, tmp_path):
    bad = tmp_path / "compose.yml"
    bad.write_text("services:\n  a:\n    image: busybox:1.36\n    secrets: [nope]\n")
    with pytest.raises(LoaderError, match="nope"):
        load(bad)


def test_base_file_loads_without_any_variable(load, base):
    # No required variable: a plain `docker compose up` needs no environment (and none of the
    # secrets: Grafana's is used only with --profile monitoring).
    assert set(base["services"]) >= {"kafka", "redis", "router", "stats", "replay", "prometheus", "grafana"}
    assert set(load(COMPOSE, profiles=("",))["services"]) == {"kafka", "redis", "router", "stats"}


def test_secure_override_loads(secure):
    assert set(secure["services"]) >= {"kafka", "redis", "router", "stats", "replay", "prometheus", "grafana"}


# ------------------------------------------------------------------------------------ secrets

def test_secrets_directory_layout(secrets_dir):
    assert {p.name for p in secrets_dir.iterdir()} >= SECRET_FILES


def test_services_reference_only_declared_secrets_and_every_file_exists(secure, secrets_dir):
    declared = secure["secrets"]
    used = set()
    for name, service in secure["services"].items():
        for ref in service.get("secrets") or []:
            assert ref["source"] in declared, f"{name} uses the undeclared secret {ref['source']}"
            used.add(ref["source"])
    assert used == set(declared), f"declared but unused secrets: {sorted(set(declared) - used)}"
    files = set()
    for name, secret in declared.items():
        assert set(secret) <= {"name", "file"}, f"{name}: only file secrets (no external/environment)"
        path = Path(secret["file"])
        assert path.parent == secrets_dir, f"{name}: {path} is not in VAR_SECRETS_DIR"
        assert path.is_file() and path.stat().st_size, f"{name}: {path} is missing or empty"
        files.add(path.name)
    assert files == SECRET_FILES


def test_default_secrets_directory_is_git_ignored(load):
    project = load(COMPOSE, SECURE)
    for secret in project["secrets"].values():
        assert Path(secret["file"]).parent == ROOT / "deploy" / "secrets"
    ignore = (ROOT / "deploy" / "secrets" / ".gitignore").read_text().split()
    assert ignore == ["*", "!.gitignore"]
    if shutil.which("git") and (ROOT / ".git").exists():
        tracked = subprocess.run(["git", "ls-files", "deploy/secrets"], cwd=ROOT, capture_output=True, text=True)
        assert tracked.stdout.split() in ([], ["deploy/secrets/.gitignore"]), "never commit secrets"


def test_secret_paths_in_environments_are_mounted(secure):
    for name, service in secure["services"].items():
        targets = mounted(secure, name)
        for key, value in (service.get("environment") or {}).items():
            if value and str(value).startswith(RUN_SECRETS):
                assert value in targets, f"{name}: {key}={value} is not a secret the service mounts"


# ------------------------------------------------------------------------------- our services

def test_our_services_set_only_real_settings(secure):
    for name in OURS:
        unknown = unknown_settings(secure["services"][name]["environment"])
        assert not unknown, f"{name} sets environment variables that are not settings: {unknown}"


def test_our_services_use_tls_and_their_own_users(secure):
    for name, user in EXPECTED_USERS.items():
        env = secure["services"][name]["environment"]
        assert env["KAFKA_BOOTSTRAP"] == "kafka:9092"
        assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
        assert env["KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
        assert env["KAFKA_USERNAME"] == user and env["REDIS_USERNAME"] == user, name
        assert env["KAFKA_PASSWORD_FILE"] == f"{RUN_SECRETS}kafka_{user}_password", name
        assert env["REDIS_PASSWORD_FILE"] == f"{RUN_SECRETS}redis_{user}_password", name
        assert env["KAFKA_CA_FILE"] == env["REDIS_CA_FILE"] == f"{RUN_SECRETS}ca_cert", name
        assert env["REDIS_URL"].startswith("rediss://redis:6379/"), name
        assert not {"KAFKA_PASSWORD", "REDIS_PASSWORD", "VAR_CERTIFICATE_KEY"} & set(env), "secrets only as files"
    for name in ("router", "replay"):  # they sign / verify routing certificates
        assert secure["services"][name]["environment"]["VAR_CERTIFICATE_KEY_FILE"] == f"{RUN_SECRETS}certificate_key"


def test_our_services_settings_load(secure):
    # With the container paths mapped to the files compose would mount (the settings read
    # <ENV>_FILE once pipeline/settings.py has them; until then the names are ignored).
    loaded = {}
    for name in OURS:
        targets = mounted(secure, name)
        env = {k: str(targets.get(v, v)) for k, v in secure["services"][name]["environment"].items()}
        settings = Settings.load(env=env)
        assert settings.redis_url.startswith("rediss://redis:6379"), name
        if hasattr(settings, "kafka_security_protocol"):
            assert settings.kafka_security_protocol == "SASL_SSL", name
        loaded[name] = settings
    for field in ("router", "vocab_size", "namespace", "topic_tokens", "topic_outcomes", "partitions", "app_id"):
        assert len({getattr(s, field) for s in loaded.values()}) == 1, field


# ------------------------------------------------------------------------------------- metrics

@pytest.mark.parametrize("which", ["base", "secure"])
def test_no_metrics_port_is_published(which, request):
    project = request.getfixturevalue(which)
    published = {}
    for name, service in project["services"].items():
        for port in service.get("ports") or []:
            assert port.get("host_ip") == "127.0.0.1", f"{name} publishes {port} on every interface"
            published[int(port["published"])] = name
    assert published == {29092: "kafka", 16379: "redis", 9090: "prometheus", 3000: "grafana"}
    prometheus = yaml.safe_load(PROMETHEUS.read_text())
    scraped = {sd["port"] for job in prometheus["scrape_configs"] for sd in job.get("dns_sd_configs", [])}
    assert scraped == {METRICS_PORT}
    for name in ("router", "stats"):
        service = project["services"][name]
        assert not service.get("ports"), name
        assert service["expose"] == [str(METRICS_PORT)], name
        assert service["environment"]["VAR_METRICS_PORT"] == str(METRICS_PORT), name
        assert service["environment"]["VAR_METRICS_HOST"] == "0.0.0.0", f"{name}: Prometheus could not scrape it"


# ------------------------------------------------------------------------------------- grafana

@pytest.mark.parametrize("which", ["base", "secure"])
def test_grafana_has_no_default_password_and_no_anonymous_access(which, request):
    project = request.getfixturevalue(which)
    env = project["services"]["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert "GF_AUTH_ANONYMOUS_ORG_ROLE" not in env
    # Grafana refuses GF_SECURITY_ADMIN_PASSWORD together with its __FILE form.
    assert "GF_SECURITY_ADMIN_PASSWORD" not in env
    path = env["GF_SECURITY_ADMIN_PASSWORD__FILE"]
    assert mounted(project, "grafana")[path].name == "grafana-admin.password"
    for f in (COMPOSE, SECURE):  # no fallback password anywhere
        assert not re.search(r"GRAFANA_ADMIN_PASSWORD:?-", f.read_text()), f


# --------------------------------------------------------------------------------------- redis

def _opts(command: list[str]) -> dict[str, str]:
    return {command[i]: command[i + 1] for i in range(len(command) - 1) if command[i].startswith("--")}


def test_redis_listens_only_with_tls_and_loads_the_acl(secure, base):
    redis = secure["services"]["redis"]
    assert redis["command"][0] == "redis-server"
    opts = _opts(redis["command"])
    assert opts["--port"] == "0", "the plaintext port must be off"
    assert opts["--tls-port"] == "6379"
    targets = mounted(secure, "redis")
    for flag, name in (("--tls-cert-file", "server.pem"), ("--tls-key-file", "server.key"),
                       ("--tls-ca-cert-file", "ca.pem"), ("--aclfile", "redis-users.acl")):
        assert targets[opts[flag]].name == name, flag
    base_opts = _opts(base["services"]["redis"]["command"])
    for flag in ("--appendonly", "--appendfsync", "--save", "--maxmemory", "--maxmemory-policy"):
        assert opts[flag] == base_opts[flag], f"{flag}: the secured Redis must keep the base persistence"
    check = " ".join(redis["healthcheck"]["test"])
    assert "redis-cli --tls" in check and f"--cacert {RUN_SECRETS}ca_cert" in check and "--user admin" in check
    assert "REDISCLI_AUTH=" in check and " -a " not in check and "--pass" not in check
    assert f"{RUN_SECRETS}redis_admin_password" in targets


def test_redis_acl_has_the_users_of_our_services(secure):
    acl_file = mounted(secure, "redis")[f"{RUN_SECRETS}redis_acl"]
    users = {}
    for line in acl_file.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "user":
            users[parts[1]] = parts[2:]
    assert users["default"] == ["off"] or ("off" in users["default"] and "on" not in users["default"])
    for name, user in EXPECTED_USERS.items():
        rules = users[user]
        password = read_secret(mounted(secure, name)[f"{RUN_SECRETS}redis_{user}_password"])
        assert "on" in rules, user
        assert "#" + hashlib.sha256(password.encode()).hexdigest() in rules, f"{user}: hash != its password file"
        assert not any(r.startswith(">") for r in rules), f"{user}: clear-text password in the ACL file"
        assert any(r.startswith(("~", "%")) for r in rules), f"{user}: no key pattern"


# --------------------------------------------------------------------------------------- kafka

def _properties(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def _listeners(value: str) -> dict[str, tuple[str, int]]:
    out = {}
    for item in value.split(","):
        name, _, address = item.partition("://")
        host, _, port = address.rpartition(":")
        out[name] = (host, int(port))
    return out


class _ComposeYaml(yaml.SafeLoader):
    """PyYAML plus compose's ``!reset`` tag (as a marker)."""


_RESET = object()
_ComposeYaml.add_constructor("!reset", lambda loader, node: _RESET)


def _kafka_without_loader(secrets_dir: Path) -> tuple[dict[str, str], dict[str, Path]]:
    """The secured kafka service's environment and secrets, merged by hand from the two files
    (only what the start script needs; the loader, when there is one, is the reference)."""
    base = yaml.safe_load(COMPOSE.read_text())
    override = yaml.load(SECURE.read_text(), Loader=_ComposeYaml)
    env = {k: interpolate(v) for k, v in base["services"]["kafka"]["environment"].items()}
    for key, value in override["services"]["kafka"].get("environment", {}).items():
        if value is _RESET:
            env.pop(key, None)
        else:
            env[key] = interpolate(value)
    files = {}
    for name in override["services"]["kafka"]["secrets"]:
        path = override["secrets"][name]["file"]
        files[RUN_SECRETS + name] = secrets_dir / Path(path.replace("${VAR_SECRETS_DIR:-./deploy/secrets}", "")).name
    return env, files


@pytest.fixture(scope="module")
def kafka_service(request, secrets_dir) -> tuple[dict[str, str], dict[str, Path]]:
    """(environment, secrets: container path -> host file) of the secured kafka service."""
    try:
        project = request.getfixturevalue("secure")
    except pytest.skip.Exception:  # no loader here: the start script is tested all the same
        return _kafka_without_loader(secrets_dir)
    return project["services"]["kafka"]["environment"], mounted(project, "kafka")


@pytest.fixture
def kafka_run(kafka_service, tmp_path):
    """Run deploy/secure/kafka-start.sh as the kafka container would: its environment, its secrets
    (copied under their container names), a fake KAFKA_HOME whose tools record their arguments."""
    kafka_env, kafka_secrets = kafka_service
    run_secrets = tmp_path / "run-secrets"
    run_secrets.mkdir()
    for target, source in kafka_secrets.items():
        shutil.copy(source, run_secrets / Path(target).name)
    home = tmp_path / "kafka"
    (home / "bin").mkdir(parents=True)
    calls = tmp_path / "calls"
    calls.mkdir()
    for tool in ("kafka-storage.sh", "kafka-server-start.sh"):
        script = home / "bin" / tool
        script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{calls}/{tool}.args"\n'
                          f'[ -z "${{FAKE_FAIL:-}}" ] || {{ echo "bad arguments: $*" >&2; exit 3; }}\n'
                          'echo "Formatting the log directories"\n')
        script.chmod(0o755)
    conf = tmp_path / "conf"

    def run(**extra: str) -> subprocess.CompletedProcess:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **kafka_env,
               "KAFKA_HOME": str(home), "VAR_KAFKA_SECRETS_DIR": str(run_secrets), "VAR_KAFKA_CONFIG_DIR": str(conf),
               **extra}
        return subprocess.run(["sh", str(KAFKA_SCRIPT)], env=env, capture_output=True, text=True, timeout=60)

    run.secrets, run.conf, run.calls, run.env = run_secrets, conf, calls, kafka_env
    return run


def _kafka_passwords(run_secrets: Path) -> dict[str, str]:
    return {user: read_secret(run_secrets / f"kafka_{user}_password") for user in KAFKA_USERS}


def test_kafka_service_runs_the_start_script(secure):
    kafka = secure["services"]["kafka"]
    assert kafka["command"] == ["sh", "/opt/var-secure/kafka-start.sh"]
    mounts = {v["target"]: v for v in kafka["volumes"]}
    script = mounts["/opt/var-secure/kafka-start.sh"]
    assert script["type"] == "bind" and script.get("read_only") and Path(script["source"]) == KAFKA_SCRIPT
    # Its own volume: the SCRAM users exist only in storage formatted by the script.
    assert mounts["/var/lib/kafka/data"]["source"] == "kafka-secure-data"
    # Every image variable left is one the script reads; the base file's plaintext listeners are gone.
    text = KAFKA_SCRIPT.read_text()
    for key in kafka["environment"]:
        assert "${" + key in text, f"kafka: {key} is set but kafka-start.sh ignores it"
    assert not any("LISTENER" in key for key in kafka["environment"])


def test_kafka_script_writes_a_tls_only_broker_config(kafka_run):
    result = kafka_run(VAR_KAFKA_DRY_RUN="1")
    assert result.returncode == 0, result.stderr
    passwords = _kafka_passwords(kafka_run.secrets)
    for password in passwords.values():
        assert password not in result.stdout + result.stderr
    assert not (kafka_run.calls / "kafka-storage.sh.args").exists(), "a dry run formats nothing"
    props = _properties(kafka_run.conf / "server.properties")
    env = kafka_run.env

    listeners = _listeners(props["listeners"])
    protocols = dict(item.split(":") for item in props["listener.security.protocol.map"].split(","))
    controllers = set(props["controller.listener.names"].split(","))
    assert set(protocols) == set(listeners)
    for name, (host, _port) in listeners.items():
        if name in controllers:  # KRaft controller: plaintext, but reachable only in the container
            assert host == "127.0.0.1", "the controller listener must not be reachable from the network"
        else:
            assert protocols[name] == "SASL_SSL", f"listener {name} is {protocols[name]}: clients must use SASL_SSL"
    advertised = _listeners(props["advertised.listeners"])
    assert not set(advertised) & controllers
    assert advertised["SASL_SSL"] == ("kafka", 9092)  # what our services bootstrap from
    client_ports = {port for name, (_h, port) in listeners.items() if name not in controllers}
    assert {port for _h, port in advertised.values()} <= client_ports

    assert props["process.roles"] == "broker,controller"
    assert props["node.id"] == env["KAFKA_NODE_ID"]
    assert props["controller.quorum.voters"] == f"{env['KAFKA_NODE_ID']}@127.0.0.1:9093"
    assert props["inter.broker.listener.name"] == "SASL_SSL"
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert props["sasl.mechanism.inter.broker.protocol"] == "SCRAM-SHA-512"
    jaas = ('org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" '
            f'password="{passwords["admin"]}";')
    for name in listeners.keys() - controllers:
        assert props[f"listener.name.{name.lower()}.scram-sha-512.sasl.jaas.config"] == jaas, name
    assert props["ssl.keystore.type"] == props["ssl.truststore.type"] == "PEM"
    keystore = Path(props["ssl.keystore.location"]).read_text()
    assert "BEGIN PRIVATE KEY" in keystore and "BEGIN CERTIFICATE" in keystore
    assert props["ssl.truststore.location"] == str(kafka_run.secrets / "ca_cert")
    assert props["log.dirs"] == env["KAFKA_LOG_DIRS"] and props["num.partitions"] == env["KAFKA_NUM_PARTITIONS"]
    for key in ("offsets.topic.replication.factor", "transaction.state.log.replication.factor",
                "transaction.state.log.min.isr"):
        assert props[key] == "1", key

    # Private: the directory 0700, the files 0600 (they hold the admin password and the key).
    assert stat.S_IMODE(kafka_run.conf.stat().st_mode) == 0o700
    for path in kafka_run.conf.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name


def test_kafka_publishes_only_sasl_ssl_listeners(secure, kafka_run):
    # The base file's host port (127.0.0.1:29092) stays: it must be the SASL_SSL HOST listener.
    assert kafka_run(VAR_KAFKA_DRY_RUN="1").returncode == 0
    props = _properties(kafka_run.conf / "server.properties")
    protocols = dict(item.split(":") for item in props["listener.security.protocol.map"].split(","))
    by_port = {port: protocols[name] for name, (_h, port) in _listeners(props["listeners"]).items()}
    for port in secure["services"]["kafka"]["ports"]:
        assert by_port[port["target"]] == "SASL_SSL" and port["host_ip"] == "127.0.0.1", port
    assert "9093" not in [str(p.get("target")) for p in secure["services"]["kafka"]["ports"]]


def test_kafka_healthcheck_uses_the_admin_client_config(secure, kafka_run):
    check = " ".join(secure["services"]["kafka"]["healthcheck"]["test"])
    assert "kafka-broker-api-versions.sh --bootstrap-server localhost:9092" in check
    config = re.search(r"--command-config (\S+)", check).group(1)
    default_dir = re.search(r"VAR_KAFKA_CONFIG_DIR:-([^}]+)\}", KAFKA_SCRIPT.read_text()).group(1)
    assert config == f"{default_dir}/admin-client.properties"
    assert kafka_run(VAR_KAFKA_DRY_RUN="1").returncode == 0
    client = _properties(kafka_run.conf / Path(config).name)
    assert client["security.protocol"] == "SASL_SSL" and client["sasl.mechanism"] == "SCRAM-SHA-512"
    assert f'username="admin" password="{_kafka_passwords(kafka_run.secrets)["admin"]}"' in client["sasl.jaas.config"]
    assert client["ssl.truststore.type"] == "PEM"


def test_kafka_script_creates_the_scram_users_and_starts_the_broker(kafka_run):
    result = kafka_run()
    assert result.returncode == 0, result.stderr
    passwords = _kafka_passwords(kafka_run.secrets)
    for password in passwords.values():
        assert password not in result.stdout + result.stderr
    assert "Formatting" in result.stdout
    args = (kafka_run.calls / "kafka-storage.sh.args").read_text().splitlines()
    assert args[0] == "format" and "--ignore-formatted" in args
    assert args[args.index("-t") + 1] == kafka_run.env["CLUSTER_ID"]
    assert args[args.index("-c") + 1] == str(kafka_run.conf / "server.properties")
    scram = [args[i + 1] for i, a in enumerate(args) if a == "--add-scram"]
    assert sorted(scram) == sorted(f"SCRAM-SHA-512=[name={u},password={p}]" for u, p in passwords.items())
    start = (kafka_run.calls / "kafka-server-start.sh.args").read_text().splitlines()
    assert start == [str(kafka_run.conf / "server.properties")]
    assert not (kafka_run.conf / ".redact").exists()


def test_our_kafka_users_are_those_the_script_creates(secure, kafka_run):
    assert kafka_run().returncode == 0
    args = (kafka_run.calls / "kafka-storage.sh.args").read_text().splitlines()
    created = dict(re.fullmatch(r"SCRAM-SHA-512=\[name=([^,]+),password=(.+)\]", args[i + 1]).groups()
                   for i, a in enumerate(args) if a == "--add-scram")
    passwords = _kafka_passwords(kafka_run.secrets)
    assert created == passwords
    for name, user in EXPECTED_USERS.items():
        assert user in KAFKA_USERS
        service_password = mounted(secure, name)[secure["services"][name]["environment"]["KAFKA_PASSWORD_FILE"]]
        assert read_secret(service_password) == passwords[user], name


def test_kafka_script_never_shows_a_password_when_formatting_fails(kafka_run):
    result = kafka_run(FAKE_FAIL="1")
    assert result.returncode != 0
    assert "format failed (exit 3)" in result.stderr
    for password in _kafka_passwords(kafka_run.secrets).values():
        assert password not in result.stdout + result.stderr
    assert not (kafka_run.calls / "kafka-server-start.sh.args").exists()
    assert not (kafka_run.conf / ".redact").exists()


def test_kafka_script_refuses_missing_or_unsafe_secrets(kafka_run):
    (kafka_run.secrets / "kafka_stats_password").unlink()
    result = kafka_run(VAR_KAFKA_DRY_RUN="1")
    assert result.returncode != 0 and "kafka_stats_password is missing" in result.stderr
    unsafe = 'pa"ss word'
    (kafka_run.secrets / "kafka_stats_password").write_text(unsafe + "\n")
    result = kafka_run(VAR_KAFKA_DRY_RUN="1")
    assert result.returncode != 0 and "kafka_stats_password contains characters" in result.stderr
    assert unsafe not in result.stdout + result.stderr
    (kafka_run.secrets / "kafka_stats_password").write_text("ok-password\n")
    (kafka_run.secrets / "server_key").write_text("-----BEGIN ENCRYPTED PRIVATE KEY-----\nx\n")
    result = kafka_run(VAR_KAFKA_DRY_RUN="1")
    assert result.returncode != 0 and "PKCS#8" in result.stderr


def test_the_hand_merged_kafka_service_matches_the_loader(secure, secrets_dir):
    # The start-script tests fall back to _kafka_without_loader where no loader runs.
    env, files = _kafka_without_loader(secrets_dir)
    assert env == secure["services"]["kafka"]["environment"]
    assert files == mounted(secure, "kafka")
