"""Prometheus metrics and structured logs for the workers.

Every worker process exposes its metrics over HTTP (``VAR_METRICS_PORT``; 0 = off) at
``/metrics``. Metric names start with ``var_``; each worker has its own registry so tests can
run several in one process. Logs are plain text or one JSON object per line
(``VAR_LOG_FORMAT=json``) carrying the worker name and any ``extra`` context (stream, batch...).

Reading a worker's metrics back (the benchmarks, the soak test, the integration tests) goes
through :func:`scrape_samples`, which parses the exposition with ``prometheus_client.parser``.
"""
from __future__ import annotations

import json
import logging
import sys
import time
import urllib.request
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from pipeline.engine.audit import AuditLedger
from pipeline.engine.events import DecisionBatch

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_BATCH_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384)


class RouterMetrics:
    """Metrics of a router worker (all in one registry)."""

    def __init__(self, worker: str, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        labels = {"worker": worker}
        self.decisions = Counter("var_decisions", "Routing decisions by tier", ["worker", "tier"], registry=r)
        self.learned_share = Gauge("var_learned_share", "Learned-router share of all decisions so far",
                                   ["worker"], registry=r).labels(**labels)
        self.window_max = Gauge("var_learned_share_window_max",
                                "Max learned-router share in any budget window so far", ["worker"],
                                registry=r).labels(**labels)
        self.cache_hit_rate = Gauge("var_cache_hit_rate", "Decision-cache hits / lookups so far", ["worker"],
                                    registry=r).labels(**labels)
        self.batch_size = Histogram("var_batch_size", "Messages per routed micro-batch", ["worker"],
                                    buckets=_BATCH_BUCKETS, registry=r).labels(**labels)
        self.latency = Histogram("var_route_batch_seconds", "Time to route one micro-batch (incl. Redis)",
                                 ["worker"], buckets=_LATENCY_BUCKETS, registry=r).labels(**labels)
        self.redis_round_trips = Counter("var_redis_round_trips", "Redis round trips", ["worker"],
                                         registry=r).labels(**labels)
        self.redis_degraded = Counter("var_redis_degraded", "Redis calls skipped or failed (degraded mode)",
                                      ["worker"], registry=r).labels(**labels)
        self.table_version = Gauge("var_table_version", "Fast-path table version in use", ["worker"],
                                   registry=r).labels(**labels)
        self.deadletters = Counter("var_deadletters", "Messages sent to the dead-letter topic", ["worker"],
                                   registry=r).labels(**labels)
        self.redelivered = Counter("var_redelivered", "Redelivered events skipped (already routed)", ["worker"],
                                   registry=r).labels(**labels)
        self.offset_gaps = Counter("var_offset_gaps", "Undelivered offsets detected and re-fetched", ["worker"],
                                   registry=r).labels(**labels)
        self.repeated = Counter("var_repeated_messages", "Messages delivered again within a consumer generation "
                                "(a seek re-fetched them), dropped before routing", ["worker"],
                                registry=r).labels(**labels)
        self.consumer_lag = Gauge("var_consumer_lag", "Messages behind the end of the token topic",
                                  ["worker", "partition"], registry=r)
        self.streams = Gauge("var_stream_windows", "Stream context windows held by this worker", ["worker"],
                             registry=r).labels(**labels)
        audit_labels = ["worker", "layer", "table_version"]
        self.audits = Counter("var_audits", "Live audits of fast-path decisions (result: agree, disagree)",
                              audit_labels + ["result"], registry=r)
        self.audit_agreement = Gauge("var_audit_agreement", "Audited top-k agreement of the fast path so far, "
                                     "with its 95% Wilson interval (bound: estimate, low, high)",
                                     audit_labels + ["bound"], registry=r)
        self.stage_seconds = Counter("var_stage_seconds", "Worker time per routing stage (pipeline.engine.profile)",
                                     ["worker", "stage"], registry=r)
        self._stage_seen: dict[str, float] = {}
        self.audit_ledger = AuditLedger()
        self._worker = worker
        self._seen = (0, 0, 0, 0)

    def observe_stages(self, seconds: dict[str, float]) -> None:
        """Advance the per-stage counters to a stage clock's running totals."""
        for stage, total in seconds.items():
            delta = total - self._stage_seen.get(stage, 0.0)
            if delta > 0:
                self.stage_seconds.labels(worker=self._worker, stage=stage).inc(delta)
                self._stage_seen[stage] = total

    def tier(self, tier: str) -> Counter:
        return self.decisions.labels(worker=self._worker, tier=tier)

    def observe_audits(self, decisions: Iterable[DecisionBatch]) -> None:
        """Count a batch's audit results (one :class:`DecisionBatch` per layer) and update the
        agreement gauges of the (layer, table version) pairs it audited."""
        touched = set()
        for d in decisions:
            audits = d.audit_results()
            audited = int((audits >= 0).sum())
            if not audited:
                continue
            agreed = int((audits == 1).sum())
            labels = {"worker": self._worker, "layer": str(d.layer), "table_version": str(d.table_version)}
            self.audits.labels(**labels, result="agree").inc(agreed)
            self.audits.labels(**labels, result="disagree").inc(audited - agreed)
            self.audit_ledger.observe(d.layer, d.table_version, audits)
            touched.add((d.table_version, d.layer))
        for row in self.audit_ledger.rows():
            if (row["table_version"], row["layer"]) in touched:
                labels = {"worker": self._worker, "layer": str(row["layer"]), "table_version": str(row["table_version"])}
                for bound, value in (("estimate", row["agreement"]), ("low", row["low"]), ("high", row["high"])):
                    self.audit_agreement.labels(**labels, bound=bound).set(value)

    def observe_totals(self, round_trips: int, degraded: int, offset_gaps: int, repeated: int = 0) -> None:
        """Advance the counters kept elsewhere as running totals (Redis store, offset guard)."""
        totals = (round_trips, degraded, offset_gaps, repeated)
        for counter, total, seen in zip((self.redis_round_trips, self.redis_degraded, self.offset_gaps,
                                         self.repeated), totals, self._seen):
            counter.inc(max(0, total - seen))
        self._seen = totals


def serve_metrics(port: int, registry: CollectorRegistry, host: str = "127.0.0.1") -> None:
    """Expose ``registry`` on ``host``:``port`` at /metrics (no-op for port 0)."""
    if port:
        start_http_server(port, addr=host, registry=registry)


@dataclass(frozen=True)
class Sample:
    """One sample of a scrape: ``name`` (with a histogram's ``_count``/``_sum``/``_bucket``
    suffix), its labels and value."""

    name: str
    labels: Mapping[str, str]
    value: float


def parse_samples(text: str) -> list[Sample]:
    """Every sample of a Prometheus text exposition (parsed by ``prometheus_client.parser``)."""
    return [Sample(s.name, dict(s.labels), float(s.value))
            for family in text_string_to_metric_families(text) for s in family.samples]


def scrape_samples(port: int, host: str = "127.0.0.1", timeout_s: float = 5.0) -> list[Sample]:
    """:func:`parse_samples` of ``http://host:port/metrics``; OSError when it cannot be read."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout_s) as response:
        return parse_samples(response.read().decode())


def total(samples: Iterable[Sample], name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels`` (0 if none)."""
    return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, worker and any extra fields."""

    _STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    def __init__(self, worker: str) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name, "worker": self.worker,
            "message": record.getMessage(),
        }
        data.update({k: v for k, v in vars(record).items() if k not in self._STANDARD})
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def configure_logging(level: str, fmt: str, worker: str) -> None:
    """Root logging for a worker process: text or JSON lines on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(worker) if fmt == "json" else
                         logging.Formatter(f"%(asctime)s %(levelname)s [{worker}] %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
