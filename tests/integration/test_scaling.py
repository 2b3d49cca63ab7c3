"""``var bench scaling``'s stream part against real Redis: the windows and the Redis keys grow as
the README documents -- one window per stream, at most one decision-cache key per learned call --
and the report (table, JSON, plot) comes out."""
from __future__ import annotations

import json

import redis

from pipeline.cli.main import main


def test_windows_and_redis_keys_grow_as_documented(redis_url, tmp_path, capsys):
    plot = tmp_path / "scaling.png"
    args = ["bench", "scaling", "--only", "streams", "--streams", "10,300", "--stream-tokens", "3000",
            "--redis-url", redis_url, "--plot", str(plot)]
    assert main(args + ["--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["streams"]
    assert [r["streams"] for r in rows] == [10, 300]
    for r in rows:
        assert r["tokens"] == 3000 and r["windows"] == r["streams"] and r["windows_per_stream"] == 1.0
        assert 0 < r["learned_calls"] < r["tokens"]
        assert 0 < r["redis_cache_keys"] <= r["learned_calls"], r  # only confident learned decisions
        assert r["redis_other_keys"] <= 4  # the table set: pointer, sequence, one layer (+ archive)
        assert 0 < r["redis_bytes_per_cache_key"] < 1000
    assert plot.stat().st_size > 10_000
    assert not list(redis.Redis.from_url(redis_url).scan_iter(match="var:scaling-*"))  # the bench left nothing
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "streams" in table and "dc keys" in table and "documented" in table
