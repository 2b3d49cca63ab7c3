"""The replay through the real MoE LM: per-layer budget, and a quality check that can fail."""
from __future__ import annotations

import numpy as np
import pytest

import pipeline.model_replay as model_replay
from pipeline.model_replay import run_model_replay
from pipeline.settings import Settings
from pipeline.sources import TextSource

SOURCE = TextSource(("tempest",))  # a held-out play, ~25k tokens


@pytest.fixture(scope="module")
def report():
    return run_model_replay(SOURCE, Settings(router="model"), progress=False)


def test_every_layer_is_routed_within_its_budget(report):
    assert len(report.layers) == 4
    for layer in report.layers:
        assert sum(layer.tiers.values()) == report.tokens
        assert layer.learned_fraction_full_windows <= report.budget + 1e-12
        assert layer.max_window_learned_fraction <= report.budget + 1e-12
        assert layer.router_id.endswith(f"-l{layer.layer}")
    assert [l.receptive_field for l in report.layers] == [8, 15, 22, 29]


def test_quality_is_measured_against_exact_routing(report):
    q = report.quality
    assert 20 < q.exact_perplexity < 200
    var, rand = q.variants["var"], q.variants["random"]
    assert rand.perplexity_change_pct > 50  # random experts wreck the model: the metric has a scale
    assert var.perplexity_change_pct < rand.perplexity_change_pct
    assert all(0 <= a.set_match <= a.recall <= 1 and a.top1 <= 1 for a in var.layers)
    data = report.to_dict()
    assert set(data["constraints"]) == {"learned_under_budget", "window_cap_held", "quality_preserved"}


def test_always_learned_routing_reproduces_the_exact_model():
    """No fast path (calibrated for a 100% learned share), the whole budget: exact routing."""
    settings = Settings(router="model", budget=1.0, static_below=0, train_fraction=0.8)
    rep = run_model_replay(TextSource(("tempest",)), settings, progress=False)
    assert all(l.tiers["fast"] == 0 and l.tiers["budget_fallback"] == 0 for l in rep.layers)
    var = rep.quality.variants["var"]
    assert abs(var.perplexity_change_pct) < 0.05
    assert min(a.set_match for a in var.layers) > 0.995
    assert rep.constraints()["quality_preserved"]


def test_a_bad_table_fails_the_quality_check(monkeypatch):
    """Every table entry shifted to the wrong experts and made eligible: quality_preserved FAILs."""
    real = model_replay.layer_tables

    def broken(*args, **kwargs):
        tables = real(*args, **kwargs)
        for t in tables:
            t.experts = (t.experts + 1) % t.num_experts
            t.eligible = t.known.copy()
        return tables

    monkeypatch.setattr(model_replay, "layer_tables", broken)
    rep = run_model_replay(TextSource(("tempest",)), Settings(router="model", train_fraction=0.8), progress=False)
    assert rep.quality.variants["var"].perplexity_change_pct > 1.0
    assert rep.constraints()["quality_preserved"] is False
    assert rep.to_dict()["constraints_ok"] is False


def test_group_streams_keeps_order_per_stream():
    from pipeline.engine.events import EventChunk

    chunks = [EventChunk("a", 0, (1, 2)), EventChunk("b", 0, (7,)), EventChunk("a", 2, (3,))]
    assert [s.tolist() for s in model_replay.group_streams(chunks)] == [[1, 2, 3], [7]]
    assert np.asarray(model_replay.group_streams([])).size == 0
