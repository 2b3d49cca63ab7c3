"""What ``var bench pipeline`` reads from a worker (metrics, CPU time) and how it prints the result."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipeline.engine.profile import STAGES
from pipeline.observability import Sample, scrape_samples


def scrape(port: int) -> dict[str, float]:
    """The worker's metrics (:func:`~pipeline.observability.scrape_samples`): each sample name
    summed over its labels, and ``stage:<name>`` for each stage of ``var_stage_seconds_total``."""
    return summed(scrape_samples(port))


def summed(samples: list[Sample]) -> dict[str, float]:
    """See :func:`scrape`."""
    out: dict[str, float] = {}
    for sample in samples:
        if sample.name.startswith("var_"):
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
        if sample.name == "var_stage_seconds_total":
            out[f"stage:{sample.labels['stage']}"] = sample.value
    return out


def stage_costs(metrics: dict[str, float]) -> dict[str, float]:
    """µs per routed decision of each worker stage, from a scrape (empty without decisions)."""
    decisions = metrics.get("var_decisions_total", 0.0)
    if not decisions:
        return {}
    return {stage: 1e6 * metrics.get(f"stage:{stage}", 0.0) / decisions for stage in STAGES}


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the processes ``pids`` used so far (Linux ``/proc``; nan elsewhere)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def ratios(results: list[dict[str, Any]]) -> dict[str, float]:
    """Ratios of the cases' throughputs in this run (only those whose cases ran)."""
    rate = {(r["shape"], r["size"], r["mode"]): float(r["tokens_per_s"]) for r in results
            if r.get("intake", "batched") == "batched"}
    faust = {r["mode"]: float(r["tokens_per_s"]) for r in results
             if r.get("intake") == "faust" and r["shape"] == "per-token"}
    out = {}
    if ("per-token", "seed", "passthrough") in rate and ("per-token", "seed", "var") in rate:
        out["per_token_var_vs_passthrough"] = rate[("per-token", "seed", "var")] / rate[("per-token", "seed", "passthrough")]
    for mode, tokens_per_s in faust.items():
        if ("per-token", "seed", mode) in rate:
            out[f"per_token_{mode}_batched_vs_faust_intake"] = rate[("per-token", "seed", mode)] / tokens_per_s
    if ("chunked", "large", "learned") in rate and ("chunked", "large", "var") in rate:
        out["chunked_large_var_vs_learned"] = rate[("chunked", "large", "var")] / rate[("chunked", "large", "learned")]
    for mode in ("var", "var-misses"):
        if ("chunked", "seed", mode) in rate:
            out[f"chunked_seed_{mode.replace('-', '_')}_tokens_per_s"] = rate[("chunked", "seed", mode)]
    return out


def render(results: list[dict[str, Any]]) -> str:
    lines = [f"{'messages':<10}{'router':<7}{'worker':<20}{'tokens/s':>11}{'at tok/s':>10}{'p50 ms':>8}{'p99 ms':>8}"
             f"{'':<7}{'redis/batch':>12}{'learned':>9}{'cores w/b':>11}", "-" * 113]
    for r in results:
        learned = r["learned_share"]
        share = "" if learned is None or learned != learned else f"{100 * learned:.1f}%"
        lines.append(f"{r['shape']:<10}{r['size']:<7}{_worker(r):<20}{r['tokens_per_s']:>11,.0f}"
                     f"{r['latency_rate']:>10,.0f}{r['latency_p50_ms']:>8.1f}{r['latency_p99_ms']:>8.1f}"
                     f"{'' if r.get('latency_kept_up', True) else ' behind':<7}"
                     f"{r['redis_round_trips_per_batch']:>12.2f}{share:>9}"
                     f"{r['worker_cores']:>6.2f}/{r['bench_cores']:.2f}")
    lines.append("p50/p99: event -> outcome latency at half the measured throughput ('at tok/s'; 'behind': "
                 "the worker did not keep up with that rate, so the latency is a backlog's); cores w/b: "
                 f"CPU cores (of {os.cpu_count()}) the worker / this process (producer + measuring consumer) "
                 "used in the throughput phase; (faust): Faust's own wait per message and "
                 "Stream.take_events (VAR_INTAKE=faust)")
    lines.append("")
    lines += [f"{k}: {v:,.2f}" for k, v in ratios(results).items()]
    return "\n".join(lines + ["", render_stages(results)])


def _worker(result: dict[str, Any]) -> str:
    return result["mode"] + (" (faust)" if result.get("intake") == "faust" else "")


def render_stages(results: list[dict[str, Any]]) -> str:
    """Worker µs/token per stage (throughput phase) for each case that routed."""
    routed = [r for r in results if r.get("stage_us_per_token")]
    if not routed:
        return ""
    names = [f"{r['shape'][:5]}/{r['size']}/{r['mode']}" + ("/faust" if r.get("intake") == "faust" else "")
             for r in routed]
    width = max(12, *(len(n) + 1 for n in names))
    lines = ["worker time per stage, µs/token (throughput phase; 'between batches' is time in Faust "
             "receiving, or waiting)", f"{'stage':<18}" + "".join(f"{n:>{width}}" for n in names)]
    for stage in STAGES:
        lines.append(f"{stage:<18}" + "".join(f"{r['stage_us_per_token'][stage]:>{width}.2f}" for r in routed))
    lines.append(f"{'total':<18}" + "".join(f"{sum(r['stage_us_per_token'].values()):>{width}.2f}" for r in routed))
    return "\n".join(lines)
