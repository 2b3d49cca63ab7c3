"""One settings object for the CLI, the workers, docker compose and the tests.

Every setting has a default, an environment variable and (usually) a command-line flag, all
declared once on the :class:`Settings` dataclass. Precedence: flag > environment > default.
Invalid values fail at start-up with one line naming where the value came from, e.g.
``invalid VAR_BUDGET='1.5': must be within [0, 1]``.

Every setting also names the :data:`GROUPS` it belongs to (what it configures: the learned
router, the engine, a router worker, ...). A ``var`` subcommand asks for the groups of what it
runs (``pipeline.cli.common.add_settings``), so a new setting gets a flag in every command that
uses its group.

The README's configuration table is generated from the same declarations
(``var config --markdown``) and a test keeps the two in sync.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass
from typing import Any, Mapping

from pipeline.settings_checks import KAFKA_PROTOCOLS, SASL_MECHANISMS, Check, SettingsError as SettingsError, \
    at_least, check_security, readable_file, redact_url as redact_url, router_choice, secret_from_file, \
    validated, within

GROUPS: dict[str, str] = {
    "routing": "the learned router",
    "engine": "what routes: decision cache, fast path, budget governor, audits, batches",
    "budgeting": "the learned-router budget a run is held to (and checked against)",
    "tables": "building and publishing fast-path tables (offline phase, stats worker)",
    "replay": "the replay's offline split and quality checks",
    "kafka": "Kafka: where it is and how to log in",
    "redis": "Redis: where it is, how to log in, the key namespace",
    "services": "the addresses of Kafka and Redis (a local stack sets its own)",
    "security": "credentials and keys (environment only, no flags)",
    "topics": "the pipeline's topics",
    "router_worker": "a router worker",
    "stats_worker": "the stats worker",
    "process": "logging and metrics of any worker process",
    "instance": "one worker process's name and metrics port (a fleet sets them per worker)",
}


def _setting(default: Any, env: str, help: str, check: Check | None = None,
             choices: tuple[str, ...] | None = None, flag: str | None = None, secret: bool = False,
             groups: str = "") -> Any:
    """Declare a setting: env var, help text, validation; ``flag=""`` means no CLI flag;
    ``secret``: left out of the settings' repr (and so of logs and test reports), masked by
    ``var config``, never a flag, and also read from the file named by ``<ENV>_FILE``;
    ``groups``: the space-separated :data:`GROUPS` it belongs to."""
    unknown = [g for g in groups.split() if g not in GROUPS]
    if unknown or not groups:
        raise ValueError(f"setting {env}: unknown or no groups {unknown}")
    meta = {"env": env, "help": help, "check": check, "choices": choices, "flag": "" if secret else flag,
            "secret": secret, "groups": tuple(groups.split())}
    return dataclasses.field(default=default, metadata=meta, repr=not secret)


@dataclass(frozen=True)
class Settings:
    """Resolved settings. See ``var config`` or the README table for every field."""

    # --- learned router ---
    router: str = _setting("context", "VAR_ROUTER", "learned router: model (every MoE layer of the bundled LM), "
                           "model:PATH (a checkpoint), or the synthetic context (receptive field = context_window) "
                           "or seed", router_choice, groups="routing")
    vocab_size: int | None = _setting(None, "VAR_VOCAB_SIZE", "vocabulary size (default: inferred from the corpus)",
                                      at_least(1), groups="routing")
    hidden: int = _setting(128, "VAR_HIDDEN", "router hidden size (seed size 128, large 4096)", at_least(1),
                           groups="routing")
    experts: int = _setting(8, "VAR_EXPERTS", "number of experts E (seed size 8, large 64)", at_least(1),
                            groups="routing")
    top_k: int = _setting(2, "VAR_TOP_K", "experts per token", at_least(1), groups="routing")
    context_window: int = _setting(4, "VAR_CONTEXT_WINDOW", "context window W: the router sees the token and the "
                                   "W-1 before it", at_least(1), groups="routing")
    seed: int = _setting(0, "VAR_SEED", "seed of the router weights, synthetic corpora and the quality probe",
                         at_least(0), groups="routing")
    device: str = _setting("cpu", "VAR_DEVICE", "torch device of the learned router (cpu, cuda)", groups="routing")
    # --- decision cache ---
    cache_ttl_s: float = _setting(60.0, "VAR_CACHE_TTL_S", "decision-cache TTL in seconds", at_least(0.001),
                                  groups="engine")
    cache_size: int = _setting(1000, "VAR_CACHE_SIZE", "in-memory decision-cache capacity (LRU entries)",
                               at_least(1), groups="engine")
    cache_min_confidence: float = _setting(0.8, "VAR_CACHE_MIN_CONFIDENCE", "cache only learned decisions at least "
                                           "this confident", within(0, 1), groups="engine")
    cache_scope: str = _setting("all", "VAR_CACHE_SCOPE", "tokens that look the cache up: all (cache before fast "
                                "path) or misses (only tokens the fast path does not serve; fewer Redis keys)",
                                choices=("all", "misses"), groups="engine")
    # --- fast path ---
    min_frequency: float = _setting(50.0, "VAR_MIN_FREQUENCY", "fast path: token frequency must exceed this",
                                    at_least(0), groups="engine tables")
    max_entropy: float = _setting(0.5, "VAR_MAX_ENTROPY", "fast path: mean routing entropy (nats) must be below "
                                  "this", at_least(0), groups="engine tables")
    static_below: int = _setting(10, "VAR_STATIC_BELOW", "fast path: token ids below this are always eligible "
                                 "(once seen)", at_least(0), groups="engine tables")
    pair_min_count: float = _setting(3.0, "VAR_PAIR_MIN_COUNT", "fast path: a (previous token, token) pair gets its "
                                     "own entry after this many learned observations (else: the token's)",
                                     at_least(1), groups="engine tables")
    pair_max_entropy: float = _setting(0.5, "VAR_PAIR_MAX_ENTROPY", "fast path: a pair entry is served if its mean "
                                       "routing entropy (nats) is below this", at_least(0), groups="engine tables")
    pair_cap: int = _setting(65536, "VAR_PAIR_CAP", "fast path: at most this many pair entries per layer (the most "
                             "traffic first; statistics keep twice as many; 0: token entries only)", at_least(0),
                             groups="engine tables")
    table_file: str | None = _setting(None, "VAR_TABLE_FILE", "fast-path table file to use instead of an offline "
                                      "phase", groups="engine")
    # --- budget governor ---
    budget: float = _setting(0.15, "VAR_BUDGET", "learned-router budget: max share of decisions per budget window",
                             within(0, 1), groups="engine budgeting")
    budget_window: int = _setting(1000, "VAR_BUDGET_WINDOW", "decisions per budget window", at_least(1),
                                  groups="engine budgeting")
    budget_split: str = _setting("even", "VAR_BUDGET_SPLIT", "a model's learned budget per layer: even (every layer "
                                 "gets --budget) or error (layers x --budget split by each layer's measured "
                                 "fast-path error, each layer capped at --budget-layer-max)", choices=("even", "error"),
                                 groups="engine budgeting")
    budget_layer_max: float = _setting(0.3, "VAR_BUDGET_LAYER_MAX", "with --budget-split error: the hard cap of any "
                                       "one layer's budget", within(0, 1), groups="engine budgeting")
    governor: bool = _setting(True, "VAR_GOVERNOR", "enforce the budget (--no-governor: off, for comparison)",
                              groups="engine")
    audit_rate: float = _setting(0.01, "VAR_AUDIT_RATE", "live audits: share of fast-path and fallback decisions "
                                 "(hash-selected) also routed by the learned router; counts against the budget",
                                 within(0, 1), groups="engine budgeting")
    audit_min_agreement: float = _setting(0.5, "VAR_AUDIT_MIN_AGREEMENT", "stats worker: drop a token's fast-path "
                                          "entry when its audited top-k agreement falls below this", within(0, 1),
                                          groups="tables")
    # --- replay ---
    batch_size: int = _setting(1024, "VAR_BATCH_SIZE", "tokens per micro-batch", at_least(1), groups="engine")
    train_fraction: float = _setting(0.3, "VAR_TRAIN_FRACTION", "share of a corpus used by the offline phase",
                                     within(0, 0.95), groups="replay")
    quality_sample: int = _setting(50000, "VAR_QUALITY_SAMPLE", "events used by the MoE-layer quality probe",
                                   at_least(100), groups="replay")
    quality_bound_pct: float = _setting(1.0, "VAR_QUALITY_BOUND_PCT", "quality_preserved: model perplexity may rise "
                                        "at most this many percent over exact routing", at_least(0), groups="replay")
    # --- services ---
    kafka_bootstrap: str = _setting("127.0.0.1:9092", "KAFKA_BOOTSTRAP", "Kafka bootstrap servers (host:port,...)",
                                    groups="kafka services")
    redis_url: str = _setting("redis://127.0.0.1:6379/0", "REDIS_URL", "Redis URL for the shared cache and tables",
                              groups="redis services")
    namespace: str = _setting("default", "VAR_NAMESPACE", "Redis key namespace (isolates deployments and replays)",
                              groups="redis")
    redis_timeout_s: float = _setting(0.5, "VAR_REDIS_TIMEOUT_S", "Redis socket timeout; slower calls count as an "
                                      "outage", at_least(0.01), groups="redis")
    # --- security (README "Security"; every client of Kafka and Redis applies these) ---
    kafka_security_protocol: str = _setting("PLAINTEXT", "KAFKA_SECURITY_PROTOCOL", "Kafka security protocol",
                                            choices=KAFKA_PROTOCOLS, flag="", groups="kafka security")
    kafka_sasl_mechanism: str = _setting("SCRAM-SHA-512", "KAFKA_SASL_MECHANISM", "Kafka SASL mechanism "
                                         "(with SASL_PLAINTEXT or SASL_SSL)", choices=SASL_MECHANISMS, flag="",
                                         groups="kafka security")
    kafka_username: str | None = _setting(None, "KAFKA_USERNAME", "Kafka SASL user", flag="",
                                          groups="kafka security")
    kafka_password: str | None = _setting(None, "KAFKA_PASSWORD", "Kafka SASL password (or KAFKA_PASSWORD_FILE; "
                                          "never logged)", flag="", secret=True, groups="kafka security")
    kafka_ca_file: str | None = _setting(None, "KAFKA_CA_FILE", "CA certificate (PEM) that signed the brokers' "
                                         "certificates (SSL, SASL_SSL; default: the system's)",
                                         readable_file, flag="", groups="kafka security")
    kafka_cert_file: str | None = _setting(None, "KAFKA_CERT_FILE", "client certificate (PEM) for brokers that "
                                           "ask for one", readable_file, flag="", groups="kafka security")
    kafka_key_file: str | None = _setting(None, "KAFKA_KEY_FILE", "private key (PEM) of KAFKA_CERT_FILE",
                                          readable_file, flag="", groups="kafka security")
    redis_username: str | None = _setting(None, "REDIS_USERNAME", "Redis ACL user (or the user in REDIS_URL)",
                                          flag="", groups="redis security")
    redis_password: str | None = _setting(None, "REDIS_PASSWORD", "Redis password (or REDIS_PASSWORD_FILE, or in "
                                          "REDIS_URL; never logged)", flag="", secret=True, groups="redis security")
    redis_ca_file: str | None = _setting(None, "REDIS_CA_FILE", "CA certificate (PEM) of the Redis server's "
                                         "certificate (with a rediss:// URL; default: the system's)",
                                         readable_file, flag="", groups="redis security")
    redis_cert_file: str | None = _setting(None, "REDIS_CERT_FILE", "client certificate (PEM) for a Redis server "
                                           "that asks for one", readable_file, flag="", groups="redis security")
    redis_key_file: str | None = _setting(None, "REDIS_KEY_FILE", "private key (PEM) of REDIS_CERT_FILE",
                                          readable_file, flag="", groups="redis security")
    role_env_dir: str | None = _setting(None, "VAR_ROLE_ENV_DIR", "directory with router.env and stats.env: the "
                                        "credentials of the workers that replay, chaos and stack start locally "
                                        "(`var stack up --secure` writes one)", flag="", groups="security")
    # --- streaming pipeline ---
    topic_tokens: str = _setting("var-tokens", "VAR_TOPIC_TOKENS", "topic of token events (key = stream id)",
                                 groups="topics")
    topic_outcomes: str = _setting("var-outcomes", "VAR_TOPIC_OUTCOMES", "topic of routing outcomes", groups="topics")
    topic_deadletter: str = _setting("var-deadletter", "VAR_TOPIC_DEADLETTER", "topic of rejected messages",
                                     groups="topics")
    topic_certificates: str = _setting("var-certificates", "VAR_TOPIC_CERTIFICATES", "topic of window "
                                       "certificates (one per budget window of decisions per worker and layer)",
                                       groups="topics")
    certificate_key: str | None = _setting(None, "VAR_CERTIFICATE_KEY", "secret HMAC key that makes certificates "
                                           "tamper-evident (never logged; verify needs the same key)", flag="",
                                           secret=True, groups="security")
    table_archive_ttl_s: float = _setting(7 * 86400.0, "VAR_TABLE_ARCHIVE_TTL_S", "keep superseded table sets "
                                          "in Redis this long for verification", at_least(1), groups="tables")
    partitions: int = _setting(4, "VAR_PARTITIONS", "partitions of the token topic (and of the context-window "
                               "table)", at_least(1), groups="topics")
    router_mode: str = _setting("var", "VAR_ROUTER_MODE", "router worker: var, learned (always the learned "
                                "router; a baseline) or passthrough (forward only; the framework ceiling)",
                                choices=("var", "learned", "passthrough"), groups="router_worker")
    outcome_records: str = _setting("stream", "VAR_OUTCOME_RECORDS", "router: one outcome record per stream "
                                    "and batch (stream; fewest sends) or one per token message (message)",
                                    choices=("stream", "message"), groups="router_worker")
    intake: str = _setting("batched", "VAR_INTAKE", "router: how messages reach the agent -- batched (one "
                           "flow wait per fetched batch, micro-batches from the channel queue) or faust "
                           "(Faust's wait per message and Stream.take_events; slower, for comparison)",
                           choices=("batched", "faust"), groups="router_worker")
    app_id: str = _setting("var-router", "VAR_APP_ID", "Faust app id = consumer group of the router workers",
                           groups="router_worker")
    take_max: int = _setting(1024, "VAR_TAKE_MAX", "router micro-batch: at most this many messages per batch",
                             at_least(1), groups="router_worker stats_worker")
    take_within_s: float = _setting(0.01, "VAR_TAKE_WITHIN_S", "micro-batch: a worker that found no message waiting "
                                    "gathers for this many seconds after the next one arrives; one that is behind "
                                    "takes what is queued at once",
                                    at_least(0.001), groups="router_worker stats_worker")
    stream_idle_s: float = _setting(600.0, "VAR_STREAM_IDLE_S", "router: forget a stream's context window (changelog "
                                    "tombstone) after this many seconds without an event", at_least(1),
                                    groups="router_worker")
    commit_interval_s: float = _setting(1.0, "VAR_COMMIT_INTERVAL_S", "router: commit the routed offset frontier "
                                        "this often (after flushing outcomes and context windows)", at_least(0.05),
                                        groups="router_worker")
    replication_factor: int = _setting(1, "VAR_REPLICATION_FACTOR", "replication factor of the topics the "
                                       "pipeline creates (3 on a 3-broker cluster)", at_least(1), groups="topics")
    worker_name: str | None = _setting(None, "VAR_WORKER_NAME", "worker name in outcomes and logs (default "
                                       "host-pid)", groups="instance")
    metrics_port: int = _setting(0, "VAR_METRICS_PORT", "Prometheus metrics HTTP port of a worker (0 = off)",
                                 at_least(0), groups="instance")
    metrics_host: str = _setting("127.0.0.1", "VAR_METRICS_HOST", "address the metrics endpoint binds to "
                                 "(0.0.0.0 in containers, so Prometheus can reach it)", groups="process")
    log_format: str = _setting("text", "VAR_LOG_FORMAT", "worker log format", choices=("text", "json"),
                               groups="process")
    # --- stats refresher (workers/) ---
    stats_group: str = _setting("var-stats", "VAR_STATS_GROUP", "consumer group of the stats refresher worker",
                                groups="stats_worker")
    refresh_every: int = _setting(20000, "VAR_REFRESH_EVERY", "stats worker: publish a new table after N outcomes",
                                  at_least(1), groups="stats_worker")
    refresh_interval_s: float = _setting(10.0, "VAR_REFRESH_INTERVAL_S", "stats worker: or after T seconds (when "
                                         "anything changed)", at_least(0.1), groups="stats_worker")
    stats_decay: float = _setting(1.0, "VAR_STATS_DECAY", "multiply statistics by this at every refresh (1 = never "
                                  "forget)", within(0.01, 1), groups="stats_worker")
    table_grace_s: float = _setting(300.0, "VAR_TABLE_GRACE_S", "superseded table versions expire after this long",
                                    at_least(1), groups="tables")
    adaptive: bool = _setting(False, "VAR_ADAPTIVE", "choose fast-path thresholds from the statistics to meet "
                              "--adaptive-target", groups="tables")
    adaptive_target: float = _setting(0.10, "VAR_ADAPTIVE_TARGET", "learned-router share the adaptive thresholds "
                                      "aim for", within(0, 1), groups="tables")
    log_level: str = _setting("warning", "VAR_LOG_LEVEL", "worker log level",
                              choices=("debug", "info", "warning", "error"), groups="process")
    session_timeout_s: float = _setting(10.0, "VAR_SESSION_TIMEOUT_S", "Kafka consumer session timeout (how fast a "
                                        "dead worker is noticed)", at_least(1), groups="router_worker")

    def __repr__(self) -> str:
        """Like the dataclass repr, without secrets: secret fields left out, URL passwords masked."""
        shown = (f"{f.name}={redact_url(repr(getattr(self, f.name)))}" for f in dataclasses.fields(self)
                 if not f.metadata["secret"])
        return f"Settings({', '.join(shown)})"

    def with_(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, cli: Mapping[str, Any] | None = None) -> "Settings":
        """Resolve every field: ``cli`` (non-None values) > ``env`` (non-empty) > default; validate."""
        env = os.environ if env is None else env
        cli = cli or {}
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            source, raw = "default", f.default
            if env.get(f.metadata["env"]) not in (None, ""):
                source, raw = f.metadata["env"], env[f.metadata["env"]]
            if f.metadata["secret"] and env.get(f.metadata["env"] + "_FILE") not in (None, ""):
                source, raw = secret_from_file(f, env, source)
            if cli.get(f.name) is not None:
                source, raw = cli_flag(f) or f.name, cli[f.name]
            values[f.name] = validated(f, setting_type(f.name), source, raw)
        if values["top_k"] > values["experts"]:
            raise SettingsError(f"invalid top_k={values['top_k']}: cannot exceed experts={values['experts']}")
        check_security(values)
        return cls(**values)


_TYPES = typing.get_type_hints(Settings)


def secret_fields() -> tuple[str, ...]:
    """Names of the secret settings (never printed)."""
    return tuple(f.name for f in dataclasses.fields(Settings) if f.metadata["secret"])


def setting_type(name: str) -> type:
    """The type of setting ``name`` (``int`` for ``int | None``)."""
    hint = _TYPES[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def cli_flag(f: dataclasses.Field[Any]) -> str | None:
    flag = f.metadata["flag"]
    if flag == "":
        return None
    return flag or "--" + f.name.replace("_", "-")


def setting_fields() -> tuple[dataclasses.Field[Any], ...]:
    return dataclasses.fields(Settings)


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment variables that reproduce ``settings`` in another process (unset: None)."""
    env = {}
    for f in setting_fields():
        value = getattr(settings, f.name)
        if value is not None:
            env[f.metadata["env"]] = str(value).lower() if isinstance(value, bool) else str(value)
    return env
