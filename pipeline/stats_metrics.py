"""Prometheus metrics of the stats refresher worker (its own registry; served like the routers').

Names start with ``var_stats_``; see :func:`pipeline.observability.serve_metrics`.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class StatsMetrics:
    """Counters and gauges of one stats worker."""

    def __init__(self, worker: str, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, ["worker"], registry=r).labels(worker=worker)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, ["worker"], registry=r).labels(worker=worker)

        self.outcomes = counter("var_stats_outcomes", "Outcome rows (tokens) counted as traffic")
        self.learned = counter("var_stats_learned_outcomes", "Outcome rows used as routing evidence (tier learned)")
        self.skipped = Counter("var_stats_skipped", "Outcome messages skipped, by reason", ["worker", "reason"],
                               registry=r)
        self.tables = counter("var_stats_tables_published", "Fast-path tables published")
        self.publish_errors = counter("var_stats_publish_errors", "Failed table publications (retried later)")
        self.snapshots = counter("var_stats_snapshots_saved", "Statistics snapshots saved to Redis")
        self.table_version = gauge("var_stats_table_version", "Version of the last published table")
        self.table_size = gauge("var_stats_table_size", "Fast-path tokens in the last published table")
        self.predicted_share = gauge("var_stats_predicted_learned_share",
                                     "Learned share predicted for the last published table")
        self.last_refresh = gauge("var_stats_last_refresh_timestamp_seconds", "Unix time of the last publication")
        self._worker = worker

    def skip(self, reason: str) -> None:
        self.skipped.labels(worker=self._worker, reason=reason).inc()
