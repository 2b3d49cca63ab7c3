"""How much the token id alone determines each layer's routing -- where a fast path can work.

For each MoE layer, on the evaluated traffic (exact routing, top-1 expert):

* ``modal_correct``: share of traffic whose top-1 expert is the token's modal expert, the modal
  expert learned from other text (the offline statistics) -- what a token-keyed fast path at
  full coverage would get right;
* ``determined_share``: share of traffic whose token agrees with its modal expert on at least
  ``threshold`` (95%) of its occurrences;
* ``h_expert_given_token``: mean conditional entropy H(top-1 | token id) in nats, measured on the
  traffic itself, next to ``h_expert`` (no conditioning) for scale.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from pipeline.engine.stats import TokenStats

from .moe import MoELM
from .router import exact_routing


@dataclass
class LayerDeterminism:
    modal_correct: float
    determined_share: float
    h_expert_given_token: float
    h_expert: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _entropy(counts: np.ndarray) -> np.ndarray:
    """Entropy (nats) of each row of non-negative counts."""
    total = counts.sum(-1, keepdims=True)
    p = np.divide(counts, total, out=np.zeros_like(counts, dtype=np.float64), where=total > 0)
    return -(p * np.log(np.where(p > 0, p, 1.0))).sum(-1)


def layer_determinism(tokens: np.ndarray, top1: np.ndarray, stats: TokenStats, threshold: float = 0.95) -> LayerDeterminism:
    """The measures above for one layer (``tokens``/``top1`` aligned, ``stats`` from other text)."""
    n = max(1, len(tokens))
    modal = stats.top1.argmax(1)
    known = stats.routed > 0
    hit = known[tokens] & (top1 == modal[tokens])
    occurrences = np.bincount(tokens, minlength=stats.vocab_size).astype(np.float64)
    agree = np.bincount(tokens, weights=hit.astype(np.float64), minlength=stats.vocab_size)
    rate = np.divide(agree, occurrences, out=np.zeros_like(agree), where=occurrences > 0)
    determined = float(occurrences[known & (rate >= threshold)].sum()) / n
    counts = np.zeros((stats.vocab_size, stats.num_experts))
    np.add.at(counts, (tokens, top1), 1.0)
    h_cond = float((occurrences * _entropy(counts)).sum()) / n
    return LayerDeterminism(float(hit.mean()) if len(tokens) else 0.0, determined, h_cond,
                            float(_entropy(counts.sum(0))))


def token_determinism(model: MoELM, streams: Sequence[np.ndarray], stats: Sequence[TokenStats]) -> list[LayerDeterminism]:
    """:func:`layer_determinism` for every layer, on the exact routing of ``streams``."""
    tokens = np.concatenate(streams) if streams else np.zeros(0, np.int64)
    return [layer_determinism(tokens, out.experts[:, 0], s) for out, s in zip(exact_routing(model, streams), stats)]
