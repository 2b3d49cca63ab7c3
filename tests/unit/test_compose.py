"""The deployment files, checked without Docker (no engine runs on the development machines).

docker-compose.yml: parses; every environment variable of OUR services (built from
deploy/Dockerfile) is a setting of pipeline/settings.py and its value is valid; images are
pinned; the router scales (no container name, no host port); no metrics port is published;
Grafana has no default password and no anonymous access; healthchecks, profiles and named
volumes exist. Plus the Dockerfile, the Prometheus config and the Grafana dashboard. The secured
override (deploy/compose.secure.yml) is checked with the Compose-spec loader in
test_compose_secure.py.
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from pipeline.settings import Settings, setting_fields

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = ROOT / "deploy" / "grafana"
METRICS_PORT = 9100

_INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def interpolate(value: object) -> str:
    """A compose value as the container sees it when the shell sets nothing: ``${X:-d}`` -> ``d``."""
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return _INTERPOLATION.sub(lambda m: m.group("default") or "", text)


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # ["KEY=value", ...] form
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: interpolate(value) for key, value in env.items()}


def setting_env_names() -> set[str]:
    return {f.metadata["env"] for f in setting_fields()}


def secret_setting_env_names() -> set[str]:
    """Secret settings (left out of the repr): each can also be read from a file, ``<ENV>_FILE``."""
    return {f.metadata["env"] for f in setting_fields() if f.metadata["secret"]}


def unknown_settings(env: dict[str, str]) -> list[str]:
    """The names in ``env`` that are neither a setting nor ``<secret setting>_FILE``."""
    names, secrets = setting_env_names(), secret_setting_env_names()
    return sorted(name for name in env
                  if name not in names and not (name.endswith("_FILE") and name[:-len("_FILE")] in secrets))


def ours(services: dict) -> dict[str, dict]:
    """Services built from our Dockerfile (the router, stats and replay at least)."""
    return {name: s for name, s in services.items()
            if "build" in s or str(s.get("image", "")).startswith("var-routing")}


def test_compose_parses_and_has_the_topology(services):
    for name in ("kafka", "redis", "router", "stats", "replay", "prometheus", "grafana"):
        assert name in services, name
    assert set(ours(services)) >= {"router", "stats", "replay"}
    assert not set(ours(services)) & {"kafka", "redis", "prometheus", "grafana"}


def test_our_services_set_only_real_settings(services):
    # Only services built from our image: their environment is read by pipeline.settings, so a
    # name that is not a setting would be silently ignored. The KAFKA_* / GF_* variables of the
    # kafka and grafana containers are those images' own configuration and are not checked here.
    for name, service in ours(services).items():
        env = environment(service)
        assert env, f"{name} sets no environment"
        unknown = unknown_settings(env)
        assert not unknown, f"{name} sets environment variables that are not settings: {unknown}"


def test_our_services_settings_values_are_valid(services):
    for name, service in ours(services).items():
        env = environment(service)
        settings = Settings.load(env=env)  # raises SettingsError on an invalid value
        assert settings.kafka_bootstrap == "kafka:9092", name
        assert settings.redis_url.startswith("redis://redis:6379"), name
        assert settings.vocab_size, f"{name}: router workers need VAR_VOCAB_SIZE"


def test_our_services_agree_on_router_topics_and_namespace(services):
    # The replay job publishes the table for, and reads the outcomes of, the running routers:
    # the router id (from these settings), topics, partitions and namespace must be identical.
    shared = ("router", "vocab_size", "hidden", "experts", "top_k", "context_window", "seed", "namespace",
              "topic_tokens", "topic_outcomes", "topic_deadletter", "partitions", "app_id", "kafka_bootstrap",
              "redis_url")
    loaded = {name: Settings.load(env=environment(s)) for name, s in ours(services).items()}
    reference = loaded["router"]
    for name, settings in loaded.items():
        for field in shared:
            assert getattr(settings, field) == getattr(reference, field), (name, field)


def test_workers_serve_metrics_on_the_scraped_port(services):
    for name in ("router", "stats"):
        assert Settings.load(env=environment(services[name])).metrics_port == METRICS_PORT, name


def test_metrics_are_not_published_on_the_host(services):
    # Workers serve metrics inside the compose network only: `expose`, never `ports`; they bind
    # every interface of the container (VAR_METRICS_HOST; the project default is 127.0.0.1) so
    # that Prometheus can scrape them.
    for name, service in ours(services).items():
        assert not service.get("ports"), f"{name} publishes ports: {service['ports']!r}"
    for name in ("router", "stats"):
        assert environment(services[name])["VAR_METRICS_HOST"] == "0.0.0.0", name
    for name, service in services.items():  # what is published, is published on 127.0.0.1 only
        for port in service.get("ports") or []:
            assert str(port).startswith("127.0.0.1:"), (name, port)
            assert str(METRICS_PORT) not in str(port).split(":")[1:2], (name, port)


def test_grafana_has_no_default_password_and_no_anonymous_access(compose, services):
    env = {k: str(v) for k, v in services["grafana"]["environment"].items()}
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert "GF_AUTH_ANONYMOUS_ORG_ROLE" not in env
    assert "GF_SECURITY_ADMIN_PASSWORD" not in env, "the password comes from a secret file, not a default"
    assert env["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
    assert services["grafana"]["secrets"] == ["grafana_admin_password"]
    assert compose["secrets"]["grafana_admin_password"]["file"].endswith("/grafana-admin.password")


def test_commands_parse_with_the_cli(services):
    from pipeline.cli.main import build_parser

    parser = build_parser()
    for name in ("router", "replay"):
        parser.parse_args([str(a) for a in services[name]["command"]])
    args = parser.parse_args([str(a) for a in services["replay"]["command"]])
    assert args.via == "kafka" and args.attach, "the replay job must use the running routers"
    stats_command = [str(a) for a in services["stats"]["command"]]
    assert stats_command[:2] == ["stats", "worker"]
    try:
        parser.parse_args(stats_command)
    except SystemExit:
        pytest.skip("`var stats worker` is not in the CLI yet")


def test_images_are_pinned(services):
    for name, service in services.items():
        image = service.get("image")
        assert image, f"{name} has no image"
        repo, _, tag = image.rpartition(":")
        assert repo and "/" not in tag, f"{name}: image {image!r} has no tag"
        assert tag not in ("latest", "") and re.search(r"\d", tag), f"{name}: image {image!r} is not pinned"
    assert services["kafka"]["image"] == "apache/kafka:3.9.2"


def test_router_can_scale(services):
    router = services["router"]
    assert "container_name" not in router
    for port in router.get("ports") or []:
        published = port.get("published") if isinstance(port, dict) else (str(port).split(":")[:-1] or None)
        assert not published, f"router publishes a host port ({port!r}): --scale would collide"
    assert "9100" in [str(p) for p in router.get("expose", [])]
    assert "hostname" not in router


def test_healthchecks(services):
    for name in ("kafka", "redis", "router", "stats"):
        check = services[name].get("healthcheck")
        assert check and check.get("test"), f"{name} has no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
    metrics_check = " ".join(services["router"]["healthcheck"]["test"])
    assert "python" in metrics_check and f"localhost:{METRICS_PORT}/metrics" in metrics_check
    assert "kafka-broker-api-versions.sh" in " ".join(services["kafka"]["healthcheck"]["test"])
    assert "redis-cli ping" in " ".join(services["redis"]["healthcheck"]["test"])


def test_workers_wait_for_healthy_backends(services):
    for name in ("router", "stats", "replay"):
        depends = services[name]["depends_on"]
        for backend in ("kafka", "redis"):
            assert depends[backend]["condition"] == "service_healthy", (name, backend)


def test_profiles(services):
    assert services["replay"]["profiles"] == ["replay"]
    assert services["prometheus"]["profiles"] == ["monitoring"]
    assert services["grafana"]["profiles"] == ["monitoring"]
    for name in ("kafka", "redis", "router", "stats"):
        assert "profiles" not in services[name], f"{name} must start with a plain `docker compose up`"


def test_kafka_is_kraft_single_node(services):
    env = {k: str(v) for k, v in services["kafka"]["environment"].items()}
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(env["KAFKA_NODE_ID"] + "@")
    for key in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
                "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"):
        assert env[key] == "1", key
    assert env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == "0"
    assert any(v.endswith(":" + env["KAFKA_LOG_DIRS"]) for v in services["kafka"]["volumes"])


def test_redis_memory_policy_and_persistence(services):
    command = services["redis"]["command"]
    args = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
    opts = {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("--")}
    assert re.fullmatch(r"\d+[kmg]b", opts["--maxmemory"])
    # volatile-*: only keys with a TTL (decision cache, superseded tables) may be evicted.
    assert opts["--maxmemory-policy"] == "volatile-lru"
    assert opts["--appendonly"] == "yes"
    assert any(str(v).endswith(":/data") for v in services["redis"]["volumes"])


def test_named_volumes_declared_and_used(compose, services):
    declared = set(compose.get("volumes") or {})
    used = set()
    for service in services.values():
        for volume in service.get("volumes") or []:
            source = volume.get("source") if isinstance(volume, dict) else str(volume).split(":")[0]
            if source and not source.startswith((".", "/", "~")):
                used.add(source)
    assert used <= declared, f"undeclared named volumes: {sorted(used - declared)}"
    assert declared <= used, f"declared but unused volumes: {sorted(declared - used)}"
    assert {"kafka-data", "redis-data"} <= declared


def test_bind_mounts_exist(services):
    for name, service in services.items():
        for volume in service.get("volumes") or []:
            source = str(volume).split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"


def _dockerfile_instructions() -> list[tuple[str, str]]:
    lines, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        current += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            keyword, _, rest = current.partition(" ")
            lines.append((keyword.upper(), rest.strip()))
            current = ""
    return lines


def test_dockerfile():
    instructions = _dockerfile_instructions()
    args = dict(rest.split("=", 1) for kw, rest in instructions if kw == "ARG" and "=" in rest)
    bases = [rest.split()[0].replace("${PYTHON_IMAGE}", args.get("PYTHON_IMAGE", "")) for kw, rest in instructions
             if kw == "FROM"]
    assert bases and all(re.fullmatch(r"python:3\.1[1-9][.\d]*-slim(-\w+)?", b) for b in bases), bases
    runs = " ".join(rest for kw, rest in instructions if kw == "RUN")
    assert "download.pytorch.org/whl/cpu" in runs and "torch" in runs
    users = [rest for kw, rest in instructions if kw == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    assert json.loads(dict(instructions)["ENTRYPOINT"]) == ["var"]
    assert json.loads(dict(instructions)["CMD"]) == ["worker"]
    for kw, rest in instructions:  # every COPY source from the build context exists
        if kw == "COPY" and "--from" not in rest:
            for source in rest.split()[:-1]:
                if "*" not in source:
                    assert (ROOT / source).exists(), f"COPY {source}: not in the repository"


def test_dockerignore_keeps_the_build_inputs():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".var"} <= ignored
    assert not ignored & {"pipeline", "workers", "pyproject.toml", "README.md", "deploy", "deploy/Dockerfile"}


def test_prometheus_scrapes_every_router_replica_and_stats():
    config = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for name in ("router", "stats"):
        sd = jobs[name]["dns_sd_configs"][0]
        assert sd["names"] == [name] and sd["type"] == "A" and sd["port"] == METRICS_PORT, name


def _router_metric_names() -> set[str]:
    from pipeline.observability import RouterMetrics

    suffixes = {"counter": ("_total", "_created"), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count", "_created")}
    names = set()
    for family in RouterMetrics("test").registry.collect():
        names.update(family.name + s for s in suffixes[family.type])
    return names


def test_grafana_provisioning_and_dashboard_queries_known_metrics():
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = datasources["datasources"][0]["uid"]
    assert datasources["datasources"][0]["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "var.yml").read_text())
    assert providers["providers"][0]["options"]["path"] == "/etc/grafana/dashboards"
    dashboard = json.loads((GRAFANA / "dashboards" / "var.json").read_text())
    known = _router_metric_names()
    queried = set()
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == uid
            queried.update(re.findall(r"\bvar_[a-z0-9_]+", target["expr"]))
    # Only router metrics are asserted; the stats worker's own metrics are not on the dashboard.
    assert queried, "the dashboard queries no var_ metrics"
    assert not queried - known, f"dashboard queries unknown metrics: {sorted(queried - known)}"
    for wanted in ("var_decisions_total", "var_route_batch_seconds_bucket", "var_cache_hit_rate",
                   "var_table_version", "var_redis_degraded_total", "var_consumer_lag"):
        assert wanted in queried, wanted
