"""Learned routers: read-out invariants, determinism, context dependence, spec validation."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipeline.engine.routers import RouterSpec, build_router, read_out

PAD = -1
KINDS = ["context", "seed"]


def spec(kind="context", **kw):
    base = dict(kind=kind, vocab_size=50, hidden=16, num_experts=4, top_k=2, window=4, seed=0)
    base.update(kw)
    return RouterSpec(**base)


def random_contexts(n=300, window=4, vocab=50, seed=0, pad_share=0.2):
    rng = np.random.default_rng(seed)
    ctx = rng.integers(0, vocab, size=(n, window))
    pad = rng.random((n, window - 1)) < pad_share
    ctx[:, :-1][pad] = PAD
    return ctx.astype(np.int64)


def softmax(logits):
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("experts,top_k", [(4, 2), (4, 1), (6, 6), (8, 3)])
def test_output_shapes_and_read_out_invariants(kind, experts, top_k):
    router = build_router(spec(kind, num_experts=experts, top_k=top_k))
    ctx = random_contexts()
    out = router.route(ctx, with_logits=True)
    n = len(ctx)
    assert out.experts.shape == (n, top_k) and out.experts.dtype == np.int64
    assert out.weights.shape == (n, top_k) and out.weights.dtype == np.float32
    assert out.confidence.shape == (n,) and out.entropy.shape == (n,)
    assert out.logits.shape == (n, experts)
    assert ((out.experts >= 0) & (out.experts < experts)).all()
    # experts distinct per row
    assert all(len(set(row)) == top_k for row in out.experts.tolist())
    np.testing.assert_allclose(out.weights.sum(axis=1), 1.0, atol=1e-6)
    assert (np.diff(out.weights, axis=1) <= 1e-7).all()  # sorted descending
    p = softmax(out.logits)
    np.testing.assert_allclose(out.confidence, p.max(axis=1), rtol=1e-5, atol=1e-6)
    entropy = -(p * np.log(np.clip(p, 1e-300, None))).sum(axis=1)
    np.testing.assert_allclose(out.entropy, entropy, rtol=1e-4, atol=1e-5)
    # the chosen experts are the top-k logits, and weights = softmax restricted to them
    chosen = np.take_along_axis(out.logits, out.experts, axis=1)
    assert (np.diff(chosen, axis=1) <= 0).all()  # experts in descending logit order
    chosen_mask = np.zeros((n, experts), dtype=bool)
    chosen_mask[np.arange(n)[:, None], out.experts] = True
    others = np.where(chosen_mask, -np.inf, out.logits)
    assert (others.max(axis=1) <= chosen[:, -1]).all()  # no unchosen expert beats the k-th
    pk = np.take_along_axis(p, out.experts, axis=1)
    np.testing.assert_allclose(out.weights, pk / pk.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-6)
    assert (out.entropy >= -1e-6).all() and (out.entropy <= np.log(experts) + 1e-5).all()


@pytest.mark.parametrize("kind", KINDS)
def test_without_logits_the_logits_are_not_returned(kind):
    out = build_router(spec(kind)).route(random_contexts(10))
    assert out.logits is None


@pytest.mark.parametrize("kind", KINDS)
def test_same_spec_gives_identical_outputs_from_separately_built_routers(kind):
    ctx = random_contexts(400, seed=3)
    a = build_router(spec(kind, seed=11)).route(ctx, with_logits=True)
    b = build_router(spec(kind, seed=11)).route(ctx, with_logits=True)
    for name in ("experts", "weights", "confidence", "entropy", "logits"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    c = build_router(spec(kind, seed=12)).route(ctx, with_logits=True)
    assert not np.array_equal(a.logits, c.logits)


@pytest.mark.parametrize("kind", KINDS)
def test_row_result_independent_of_batch(kind):
    router = build_router(spec(kind))
    ctx = random_contexts(64, seed=5)
    full = router.route(ctx, with_logits=True)
    part = router.route(ctx[10:20], with_logits=True)
    np.testing.assert_array_equal(full.experts[10:20], part.experts)
    np.testing.assert_allclose(full.weights[10:20], part.weights, atol=1e-6)
    np.testing.assert_allclose(full.confidence[10:20], part.confidence, atol=1e-6)


def test_context_router_depends_on_context():
    router = build_router(spec("context", ambiguous_fraction=0.0, context_scale=3.0))
    rng = np.random.default_rng(1)
    token = np.repeat(np.arange(50), 8)
    ctx = np.column_stack([rng.integers(0, 50, size=(len(token), 3)), token]).astype(np.int64)
    out = router.route(ctx, with_logits=True)
    # the logits of one token differ across contexts
    logits = out.logits.reshape(50, 8, -1)
    assert (np.ptp(logits, axis=1).max(axis=1) > 1e-3).all()
    # and only the context (not the token) changed: replace the context by PADs -> different logits
    padded = ctx.copy()
    padded[:, :-1] = PAD
    assert not np.allclose(router.route(padded, with_logits=True).logits, out.logits)


def test_seed_router_ignores_context():
    router = build_router(spec("seed"))
    rng = np.random.default_rng(2)
    token = np.repeat(np.arange(50), 8)
    ctx = np.column_stack([rng.integers(-1, 50, size=(len(token), 3)), token]).astype(np.int64)
    out = router.route(ctx, with_logits=True)
    logits = out.logits.reshape(50, 8, -1)
    np.testing.assert_array_equal(logits, np.repeat(logits[:, :1], 8, axis=1))
    assert (out.experts.reshape(50, 8, -1) == out.experts.reshape(50, 8, -1)[:, :1]).all()


def test_context_router_position_matters():
    router = build_router(spec("context", context_scale=3.0))
    a = np.array([[1, 2, 3, 7]])
    b = np.array([[3, 2, 1, 7]])
    assert not np.allclose(router.route(a, with_logits=True).logits, router.route(b, with_logits=True).logits)


def test_router_counts_calls_and_rows():
    router = build_router(spec())
    router.route(random_contexts(7))
    router.route(random_contexts(5))
    assert (router.calls, router.routed) == (2, 12)
    assert router.router_id == router.spec.router_id


def test_read_out_tie_break_prefers_lower_expert_id():
    logits = np.array([
        [1.0, 3.0, 3.0, 0.0],   # tie for top-1 between 1 and 2
        [2.0, 2.0, 2.0, 2.0],   # all equal
        [0.0, 5.0, 1.0, 1.0],   # tie for second between 2 and 3
        [4.0, 1.0, 4.0, 4.0],   # three-way tie at the top
    ], dtype=np.float32)
    out = read_out(logits, 2)
    assert out.experts.tolist() == [[1, 2], [0, 1], [1, 2], [0, 2]]
    np.testing.assert_allclose(out.weights[[0, 1, 3]], 0.5, atol=1e-7)
    np.testing.assert_allclose(out.confidence[1], 0.25, atol=1e-7)
    np.testing.assert_allclose(out.entropy[1], np.log(4), atol=1e-6)
    out3 = read_out(logits, 3)
    assert out3.experts.tolist()[3] == [0, 2, 3]


def test_read_out_handles_large_values():
    logits = np.array([[1000.0, 999.0, -1000.0], [-1000.0, 999.0, 1000.0]], dtype=np.float32)
    before = logits.copy()
    out = read_out(logits, 2)
    np.testing.assert_array_equal(logits, before)  # a multi-row input is left alone
    assert out.experts.tolist() == [[0, 1], [2, 1]]
    assert np.isfinite(out.weights).all() and np.isfinite(out.entropy).all()
    e = np.exp(-1.0)
    np.testing.assert_allclose(out.weights, [[1 / (1 + e), e / (1 + e)]] * 2, rtol=1e-6)


def test_read_out_does_not_modify_a_single_row():
    logits = np.array([[1.0, 3.0, 2.0, 0.5]], dtype=np.float32)
    before = logits.copy()
    read_out(logits, 2)
    np.testing.assert_array_equal(logits, before)


@pytest.mark.parametrize("kind", KINDS)
def test_route_one_context_with_logits_returns_the_logits(kind):
    router = build_router(spec(kind))
    ctx = random_contexts(1, seed=4)
    out = router.route(ctx, with_logits=True)
    np.testing.assert_array_equal(out.logits, router.logits(ctx))


@pytest.mark.parametrize("bad", [
    dict(top_k=5, num_experts=4),
    dict(kind="transformer"),
    dict(kind=""),
    dict(vocab_size=0),
    dict(hidden=0),
    dict(num_experts=0, top_k=0),
    dict(top_k=0),
    dict(window=0),
])
def test_spec_validation(bad):
    with pytest.raises(ValueError):
        spec(**bad)


def test_spec_error_messages_name_the_problem():
    with pytest.raises(ValueError, match="top_k"):
        spec(top_k=5, num_experts=4)
    with pytest.raises(ValueError, match="kind"):
        spec(kind="bogus")


def test_preset_and_unknown_preset():
    s = RouterSpec.preset("seed", vocab_size=50)
    assert (s.hidden, s.num_experts, s.vocab_size) == (128, 8, 50)
    with pytest.raises(ValueError, match="preset"):
        RouterSpec.preset("huge")


CHANGES = {
    "kind": "seed", "vocab_size": 60, "hidden": 32, "num_experts": 5, "top_k": 3, "window": 3, "seed": 1,
    "ambiguous_fraction": 0.5, "context_scale": 2.0, "logit_scale": 3.0,
}
def test_changes_cover_every_spec_field():
    assert set(CHANGES) == {f.name for f in dataclasses.fields(RouterSpec)}


@pytest.mark.parametrize("field", list(CHANGES))
def test_router_id_changes_with_every_spec_field(field):
    base = spec(vocab_size=200)
    changed = base.with_(**{field: CHANGES[field]})
    assert changed != base
    assert changed.router_id != base.router_id


@pytest.mark.parametrize("field", ["ambiguous_fraction", "context_scale", "logit_scale"])
def test_fields_missing_from_router_id_do_change_the_outputs(field):
    """The premise of the router_id bug: these fields are not cosmetic."""
    base = spec(vocab_size=200)
    ctx = random_contexts(400, vocab=200, seed=9)
    a = build_router(base).route(ctx, with_logits=True)
    b = build_router(base.with_(**{field: CHANGES[field]})).route(ctx, with_logits=True)
    assert not np.allclose(a.logits, b.logits)


def test_router_id_is_stable_text():
    assert spec().router_id == spec().router_id
    assert spec().with_(seed=0) == spec()
