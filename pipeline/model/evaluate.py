"""Routing quality the way MoE work measures it: run the LM with different routings.

The LM runs over the same streams once with its own (exact) routing and once per *variant*
with that variant's experts and gate weights forced at every MoE layer -- so routing errors
propagate through the layers exactly as they would in the model. Reported per variant:

* perplexity and its relative change against exact routing;
* next-token KL(exact || variant), in nats per token;
* greedy next-token agreement (same argmax);
* per layer, against the exact gate's decisions: top-1 agreement, top-k *set* match (the same
  k experts, any order) and top-k recall (shared experts / k).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from .moe import MoELM, top_k_route
from .windows import WindowBatch, gather_route, window_batches

Routing = Sequence[tuple[np.ndarray, np.ndarray]]  # per layer: experts [N, k], weights [N, k] (flat layout)


@dataclass
class LayerAgreement:
    top1: float
    set_match: float
    recall: float


@dataclass
class VariantQuality:
    perplexity: float
    perplexity_change_pct: float
    kl: float
    greedy_agreement: float
    layers: list[LayerAgreement]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class LMQuality:
    """Exact perplexity and every variant's measures over ``tokens`` predicted tokens."""

    tokens: int
    exact_perplexity: float
    variants: dict[str, VariantQuality] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {"tokens": self.tokens, "exact_perplexity": self.exact_perplexity,
                "variants": {name: v.to_dict() for name, v in self.variants.items()}}


class _Sums:
    def __init__(self, layers: int) -> None:
        self.nll = self.kl = 0.0
        self.greedy = 0
        self.top1 = np.zeros(layers)
        self.sets = np.zeros(layers)
        self.recall = np.zeros(layers)

    def finish(self, exact_nll: float, predicted: int, routed: int) -> VariantQuality:
        ppl, exact = math.exp(self.nll / predicted), math.exp(exact_nll / predicted)
        layers = [LayerAgreement(float(a / routed), float(s / routed), float(r / routed))
                  for a, s, r in zip(self.top1, self.sets, self.recall)]
        return VariantQuality(ppl, 100.0 * (ppl - exact) / exact, self.kl / predicted, self.greedy / predicted, layers)


def _agreement(sums: _Sums, layer: int, exact: torch.Tensor, forced: torch.Tensor) -> None:
    """Add one layer's agreement of ``forced`` [n, k] with ``exact`` [n, k] experts."""
    k = exact.shape[1]
    shared = (forced[:, :, None] == exact[:, None, :]).any(-1).sum(-1)  # [n]
    sums.top1[layer] += int((forced[:, 0] == exact[:, 0]).sum())
    sums.sets[layer] += int((shared == k).sum())
    sums.recall[layer] += float(shared.sum()) / k


def _score(sums: _Sums, batch: WindowBatch, exact_logp: torch.Tensor, logits: torch.Tensor, keep: torch.Tensor) -> None:
    logp = F.log_softmax(logits[keep].float(), dim=-1)  # [n, V]
    sums.nll -= float(logp.gather(1, batch.targets[keep][:, None]).sum())
    sums.kl += float((exact_logp.exp() * (exact_logp - logp)).sum())
    sums.greedy += int((logp.argmax(-1) == exact_logp.argmax(-1)).sum())


@torch.inference_mode()
def compare_routings(model: MoELM, streams: Sequence[np.ndarray], variants: Mapping[str, Routing],
                     progress: Callable[[int], None] | None = None) -> LMQuality:
    """Measure every variant against exact routing on ``streams`` (see module docstring)."""
    model.eval()
    k, layers = model.cfg.top_k, model.cfg.n_layer
    sums = {name: _Sums(layers) for name in variants}
    exact_nll, predicted, routed = 0.0, 0, 0
    for batch in window_batches(streams, model.cfg.context - 1):
        exact = model(batch.tokens)
        keep = batch.outputs & (batch.targets >= 0)
        exact_logp = F.log_softmax(exact.logits[keep].float(), dim=-1)
        exact_nll -= float(exact_logp.gather(1, batch.targets[keep][:, None]).sum())
        exact_experts = [top_k_route(g[batch.outputs], k)[0] for g in exact.gate_logits]
        for name, routing in variants.items():
            routes = [gather_route(batch, e, w) for e, w in routing]
            out = model(batch.tokens, routes=routes)
            _score(sums[name], batch, exact_logp, out.logits, keep)
            for l, route in enumerate(routes):
                _agreement(sums[name], l, exact_experts[l], route.experts[batch.outputs])
        predicted += int(keep.sum())
        routed += int(batch.outputs.sum())
        if progress is not None:
            progress(int(batch.outputs.sum()))
    result = LMQuality(predicted, math.exp(exact_nll / max(1, predicted)))
    for name in variants:
        result.variants[name] = sums[name].finish(exact_nll, max(1, predicted), max(1, routed))
    return result


def random_routing(n: int, num_experts: int, top_k: int, layers: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Uniformly random distinct experts with equal weights at every layer: the metric's scale."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(layers):
        experts = np.argsort(rng.random((n, num_experts)), axis=1)[:, :top_k].astype(np.int64)
        out.append((experts, np.full((n, top_k), 1.0 / top_k, np.float32)))
    return out
