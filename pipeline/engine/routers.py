"""Learned routers (MoE gates) behind one small interface.

A router maps contexts -- rows of ``W`` token ids: the ``W-1`` previous tokens of the stream
(``PAD_TOKEN`` at a stream's start) followed by the token itself -- to top-k experts, their
gate weights (softmax over the top-k logits, summing to 1), the confidence (top-1 probability
of the full softmax) and the routing entropy (nats, full softmax).

Two torch models are provided, both deterministic functions of their :class:`RouterSpec`
(the weights are drawn from a seeded generator, so every worker builds the same router):

* ``context`` (default): token embedding plus a position-weighted mix of the previous
  ``W-1`` token embeddings, RMS-normalised, then a linear gate over ``E`` experts plus a
  per-token "semantic cluster" bias. Its receptive field is exactly the context window, so a
  decision cached under (hash of the previous ``W-1`` tokens, token) is the exact decision.
* ``seed``: the proof of concept's router -- one linear gate over the token embedding plus the
  same semantic-cluster bias; it ignores the context (receptive field 1).

Most tokens get a strong cluster bias ("stable" tokens, routed by identity like the first
layers of real MoE models); a seeded fraction of the tokens outside the most frequent head gets
none ("ambiguous" tokens whose routing depends on the context). That mix is what makes a fast
path possible but not free.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from typing import Protocol

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

ROUTER_KINDS = ("context", "seed", "model")  # "model": a trained MoE LM's gate (pipeline.model.router)
PRESETS: dict[str, dict[str, int]] = {
    "seed": {"hidden": 128, "num_experts": 8},
    "large": {"hidden": 4096, "num_experts": 64},
}


@dataclass(frozen=True)
class RouterSpec:
    """Everything that determines a router's weights and outputs."""

    kind: str = "context"
    vocab_size: int = 1000
    hidden: int = 128
    num_experts: int = 8
    top_k: int = 2
    window: int = 4
    seed: int = 0
    ambiguous_fraction: float = 0.05
    context_scale: float = 1.0
    logit_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ROUTER_KINDS:
            raise ValueError(f"router kind must be one of {ROUTER_KINDS}, got {self.kind!r}")
        for name in ("vocab_size", "hidden", "num_experts", "top_k", "window"):
            if getattr(self, name) < 1:
                raise ValueError(f"router {name} must be >= 1")
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k ({self.top_k}) cannot exceed num_experts ({self.num_experts})")

    @cached_property
    def router_id(self) -> str:
        """Stable identifier recorded in every decision and used to scope cache keys (computed
        once: every routed batch carries it)."""
        return (
            f"{self.kind}-v{self.vocab_size}-h{self.hidden}-e{self.num_experts}-k{self.top_k}"
            f"-w{self.window}-s{self.seed}-a{self.ambiguous_fraction:g}-c{self.context_scale:g}"
            f"-l{self.logit_scale:g}"
        )

    @classmethod
    def preset(cls, name: str, **overrides: object) -> "RouterSpec":
        """``seed`` (hidden 128, 8 experts) or ``large`` (hidden 4096, 64 experts)."""
        if name not in PRESETS:
            raise ValueError(f"unknown router preset {name!r} (choose from {sorted(PRESETS)})")
        return cls(**{**PRESETS[name], **overrides})  # type: ignore[arg-type]

    def with_(self, **changes: object) -> "RouterSpec":
        return replace(self, **changes)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(slots=True)
class RouterOutput:
    """Per-context routing: ``experts``/``weights`` are [n, k]; the rest are [n]."""

    experts: np.ndarray
    weights: np.ndarray
    confidence: np.ndarray
    entropy: np.ndarray
    logits: np.ndarray | None = None


class Router(Protocol):
    """What the engine needs from a learned router."""

    spec: RouterSpec

    @property
    def router_id(self) -> str: ...

    def route(self, contexts: np.ndarray, with_logits: bool = False) -> RouterOutput: ...


def stable_head(vocab_size: int) -> int:
    """Token ids below this are never ambiguous: in rank-ordered vocabularies they are the
    function words and punctuation, which real MoE models route by identity."""
    return max(10, vocab_size // 100)


def _cluster_bias(spec: RouterSpec, gen: torch.Generator) -> torch.Tensor:
    """[V+1, E] bias: stable tokens lean strongly towards their cluster's expert."""
    v, e = spec.vocab_size, spec.num_experts
    cluster = torch.randint(0, e, (v,), generator=gen)
    ambiguous = torch.rand(v, generator=gen) < spec.ambiguous_fraction
    ambiguous[: stable_head(v)] = False
    # Scaled with log(E) so that a stable token's top-1 probability is similar for 8 or 64 experts.
    strength = 2.5 + 1.5 * math.log(e)
    bias = torch.zeros(v + 1, e)
    rows = torch.arange(v)
    bias[rows, cluster] = torch.where(ambiguous, torch.tensor(0.0), torch.tensor(strength))
    return bias


class ContextWindowGate(nn.Module):
    """logits = gate(rmsnorm(E_tok[t] + sum_j a_j E_ctx[c_j])) + cluster_bias[t].

    The position weights ``a_j`` are folded into one stacked embedding table (``W-1`` scaled
    copies of ``E_ctx``, then ``E_tok``), so the whole mix is ONE ``embedding_bag`` call.
    """

    # buffers (register_buffer)
    stacked: torch.Tensor
    offsets: torch.Tensor
    gate: torch.Tensor
    bias: torch.Tensor

    def __init__(self, spec: RouterSpec) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(spec.seed)
        v, h, e, w = spec.vocab_size, spec.hidden, spec.num_experts, spec.window
        tok_emb = torch.randn(v + 1, h, generator=gen)
        ctx_emb = torch.randn(v + 1, h, generator=gen)
        gate = torch.randn(h, e, generator=gen) * (spec.logit_scale / math.sqrt(h))
        decay = [spec.context_scale * 0.5 ** (w - 1 - j) for j in range(w - 1)]
        stacked = torch.cat([ctx_emb * a for a in decay] + [tok_emb])
        self.register_buffer("stacked", stacked)
        self.register_buffer("offsets", torch.arange(w, dtype=torch.int64) * (v + 1))
        self.register_buffer("gate", gate)
        self.register_buffer("bias", _cluster_bias(spec, gen))

    def forward(self, contexts: torch.Tensor) -> torch.Tensor:
        x = F.embedding_bag(contexts + self.offsets, self.stacked, mode="sum")
        x = F.rms_norm(x, (x.shape[-1],), eps=1e-6)
        return torch.addmm(self.bias[contexts[:, -1]], x, self.gate)


class SeedGate(nn.Module):
    """The proof of concept's gate: Linear(token embedding) + semantic-cluster bias."""

    # buffers (register_buffer)
    tok_emb: torch.Tensor
    gate: torch.Tensor
    bias: torch.Tensor

    def __init__(self, spec: RouterSpec) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(spec.seed)
        v, h, e = spec.vocab_size, spec.hidden, spec.num_experts
        self.register_buffer("tok_emb", torch.randn(v + 1, h, generator=gen))
        self.register_buffer("gate", torch.randn(h, e, generator=gen) * (spec.logit_scale / math.sqrt(h)))
        self.register_buffer("bias", _cluster_bias(spec, gen))

    def forward(self, contexts: torch.Tensor) -> torch.Tensor:
        tokens = contexts[:, -1]
        return torch.addmm(self.bias[tokens], self.tok_emb[tokens], self.gate)


def read_out(logits: np.ndarray, top_k: int) -> RouterOutput:
    """Top-k experts (by logit, descending; ties -> lower expert id), their softmax weights,
    the top-1 probability and the entropy (nats) of the full softmax.

    Works on the transposed [E, n] array so that every reduction runs across the batch, and row
    ``i``'s result never depends on the other rows.
    """
    num_experts, n = logits.shape[1], logits.shape[0]
    z = np.array(logits.T, dtype=np.float32, order="C", copy=True)
    z -= z.max(axis=0)
    ez = np.exp(z)
    total = ez.sum(axis=0)
    entropy = np.log(total) - (ez * z).sum(axis=0) / total
    expert_ids = np.arange(num_experts)[:, None]
    cols = np.arange(n)
    experts = np.empty((top_k, n), dtype=np.int64)
    top_z = np.empty((top_k, n), dtype=np.float32)
    for j in range(top_k):
        best = z.max(axis=0)
        experts[j] = np.where(z == best, expert_ids, num_experts).min(axis=0)
        top_z[j] = best
        z[experts[j], cols] = -np.inf
    top_e = np.exp(top_z)
    weights = top_e / top_e.sum(axis=0)
    return RouterOutput(experts.T.copy(), weights.T.astype(np.float32), (1.0 / total).astype(np.float32),
                        entropy.astype(np.float32))


class TorchRouter:
    """A gate module plus the numpy <-> torch plumbing and the top-k read-out."""

    def __init__(self, spec: RouterSpec, device: str = "cpu") -> None:
        self.spec = spec
        self.device = torch.device(device)
        module = ContextWindowGate(spec) if spec.kind == "context" else SeedGate(spec)
        self.module = module.to(self.device).eval()
        self.calls = 0
        self.routed = 0

    @property
    def router_id(self) -> str:
        return self.spec.router_id

    def logits(self, contexts: np.ndarray) -> np.ndarray:
        """Raw gate logits [n, E] (float32) for contexts [n, W] (PAD = -1 allowed)."""
        ctx = np.where(contexts < 0, self.spec.vocab_size, contexts).astype(np.int64, copy=False)
        with torch.inference_mode():
            out = self.module(torch.from_numpy(ctx).to(self.device))
            logits: np.ndarray = out.float().cpu().numpy()
            return logits

    def route(self, contexts: np.ndarray, with_logits: bool = False) -> RouterOutput:
        """Route every row of ``contexts`` ([n, W] int64) in ONE batched forward pass."""
        self.calls += 1
        self.routed += len(contexts)
        logits = self.logits(contexts)
        out = read_out(logits, self.spec.top_k)
        if with_logits:
            out.logits = logits
        return out


def build_router(spec: RouterSpec, device: str = "cpu") -> TorchRouter:
    """The synthetic router described by ``spec`` on ``device`` (``cpu`` or ``cuda``)."""
    if spec.kind == "model":
        raise ValueError("a model router is built from a checkpoint (pipeline.model.router.model_routers)")
    return TorchRouter(spec, device)
