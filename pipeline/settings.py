"""One settings object for the CLI, the workers, docker compose and the tests.

Every setting has a default, an environment variable and (usually) a command-line flag, all
declared once on the :class:`Settings` dataclass. Precedence: flag > environment > default.
Invalid values fail at start-up with one line naming where the value came from, e.g.
``invalid VAR_BUDGET='1.5': must be within [0, 1]``.

The README's configuration table is generated from the same declarations
(``var config --markdown``) and a test keeps the two in sync.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

Check = Callable[[Any], "str | None"]
KAFKA_PROTOCOLS = ("PLAINTEXT", "SASL_PLAINTEXT", "SSL", "SASL_SSL")
SASL_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")


class SettingsError(ValueError):
    """A setting with an invalid value; ``str(err)`` is a one-line message."""


def _at_least(low: float) -> Check:
    return lambda v: None if v >= low else f"must be >= {low:g}"


def _router_choice(value: str) -> str | None:
    if value in ("context", "seed", "model") or (value.startswith("model:") and len(value) > 6):
        return None
    return "must be model, model:PATH, context or seed"


def _readable_file(value: str) -> str | None:
    return None if os.access(value, os.R_OK) and Path(value).is_file() else "no such readable file"


def _within(low: float, high: float) -> Check:
    return lambda v: None if low <= v <= high else f"must be within [{low:g}, {high:g}]"


def _setting(default: Any, env: str, help: str, check: Check | None = None,
             choices: tuple[str, ...] | None = None, flag: str | None = None, secret: bool = False) -> Any:
    """Declare a setting: env var, help text, validation; ``flag=""`` means no CLI flag;
    ``secret``: left out of the settings' repr (and so of logs and test reports), masked by
    ``var config``, never a flag, and also read from the file named by ``<ENV>_FILE``."""
    meta = {"env": env, "help": help, "check": check, "choices": choices, "flag": "" if secret else flag,
            "secret": secret}
    return dataclasses.field(default=default, metadata=meta, repr=not secret)


@dataclass(frozen=True)
class Settings:
    """Resolved settings. See ``var config`` or the README table for every field."""

    # --- learned router ---
    router: str = _setting("context", "VAR_ROUTER", "learned router: model (every MoE layer of the bundled LM), "
                           "model:PATH (a checkpoint), or the synthetic context (receptive field = context_window) or seed",
                           _router_choice)
    vocab_size: int | None = _setting(None, "VAR_VOCAB_SIZE", "vocabulary size (default: inferred from the corpus)",
                                      _at_least(1))
    hidden: int = _setting(128, "VAR_HIDDEN", "router hidden size (seed size 128, large 4096)", _at_least(1))
    experts: int = _setting(8, "VAR_EXPERTS", "number of experts E (seed size 8, large 64)", _at_least(1))
    top_k: int = _setting(2, "VAR_TOP_K", "experts per token", _at_least(1))
    context_window: int = _setting(4, "VAR_CONTEXT_WINDOW", "context window W: the router sees the token and the W-1 before it",
                           _at_least(1))
    seed: int = _setting(0, "VAR_SEED", "seed of the router weights, synthetic corpora and the quality probe",
                         _at_least(0))
    device: str = _setting("cpu", "VAR_DEVICE", "torch device of the learned router (cpu, cuda)")
    # --- decision cache ---
    cache_ttl_s: float = _setting(60.0, "VAR_CACHE_TTL_S", "decision-cache TTL in seconds", _at_least(0.001))
    cache_size: int = _setting(1000, "VAR_CACHE_SIZE", "in-memory decision-cache capacity (LRU entries)", _at_least(1))
    cache_min_confidence: float = _setting(0.8, "VAR_CACHE_MIN_CONFIDENCE",
                                           "cache only learned decisions at least this confident", _within(0, 1))
    cache_scope: str = _setting("all", "VAR_CACHE_SCOPE", "tokens that look the cache up: all (cache before fast "
                                "path) or misses (only tokens the fast path does not serve; fewer Redis keys)",
                                choices=("all", "misses"))
    # --- fast path ---
    min_frequency: float = _setting(50.0, "VAR_MIN_FREQUENCY", "fast path: token frequency must exceed this",
                                    _at_least(0))
    max_entropy: float = _setting(0.5, "VAR_MAX_ENTROPY", "fast path: mean routing entropy (nats) must be below this",
                                  _at_least(0))
    static_below: int = _setting(10, "VAR_STATIC_BELOW",
                                 "fast path: token ids below this are always eligible (once seen)", _at_least(0))
    pair_min_count: float = _setting(3.0, "VAR_PAIR_MIN_COUNT", "fast path: a (previous token, token) pair gets its "
                                     "own entry after this many learned observations (else: the token's)",
                                     _at_least(1))
    pair_max_entropy: float = _setting(0.5, "VAR_PAIR_MAX_ENTROPY", "fast path: a pair entry is served if its mean "
                                       "routing entropy (nats) is below this", _at_least(0))
    pair_cap: int = _setting(65536, "VAR_PAIR_CAP", "fast path: at most this many pair entries per layer (the most "
                             "traffic first; statistics keep twice as many; 0: token entries only)", _at_least(0))
    table_file: str | None = _setting(None, "VAR_TABLE_FILE", "fast-path table file to use instead of an offline phase")
    # --- budget governor ---
    budget: float = _setting(0.15, "VAR_BUDGET", "learned-router budget: max share of decisions per budget window",
                             _within(0, 1))
    budget_window: int = _setting(1000, "VAR_BUDGET_WINDOW", "decisions per budget window", _at_least(1))
    budget_split: str = _setting("even", "VAR_BUDGET_SPLIT", "a model's learned budget per layer: even (every layer "
                                 "gets --budget) or error (layers x --budget split by each layer's measured "
                                 "fast-path error, each layer capped at --budget-layer-max)", choices=("even", "error"))
    budget_layer_max: float = _setting(0.3, "VAR_BUDGET_LAYER_MAX", "with --budget-split error: the hard cap of any "
                                       "one layer's budget", _within(0, 1))
    governor: bool = _setting(True, "VAR_GOVERNOR", "enforce the budget (--no-governor: off, for comparison)")
    audit_rate: float = _setting(0.01, "VAR_AUDIT_RATE", "live audits: share of fast-path and fallback decisions "
                                 "(hash-selected) also routed by the learned router; counts against the budget",
                                 _within(0, 1))
    audit_min_agreement: float = _setting(0.5, "VAR_AUDIT_MIN_AGREEMENT", "stats worker: drop a token's fast-path "
                                          "entry when its audited top-k agreement falls below this", _within(0, 1))
    # --- replay ---
    batch_size: int = _setting(1024, "VAR_BATCH_SIZE", "tokens per micro-batch", _at_least(1))
    train_fraction: float = _setting(0.3, "VAR_TRAIN_FRACTION", "share of a corpus used by the offline phase",
                                     _within(0, 0.95))
    quality_sample: int = _setting(50000, "VAR_QUALITY_SAMPLE", "events used by the MoE-layer quality probe",
                                   _at_least(100))
    quality_bound_pct: float = _setting(1.0, "VAR_QUALITY_BOUND_PCT", "quality_preserved: model perplexity may rise "
                                        "at most this many percent over exact routing", _at_least(0))
    # --- services ---
    kafka_bootstrap: str = _setting("127.0.0.1:9092", "KAFKA_BOOTSTRAP", "Kafka bootstrap servers (host:port,...)")
    redis_url: str = _setting("redis://127.0.0.1:6379/0", "REDIS_URL", "Redis URL for the shared cache and tables")
    namespace: str = _setting("default", "VAR_NAMESPACE", "Redis key namespace (isolates deployments and replays)")
    redis_timeout_s: float = _setting(0.5, "VAR_REDIS_TIMEOUT_S", "Redis socket timeout; slower calls count as an outage",
                                      _at_least(0.01))
    # --- security (README "Security"; every client of Kafka and Redis applies these) ---
    kafka_security_protocol: str = _setting("PLAINTEXT", "KAFKA_SECURITY_PROTOCOL", "Kafka security protocol",
                                            choices=KAFKA_PROTOCOLS, flag="")
    kafka_sasl_mechanism: str = _setting("SCRAM-SHA-512", "KAFKA_SASL_MECHANISM", "Kafka SASL mechanism "
                                         "(with SASL_PLAINTEXT or SASL_SSL)", choices=SASL_MECHANISMS, flag="")
    kafka_username: str | None = _setting(None, "KAFKA_USERNAME", "Kafka SASL user", flag="")
    kafka_password: str | None = _setting(None, "KAFKA_PASSWORD", "Kafka SASL password (or KAFKA_PASSWORD_FILE; "
                                          "never logged)", flag="", secret=True)
    kafka_ca_file: str | None = _setting(None, "KAFKA_CA_FILE", "CA certificate (PEM) that signed the brokers' "
                                         "certificates (SSL, SASL_SSL; default: the system's)",
                                         _readable_file, flag="")
    kafka_cert_file: str | None = _setting(None, "KAFKA_CERT_FILE", "client certificate (PEM) for brokers that "
                                           "ask for one", _readable_file, flag="")
    kafka_key_file: str | None = _setting(None, "KAFKA_KEY_FILE", "private key (PEM) of KAFKA_CERT_FILE",
                                          _readable_file, flag="")
    redis_username: str | None = _setting(None, "REDIS_USERNAME", "Redis ACL user (or the user in REDIS_URL)",
                                          flag="")
    redis_password: str | None = _setting(None, "REDIS_PASSWORD", "Redis password (or REDIS_PASSWORD_FILE, or in "
                                          "REDIS_URL; never logged)", flag="", secret=True)
    redis_ca_file: str | None = _setting(None, "REDIS_CA_FILE", "CA certificate (PEM) of the Redis server's "
                                         "certificate (with a rediss:// URL; default: the system's)",
                                         _readable_file, flag="")
    redis_cert_file: str | None = _setting(None, "REDIS_CERT_FILE", "client certificate (PEM) for a Redis server "
                                           "that asks for one", _readable_file, flag="")
    redis_key_file: str | None = _setting(None, "REDIS_KEY_FILE", "private key (PEM) of REDIS_CERT_FILE",
                                          _readable_file, flag="")
    role_env_dir: str | None = _setting(None, "VAR_ROLE_ENV_DIR", "directory with router.env and stats.env: the "
                                        "credentials of the workers that replay, chaos and stack start locally "
                                        "(`var stack up --secure` writes one)", flag="")
    # --- streaming pipeline ---
    topic_tokens: str = _setting("var-tokens", "VAR_TOPIC_TOKENS", "topic of token events (key = stream id)")
    topic_outcomes: str = _setting("var-outcomes", "VAR_TOPIC_OUTCOMES", "topic of routing outcomes")
    topic_deadletter: str = _setting("var-deadletter", "VAR_TOPIC_DEADLETTER", "topic of rejected messages")
    topic_certificates: str = _setting("var-certificates", "VAR_TOPIC_CERTIFICATES", "topic of window "
                                       "certificates (one per budget window of decisions per worker and layer)")
    certificate_key: str | None = _setting(None, "VAR_CERTIFICATE_KEY", "secret HMAC key that makes certificates "
                                           "tamper-evident (never logged; verify needs the same key)", flag="",
                                           secret=True)
    table_archive_ttl_s: float = _setting(7 * 86400.0, "VAR_TABLE_ARCHIVE_TTL_S", "keep superseded table sets "
                                          "in Redis this long for verification", _at_least(1))
    partitions: int = _setting(4, "VAR_PARTITIONS", "partitions of the token topic (and of the context-window table)",
                               _at_least(1))
    router_mode: str = _setting("var", "VAR_ROUTER_MODE", "router worker: var, learned (always the learned "
                                "router; a baseline) or passthrough (forward only; the framework ceiling)",
                                choices=("var", "learned", "passthrough"))
    outcome_records: str = _setting("stream", "VAR_OUTCOME_RECORDS", "router: one outcome record per stream "
                                    "and batch (stream; fewest sends) or one per token message (message)",
                                    choices=("stream", "message"))
    app_id: str = _setting("var-router", "VAR_APP_ID", "Faust app id = consumer group of the router workers")
    take_max: int = _setting(1024, "VAR_TAKE_MAX", "router micro-batch: at most this many messages per batch", _at_least(1))
    take_within_s: float = _setting(0.01, "VAR_TAKE_WITHIN_S", "router micro-batch: flush after this many seconds",
                                    _at_least(0.001))
    stream_idle_s: float = _setting(600.0, "VAR_STREAM_IDLE_S", "router: forget a stream's context window (changelog "
                                    "tombstone) after this many seconds without an event", _at_least(1))
    commit_interval_s: float = _setting(1.0, "VAR_COMMIT_INTERVAL_S", "router: commit the routed offset frontier "
                                        "this often (after flushing outcomes and context windows)", _at_least(0.05))
    replication_factor: int = _setting(1, "VAR_REPLICATION_FACTOR", "replication factor of the topics the "
                                       "pipeline creates (3 on a 3-broker cluster)", _at_least(1))
    worker_name: str | None = _setting(None, "VAR_WORKER_NAME", "worker name in outcomes and logs (default host-pid)")
    metrics_port: int = _setting(0, "VAR_METRICS_PORT", "Prometheus metrics HTTP port of a worker (0 = off)",
                                 _at_least(0))
    metrics_host: str = _setting("127.0.0.1", "VAR_METRICS_HOST", "address the metrics endpoint binds to "
                                 "(0.0.0.0 in containers, so Prometheus can reach it)")
    log_format: str = _setting("text", "VAR_LOG_FORMAT", "worker log format", choices=("text", "json"))
    # --- stats refresher (workers/) ---
    stats_group: str = _setting("var-stats", "VAR_STATS_GROUP", "consumer group of the stats refresher worker")
    refresh_every: int = _setting(20000, "VAR_REFRESH_EVERY", "stats worker: publish a new table after N outcomes",
                                  _at_least(1))
    refresh_interval_s: float = _setting(10.0, "VAR_REFRESH_INTERVAL_S", "stats worker: or after T seconds (when anything changed)",
                                         _at_least(0.1))
    stats_decay: float = _setting(1.0, "VAR_STATS_DECAY",
                                  "multiply statistics by this at every refresh (1 = never forget)", _within(0.01, 1))
    table_grace_s: float = _setting(300.0, "VAR_TABLE_GRACE_S", "superseded table versions expire after this long",
                                    _at_least(1))
    adaptive: bool = _setting(False, "VAR_ADAPTIVE", "choose fast-path thresholds from the statistics to meet "
                                                     "--adaptive-target")
    adaptive_target: float = _setting(0.10, "VAR_ADAPTIVE_TARGET", "learned-router share the adaptive thresholds aim for",
                                      _within(0, 1))
    log_level: str = _setting("warning", "VAR_LOG_LEVEL", "worker log level", choices=("debug", "info", "warning", "error"))
    session_timeout_s: float = _setting(10.0, "VAR_SESSION_TIMEOUT_S",
                                        "Kafka consumer session timeout (how fast a dead worker is noticed)",
                                        _at_least(1))

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
                source, raw = _secret_from_file(f, env, source)
            if cli.get(f.name) is not None:
                source, raw = cli_flag(f) or f.name, cli[f.name]
            values[f.name] = _validated(f, source, raw)
        if values["top_k"] > values["experts"]:
            raise SettingsError(f"invalid top_k={values['top_k']}: cannot exceed experts={values['experts']}")
        _check_security(values)
        return cls(**values)


_TYPES = typing.get_type_hints(Settings)
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^/@:]*:)[^/@]*@", re.IGNORECASE)


def redact_url(text: str) -> str:
    """``text`` with the password of any ``scheme://user:password@host`` URL in it replaced by ``***``."""
    return _URL_PASSWORD.sub(lambda m: m.group("head") + "***@", text)


def _secret_from_file(f: dataclasses.Field, env: Mapping[str, str], source: str) -> tuple[str, str]:
    """(source, value) of a secret read from the file ``<ENV>_FILE`` names (trailing newline
    stripped), as the official container images do; setting both ``<ENV>`` and ``<ENV>_FILE``
    is an error. The message names the file, never its content."""
    name = f.metadata["env"] + "_FILE"
    if source != "default":
        raise SettingsError(f"invalid {name}: set {f.metadata['env']} or {name}, not both")
    try:
        value = Path(env[name]).read_text().rstrip("\r\n")
    except OSError as exc:
        raise SettingsError(f"invalid {name}={env[name]!r}: cannot read it ({exc.strerror})") from None
    if not value:
        raise SettingsError(f"invalid {name}={env[name]!r}: the file is empty")
    return name, value


def _check_security(values: Mapping[str, Any]) -> None:
    """Cross-field rules of the security settings (one-line SettingsError)."""
    if values["kafka_security_protocol"].startswith("SASL_") and not (values["kafka_username"] and
                                                                         values["kafka_password"]):
        raise SettingsError(f"KAFKA_SECURITY_PROTOCOL={values['kafka_security_protocol']} needs KAFKA_USERNAME "
                            "and KAFKA_PASSWORD (or KAFKA_PASSWORD_FILE)")
    for service in ("kafka", "redis"):
        if bool(values[f"{service}_cert_file"]) != bool(values[f"{service}_key_file"]):
            raise SettingsError(f"{service.upper()}_CERT_FILE and {service.upper()}_KEY_FILE go together")


def secret_fields() -> tuple[str, ...]:
    """Names of the secret settings (never printed)."""
    return tuple(f.name for f in dataclasses.fields(Settings) if f.metadata["secret"])


def _base_type(name: str) -> type:
    hint = _TYPES[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def _parse(name: str, raw: Any) -> Any:
    kind = _base_type(name)
    if raw is None or isinstance(raw, kind) and not (kind is int and isinstance(raw, bool)):
        return raw
    if kind is bool:
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(raw)
    return kind(raw)


def _validated(f: dataclasses.Field, source: str, raw: Any) -> Any:
    shown = "<secret>" if f.metadata["secret"] else redact_url(repr(raw))
    try:
        value = _parse(f.name, raw)
    except (TypeError, ValueError):
        raise SettingsError(f"invalid {source}={shown}: expected {_base_type(f.name).__name__}") from None
    choices, check = f.metadata["choices"], f.metadata["check"]
    problem = None
    if choices and value not in choices:
        problem = f"must be one of {', '.join(choices)}"
    elif check is not None and value is not None:
        problem = check(value)
    if problem:
        raise SettingsError(f"invalid {source}={shown}: {problem}")
    return value


def cli_flag(f: dataclasses.Field) -> str | None:
    flag = f.metadata["flag"]
    if flag == "":
        return None
    return flag or "--" + f.name.replace("_", "-")


def setting_fields() -> tuple[dataclasses.Field, ...]:
    return dataclasses.fields(Settings)


def add_arguments(parser: argparse.ArgumentParser, names: Iterable[str]) -> None:
    """Add the flags of the named settings; unset flags stay ``None`` so env/defaults apply."""
    by_name = {f.name: f for f in setting_fields()}
    for name in names:
        f = by_name[name]
        flag = cli_flag(f)
        if flag is None:
            continue
        help_text = f"{f.metadata['help']} [{f.metadata['env']}, default {f.default}]"
        if _base_type(name) is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=name, default=None, help=help_text, choices=f.metadata["choices"],
                                metavar=name.upper())


def markdown_table() -> str:
    """The README configuration table (one row per setting)."""
    rows = ["| setting | env var | flag | default | meaning |", "|---|---|---|---|---|"]
    for f in setting_fields():
        flag = cli_flag(f)
        rows.append(f"| {f.name} | `{f.metadata['env']}` | {f'`{flag}`' if flag else ''} | `{f.default}` "
                    f"| {f.metadata['help']} |")
    return "\n".join(rows)


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment variables that reproduce ``settings`` in another process (unset: None)."""
    env = {}
    for f in setting_fields():
        value = getattr(settings, f.name)
        if value is not None:
            env[f.metadata["env"]] = str(value).lower() if isinstance(value, bool) else str(value)
    return env
