"""Real Prometheus (Debian's ``prometheus``, installed when missing) scrapes live workers.

Two router workers and the stats worker serve their metrics; Prometheus scrapes them with
``deploy/prometheus/prometheus.local.yml`` (the compose scrape configuration with file-based
discovery) while a synthetic corpus streams through the routers. Every query of the Grafana
dashboard (``deploy/grafana/dashboards/var.json``, every ``expr`` of every panel target, Grafana's
``$__rate_interval`` & co. replaced by a concrete range) then has to return data through
Prometheus' HTTP API: a non-empty result with at least one sample that is a number (not NaN).
A dashboard query naming a metric the workers do not export returns nothing, and the test fails
naming that panel and query.
"""
from __future__ import annotations

import asyncio
import json
import math
import re
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from pipeline.corpus.synthetic import SyntheticSpec
from pipeline.stack.ports import LOCALHOST, free_ports
from pipeline.stack.prometheus_server import PrometheusServer
from pipeline.stream.topics import wait_for_group

from .harness import Harness, make_harness

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "var.json"
CORPUS = SyntheticSpec(vocab_size=1000, num_streams=8, tokens_per_stream=8000, seed=11)
RATE = 1000.0  # tokens/s: ~45 s of traffic, longer than the queries need
MESSAGE_SIZE = 8
ROUTERS = 2
RANGE_S = 30  # $__rate_interval et al.: 6 scrapes at the config's 5 s interval
GRAFANA_VARIABLES = {"__rate_interval": f"{RANGE_S}s", "__interval": f"{RANGE_S}s", "__range": f"{RANGE_S}s",
                     "__interval_ms": str(RANGE_S * 1000), "__range_ms": str(RANGE_S * 1000),
                     "__range_s": str(RANGE_S)}
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside (collapsed) rows."""
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title / refId, expr) for every target of every panel of the dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [(f"{p.get('title', '?')} / {t.get('refId', '?')}", t["expr"])
               for p in panels(dashboard["panels"]) for t in p.get("targets", []) if t.get("expr")]
    assert queries, f"{DASHBOARD} has no queries"
    return queries


def concrete(expr: str) -> str:
    """``expr`` with Grafana's interval variables replaced; an unknown variable fails the test."""
    def value(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        assert name in GRAFANA_VARIABLES, f"dashboard query uses template variable ${name}, not handled here: {expr}"
        return GRAFANA_VARIABLES[name]
    return VARIABLE.sub(value, expr)


def has_data(result: list[dict[str, Any]]) -> bool:
    """True when the result holds at least one sample that is a number (Grafana shows NaN as no value)."""
    return any(not math.isnan(float(sample["value"][1])) for sample in result)


class Traffic:
    """Produces the harness' corpus at ``RATE`` in a background thread; ``stop()`` cancels it."""

    def __init__(self, h: Harness) -> None:
        self.loop = asyncio.new_event_loop()
        self.task: asyncio.Task[None] | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(h,), daemon=True)
        self.thread.start()

    def _run(self, h: Harness) -> None:
        asyncio.set_event_loop(self.loop)
        self.task = self.loop.create_task(h.produce(MESSAGE_SIZE, RATE))
        try:
            self.loop.run_until_complete(self.task)
        except asyncio.CancelledError:
            pass
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.loop.close()

    def stop(self) -> None:
        try:  # runs in the loop, so after the task exists
            self.loop.call_soon_threadsafe(lambda: self.task is not None and self.task.cancel())
        except RuntimeError:  # the loop is closed: production already ended
            pass
        self.thread.join(15)


def wait_until_up(prom: PrometheusServer, h: Harness, timeout_s: float = 60.0) -> list[dict[str, Any]]:
    """Until every active target is up (2 routers, the stats worker, Prometheus itself)."""
    deadline = time.monotonic() + timeout_s
    while True:
        targets = prom.active_targets()
        jobs = sorted(t["labels"]["job"] for t in targets)
        if jobs == ["prometheus"] + ["router"] * ROUTERS + ["stats"] and all(t["health"] == "up" for t in targets):
            return targets
        assert not h.pool.dead() and time.monotonic() < deadline, (
            f"targets not up: {[(t['labels']['job'], t['scrapeUrl'], t['health'], t['lastError']) for t in targets]}"
            f"\n{h.worker_logs()}")
        time.sleep(1.0)


def test_every_dashboard_query_returns_data_from_live_workers(kafka_bootstrap, redis_url, tmp_path):
    queries = [(title, expr, concrete(expr)) for title, expr in dashboard_queries()]
    *router_ports, stats_port, prom_port = free_ports(ROUTERS + 2)
    h = make_harness(kafka_bootstrap, redis_url, tmp_path, CORPUS)
    prom = PrometheusServer(tmp_path / "prometheus", prom_port,
                            {"router": [f"{LOCALHOST}:{p}" for p in router_ports], "stats": [f"{LOCALHOST}:{stats_port}"]})
    prom.start()
    traffic = None
    try:
        for i, port in enumerate(router_ports):
            h.pool.start(f"router-{i}", settings=h.settings.with_(metrics_port=port))
        h.pool.start("stats", ("stats", "worker"), settings=h.settings.with_(metrics_port=stats_port))
        assert asyncio.run(wait_for_group(h.settings.kafka_bootstrap, h.settings.app_id, ROUTERS, 90)), h.worker_logs()
        wait_until_up(prom, h)

        traffic = Traffic(h)
        routed = "count(sum by (worker) (var_decisions_total) > 0)"
        deadline = time.monotonic() + 60.0
        while [float(s["value"][1]) for s in prom.query(routed)] != [ROUTERS]:  # both routers' traffic scraped
            assert traffic.error is None, f"producer failed: {traffic.error!r}"
            assert not h.pool.dead() and time.monotonic() < deadline, f"no routed traffic scraped\n{h.worker_logs()}"
            time.sleep(1.0)

        pending = dict(enumerate(queries))
        last: dict[int, Any] = {}
        deadline = time.monotonic() + 60.0  # a 30 s rate needs 2 scrapes (5 s apart) of the moving counters
        while pending and time.monotonic() < deadline:
            for index, (_, _, query) in list(pending.items()):
                last[index] = prom.query(query)
                if has_data(last[index]):
                    del pending[index]
            assert traffic.error is None, f"producer failed: {traffic.error!r}"
            assert not h.pool.dead(), h.worker_logs()
            if pending:
                time.sleep(2.0)
        assert not pending, "dashboard queries without data:\n" + "\n".join(
            f"  {title}: {expr}  ->  {last.get(index)}" for index, (title, expr, _) in pending.items())

        up = prom.query('count(up{job="router"} == 1)')
        assert [float(s["value"][1]) for s in up] == [ROUTERS], up
        targets = wait_until_up(prom, h, timeout_s=10.0)
        assert {t["scrapeUrl"] for t in targets if t["labels"]["job"] == "router"} == {
            f"http://{LOCALHOST}:{p}/metrics" for p in router_ports}
        # the check itself can fail: a metric nobody exports has no data
        assert not has_data(prom.query(concrete("sum(rate(var_no_such_metric_total[$__rate_interval]))")))
    finally:
        if traffic is not None:
            traffic.stop()
        h.pool.stop_all()
        prom.stop()
