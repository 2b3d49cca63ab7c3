"""The MoE LM: receptive fields (exact per-layer cache keys), checkpoints, deterministic training."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pipeline.assembly import build_engine
from pipeline.engine.events import EventBatch, Tier
from pipeline.model.checkpoint import BUNDLED_CHECKPOINT, CheckpointError, load_checkpoint, save_checkpoint
from pipeline.model.moe import MoEConfig, top_k_route
from pipeline.model.router import exact_gate_logits, model_routers
from pipeline.model.train import TrainConfig, train
from pipeline.settings import Settings


@pytest.fixture(scope="module")
def checkpoint():
    return load_checkpoint()


def _windows_of(seq: np.ndarray, width: int) -> np.ndarray:
    """Row t: the ``width`` tokens ending at t, -1 before the start."""
    padded = np.concatenate((np.full(width - 1, -1), seq))
    return np.stack([padded[t:t + width] for t in range(len(seq))])


def test_receptive_fields_follow_the_attention_window():
    cfg = MoEConfig()
    assert [cfg.receptive_field(l) for l in range(4)] == [8, 15, 22, 29]
    assert cfg.context == 29


def test_gate_from_its_receptive_field_equals_the_full_forward_pass(checkpoint):
    model, cfg = checkpoint.model, checkpoint.config
    seq = np.random.default_rng(1).integers(0, cfg.vocab_size, 120)
    full = model(torch.from_numpy(seq)[None]).gate_logits
    for layer in range(cfg.n_layer):
        ctx = torch.from_numpy(_windows_of(seq, cfg.receptive_field(layer)))
        recomputed = model.gate_logits(ctx, layer)
        assert torch.allclose(recomputed, full[layer][0], atol=1e-4), layer


def test_tokens_beyond_the_receptive_field_cannot_change_a_gate(checkpoint):
    model, cfg = checkpoint.model, checkpoint.config
    rng = np.random.default_rng(2)
    for layer in range(cfg.n_layer):
        field = cfg.receptive_field(layer)
        tail = rng.integers(0, cfg.vocab_size, field)
        a = np.concatenate((rng.integers(0, cfg.vocab_size, 40), tail))
        b = np.concatenate((rng.integers(0, cfg.vocab_size, 40), tail))
        ga = model(torch.from_numpy(a)[None]).gate_logits[layer][0, -1]
        gb = model(torch.from_numpy(b)[None]).gate_logits[layer][0, -1]
        assert torch.allclose(ga, gb, atol=1e-4)
        c = b.copy()
        c[-field] = (c[-field] + 1) % cfg.vocab_size  # the oldest token inside the field
        gc = model(torch.from_numpy(c)[None]).gate_logits[layer][0, -1]
        assert not torch.equal(gb, gc), f"layer {layer} ignores the start of its field"


def test_a_cache_hit_is_the_exact_decision_at_every_layer(checkpoint):
    """Two streams share the last 29 tokens but not their history: the second stream's decisions
    come from the cache (keyed by each layer's receptive field) and equal its exact routing."""
    cfg = checkpoint.config
    rng = np.random.default_rng(3)
    common = rng.integers(0, cfg.vocab_size, cfg.context)
    a = np.concatenate((rng.integers(0, cfg.vocab_size, 30), common))
    b = np.concatenate((rng.integers(0, cfg.vocab_size, 50), common))
    settings = Settings(router="model", budget=1.0, cache_min_confidence=0.0, cache_size=100_000, cache_ttl_s=3600.0)
    engine = build_engine(settings, model_routers(checkpoint))
    windows: dict = {}
    engine.route_batch(EventBatch.from_events(("a", i, int(t)) for i, t in enumerate(a)), windows)
    result = engine.route_batch(EventBatch.from_events(("b", i, int(t)) for i, t in enumerate(b)), windows)
    exact = exact_gate_logits(checkpoint.model, [b])
    last = len(b) - 1
    for layer, r in enumerate(result.layers):
        assert r.decisions.tiers[last] == Tier.CACHE, layer
        want = top_k_route(torch.from_numpy(exact[layer][last]), cfg.top_k)[0].numpy()
        assert r.decisions.experts[last].tolist() == want.tolist(), layer


def test_checkpoint_round_trip_and_content_hash(tmp_path, checkpoint):
    path = tmp_path / "copy.safetensors"
    digest = save_checkpoint(checkpoint.model, path, checkpoint.record)
    again = load_checkpoint(path)
    assert again.digest == digest and again.config == checkpoint.config
    assert [r.router_id for r in model_routers(again)] == [f"model-{digest}-l{l}" for l in range(4)]


def test_unreadable_checkpoints_are_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(bad)
    assert "\n" not in str(err.value)


def test_training_is_deterministic(tmp_path):
    cfg = TrainConfig(steps=2, batch_size=4, seq_len=32, evaluate=False)
    small = MoEConfig(d_model=32, d_expert=32, n_head=2)
    digests = [save_checkpoint(train(small, cfg)[0], tmp_path / f"m{i}.safetensors", {}) for i in range(2)]
    assert digests[0] == digests[1]
    other = save_checkpoint(train(small, dataclasses.replace(cfg, seed=1))[0], tmp_path / "m2.safetensors", {})
    assert other != digests[0]


def test_the_bundled_checkpoint_is_a_trained_language_model(checkpoint):
    assert BUNDLED_CHECKPOINT.is_file()
    record = checkpoint.record
    assert record["held_out_works"] == ["hamlet", "macbeth", "tempest", "twelfth_night"]
    assert not set(record["held_out_works"]) & set(record["train_works"])
    assert record["held_out_perplexity"] < 150  # a unigram model of this text is ~600
