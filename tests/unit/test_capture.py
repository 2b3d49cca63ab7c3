"""Routing capture: outcomes -> [tokens, layers, top_k] arrays (.npz) -> forced back through the LM."""
from __future__ import annotations

import asyncio
import itertools
import json
import random
from types import SimpleNamespace

import numpy as np
import orjson
import pytest

import pipeline.cli.main as cli_main
from pipeline.assembly import build_engine, build_routers, engine_config
from pipeline.capture import Capture, CaptureError, build_capture, load_capture, save_capture, stream_spans
from pipeline.capture_replay import check_replayable, replay_capture
from pipeline.capture_source import load_outcomes
from pipeline.settings import Settings
from pipeline.cli import capture_cmd
from pipeline.corpus.realtext import text_chunks
from pipeline.corpus.works import work_path
from pipeline.engine.events import Tier
from pipeline.engine.records import encode_chunk
from pipeline.model.router import model_router_id
from pipeline.outcomes import decode_outcome
from pipeline.stores.memory_store import MemoryRoutingStore
from pipeline.table_sets import require_vocab
from pipeline.stream.processor import InMessage, RouterProcessor

TOKENS_PER_STREAM = 96  # the first 96 tokens of each of 3 scenes, in records of 16 tokens


@pytest.fixture(scope="module")
def worker():
    """Outcome records (value bytes) of an always-learned router worker on the bundled LM: the
    model's own routing of every token, the way a worker publishes it."""
    settings = Settings.load(env={"VAR_ROUTER": "model"}, cli={})
    routers = build_routers(settings, require_vocab(settings))
    engine = build_engine(settings, routers)
    processor = RouterProcessor(engine, MemoryRoutingStore(engine_config(settings).cache, layers=len(engine)), "w",
                                learned_only=True, records="message")  # records of 16 tokens, as the tests cut them
    scenes = list(itertools.islice(dict.fromkeys(c.stream for c in text_chunks([work_path("macbeth")], chunk_size=16)), 3))
    chunks = [c for c in text_chunks([work_path("macbeth")], chunk_size=16)
              if c.stream in scenes and c.first_seq < TOKENS_PER_STREAM]
    out = asyncio.run(processor.process([InMessage(c.stream.encode(), encode_chunk(c), 0, i)
                                         for i, c in enumerate(chunks)], {}.get))
    assert not out.deadletters
    return SimpleNamespace(records=[v for _, v in out.outcomes], routers=routers, scenes=scenes)


@pytest.fixture(scope="module")
def checkpoint():
    from pipeline.assembly import load_model

    return load_model(Settings(router="model"))


def _write(path, records: list[bytes]) -> str:
    path.write_bytes(b"".join(r + b"\n" for r in records))
    return str(path)


def _altered(record: bytes) -> bytes:
    """The same outcome with every layer's experts shifted by one."""
    rec = orjson.loads(record)
    for layer in rec["layers"]:
        layer["experts"] = [[(e + 1) % 8 for e in pair] for pair in layer["experts"]]
    return orjson.dumps(rec)


def _capture(tmp_path, records: list[bytes], streams=None) -> Capture:
    return build_capture(load_outcomes(_write(tmp_path / "out.jsonl", records), Settings()), streams, "test")


def test_export_sorts_by_stream_and_seq_and_keeps_the_first_of_duplicates(worker, tmp_path):
    records = list(worker.records)
    random.Random(0).shuffle(records)
    late, early = records[0], records[1]
    shuffled = [_altered(early)] + records + [_altered(late), late]  # early's altered copy arrives first
    cap = _capture(tmp_path, shuffled)
    n = 3 * TOKENS_PER_STREAM
    size = lambda raw: len(decode_outcome(raw))  # tokens of one record  # noqa: E731
    assert len(cap) == n and cap.meta["duplicates_dropped"] == size(early) + 2 * size(late)
    assert cap.experts.shape == (n, 4, 2) and cap.experts.dtype == np.int16
    assert cap.weights.shape == (n, 4, 2) and cap.weights.dtype == np.float32
    assert cap.tiers.shape == (n, 4) and cap.tiers.dtype == np.int8 and (cap.tiers == Tier.LEARNED).all()
    assert cap.streams == sorted(worker.scenes) and cap.layers == [0, 1, 2, 3]
    assert all(s.complete and s.tokens == TOKENS_PER_STREAM for s in stream_spans(cap))
    assert cap.layer_router_ids() == [[r.router_id] for r in worker.routers]
    truth = {}
    for raw in reversed([early] + records):  # the originals, but early's altered copy wins
        o = decode_outcome(_altered(raw) if raw is early else raw)
        for i, (s, q) in enumerate(zip(o.streams, o.seqs.tolist())):
            truth[(s, q)] = (o.tokens[i], np.stack([layer.experts[i] for layer in o.layers]),
                             np.stack([layer.weights[i] for layer in o.layers]))
    for row in range(n):
        token, experts, weights = truth[(cap.streams[cap.stream_index[row]], int(cap.seqs[row]))]
        assert cap.tokens[row] == token and (cap.experts[row] == experts).all() and (cap.weights[row] == weights).all()


def test_the_npz_loads_without_pickle_and_round_trips(worker, tmp_path):
    cap = _capture(tmp_path, worker.records)
    save_capture(cap, tmp_path / "cap.npz")
    with np.load(tmp_path / "cap.npz", allow_pickle=False) as data:
        meta = json.loads(str(data["meta"][()]))
        assert data["experts"].shape == (len(cap), 4, 2) and data["streams"].dtype.kind == "U"
    assert meta["format"] == "var-routing-capture" and meta["top_k"] == 2 and meta["table_versions"] == [0]
    assert meta["router_ids"] == [[r.router_id] for r in worker.routers] and meta["tiers"][Tier.LEARNED] == "learned"
    back = load_capture(tmp_path / "cap.npz")
    for name in ("experts", "weights", "tiers", "key_kinds", "seqs", "tokens", "stream_index"):
        assert np.array_equal(getattr(back, name), getattr(cap, name)), name
    assert back.streams == cap.streams and back.layer_router_ids() == cap.layer_router_ids()


def test_streams_can_be_chosen(worker, tmp_path):
    cap = _capture(tmp_path, worker.records, [worker.scenes[1]])
    assert cap.streams == [worker.scenes[1]] and len(cap) == TOKENS_PER_STREAM
    with pytest.raises(CaptureError, match="no outcomes for stream"):
        _capture(tmp_path, worker.records, ["no-such-scene"])


def test_gaps_are_reported_and_a_replay_refuses_them(worker, tmp_path, checkpoint):
    first_of = {decode_outcome(r).streams[0]: r for r in reversed(worker.records) if decode_outcome(r).seqs[0] == 0}
    middle = next(r for r in worker.records if decode_outcome(r).streams[0] == worker.scenes[0]
                  and decode_outcome(r).seqs[0] == 32)
    gapped = [r for r in worker.records if r is not middle and r is not first_of[worker.scenes[2]]]
    cap = _capture(tmp_path, gapped)
    spans = {s.name: s for s in stream_spans(cap)}
    hole = spans[worker.scenes[0]]
    assert hole.missing == 16 and hole.first_seq == 0 and not hole.complete
    assert spans[worker.scenes[2]].first_seq == 16 and not spans[worker.scenes[2]].complete
    with pytest.raises(CaptureError, match="do not hold every seq from 0"):
        check_replayable(cap, checkpoint)


def test_replaying_a_capture_of_exact_routing_reproduces_the_exact_perplexity(worker, tmp_path, checkpoint):
    result = replay_capture(_capture(tmp_path, worker.records), checkpoint)
    assert result.tokens == 3 * (TOKENS_PER_STREAM - 1) and result.streams == 3
    assert abs(result.perplexity - result.exact_perplexity) / result.exact_perplexity < 1e-4
    assert all(l.set_match > 0.99 and l.router_matches and l.tiers["learned"] == 1.0 for l in result.layers)


def test_a_corrupted_capture_gives_a_higher_perplexity(worker, tmp_path, checkpoint):
    cap = _capture(tmp_path, worker.records)
    cap.experts = ((cap.experts.astype(np.int64) + 1) % 8).astype(np.int16)
    result = replay_capture(cap, checkpoint)
    assert result.perplexity > 1.05 * result.exact_perplexity
    assert max(l.set_match for l in result.layers) < 0.5


def test_router_ids_of_other_weights_need_force(worker, tmp_path, checkpoint):
    cap = _capture(tmp_path, worker.records)
    assert model_router_id(checkpoint.digest, 0) == cap.router_ids[0]
    cap.router_ids = [rid.replace(checkpoint.digest, "0" * 12) for rid in cap.router_ids]
    with pytest.raises(CaptureError, match="--force"):
        replay_capture(cap, checkpoint)
    assert replay_capture(cap, checkpoint, force=True).forced_router_mismatch


def _main(monkeypatch, argv: list[str]) -> int:
    """``var ARGV`` with ``capture`` registered (as pipeline/cli/main.py will register it)."""
    if capture_cmd not in cli_main._MODULES:
        monkeypatch.setattr(cli_main, "_MODULES", cli_main._MODULES + (capture_cmd,))
    return cli_main.main(argv)


def _error(monkeypatch, capsys, argv: list[str]) -> str:
    assert _main(monkeypatch, argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("var: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_cli_errors_are_one_line(worker, tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "c.npz")
    assert "no such file" in _error(monkeypatch, capsys, ["capture", "export", str(tmp_path / "no.jsonl"), "--out", out])
    bad = _write(tmp_path / "bad.jsonl", worker.records[:2] + [b"{not json"])
    assert "line 3" in _error(monkeypatch, capsys, ["capture", "export", bad, "--out", out])
    assert "no such capture file" in _error(monkeypatch, capsys, ["capture", "replay", out])
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    assert "not a capture file" in _error(monkeypatch, capsys, ["capture", "replay", str(tmp_path / "other.npz")])
    assert "--streams" in _error(monkeypatch, capsys, ["capture", "export", bad, "--out", out, "--streams", ","])


def test_cli_export_then_replay(worker, tmp_path, monkeypatch, capsys):
    src, out = _write(tmp_path / "o.jsonl", worker.records + worker.records[:1]), str(tmp_path / "c.npz")
    assert _main(monkeypatch, ["capture", "export", src, "--out", out, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tokens"] == 3 * TOKENS_PER_STREAM and report["duplicates_dropped"] == 16 and report["replayable"]
    assert _main(monkeypatch, ["capture", "replay", out]) == 0
    text = capsys.readouterr().out
    assert "exact" in text and "capture" in text and "top-k set" in text
