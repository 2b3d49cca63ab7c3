"""The timeline plot, its helpers, and the timeline built from collected outcomes."""
from __future__ import annotations

import os

import numpy as np
import pytest

from pipeline.cli.main import main
from pipeline.engine.events import Tier
from pipeline.outcomes import LayerOutcomes, Outcomes
from pipeline.plot import interval_shares, plot_timeline, timeline_summary, version_changes
from pipeline.quality import QualityResult
from pipeline.report import ReplayReport
from pipeline.timeline import outcome_timeline

PNG = b"\x89PNG\r\n\x1a\n"


def point(tokens, learned, fast, version, cache=0, fallback=0):
    return {"cache": cache, "fast": fast, "learned": learned, "budget_fallback": fallback, "tokens": tokens,
            "table_version": version}


TIMELINE = [point(100, 80, 20, 0), point(200, 140, 60, 1), point(300, 160, 130, 1, cache=10), point(400, 170, 220, 3,
                                                                                                        cache=10)]


def report(timeline) -> ReplayReport:
    q = QualityResult(1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0)
    tiers = {k: timeline[-1][k] for k in ("cache", "fast", "learned", "budget_fallback")} if timeline else {}
    return ReplayReport("synthetic", "embedded", {"id": "r"}, {"version": 3}, timeline[-1]["tokens"] if timeline else 0,
                        0, tiers, 0, 0, 0.15, 1000, False, 0, [], [], q, 1.0, 1.0, timeline=timeline)


def test_interval_shares_are_per_interval_not_cumulative():
    x, versions, shares = interval_shares(TIMELINE)
    np.testing.assert_array_equal(x, [100, 200, 300, 400])
    np.testing.assert_allclose(shares["learned"], [0.8, 0.6, 0.2, 0.1])
    np.testing.assert_allclose(shares["cache"], [0, 0, 0.1, 0])
    total = sum(shares.values())
    np.testing.assert_allclose(total, 1.0)
    assert versions.tolist() == [0, 1, 1, 3]


def test_version_changes_are_marked_where_the_interval_using_them_starts():
    x, versions, _ = interval_shares(TIMELINE)
    assert version_changes(x, versions) == [(100.0, 1), (300.0, 3)]


def test_timeline_summary_splits_decisions_into_equal_parts():
    summary = timeline_summary(TIMELINE, parts=4)
    np.testing.assert_allclose(summary["learned_share_by_part"], [0.8, 0.6, 0.2, 0.1])
    assert summary["versions"] == [0, 1, 3] and summary["tokens"] == 400
    assert timeline_summary([])["learned_share_by_part"] == []


@pytest.mark.parametrize("timeline", [TIMELINE, []])
def test_plot_writes_a_png(tmp_path, timeline):
    path = tmp_path / "t.png"
    summary = plot_timeline(report(timeline), path)
    assert path.read_bytes().startswith(PNG) and path.stat().st_size > 10_000
    assert summary == timeline_summary(timeline)


def make_outcomes(tiers, versions) -> Outcomes:
    n = len(tiers)
    z = np.zeros(n, np.int64)
    layer = LayerOutcomes(0, np.zeros((n, 2), np.int64), np.zeros((n, 2), np.float32), np.zeros(n, np.float32),
                          np.zeros(n, np.float32), np.asarray(tiers, np.int8), z.astype(np.uint64), z,
                          np.asarray(versions, np.int64), ["r"] * n)
    return Outcomes(["s"] * n, np.arange(n), z, ["w"] * n, [layer])


def test_outcome_timeline_counts_cumulatively_in_arrival_order():
    tiers = [Tier.LEARNED] * 3 + [Tier.FAST] * 2 + [Tier.CACHE] * 2
    versions = [0, 0, 1, 0, 2, 2, 1]  # a second worker lags behind: the version never goes back
    timeline = outcome_timeline(make_outcomes(tiers, versions), step=3)
    assert [p["tokens"] for p in timeline] == [3, 6, 7]
    assert [p["learned"] for p in timeline] == [3, 3, 3]
    assert [p["fast"] for p in timeline] == [0, 2, 2]
    assert [p["cache"] for p in timeline] == [0, 1, 2]
    assert [p["table_version"] for p in timeline] == [1, 2, 2]
    assert outcome_timeline(Outcomes.empty()) == []
    with pytest.raises(ValueError):
        outcome_timeline(make_outcomes(tiers, versions), step=0)


def test_replay_cli_plot(tmp_path, monkeypatch, capsys):
    for name in list(os.environ):
        if name.startswith("VAR_"):
            monkeypatch.delenv(name)
    path = tmp_path / "replay.png"
    main(["replay", "--synthetic", "--streams", "4", "--tokens-per-stream", "2000", "--plot", str(path)])
    assert path.read_bytes().startswith(PNG)
