"""Routing quality of VAR against always using the learned router, on the same events.

Two kinds of measure:

* **Agreement** over every routed event: top-1 agreement (same first expert) and top-k overlap
  (shared experts / k).
* **A real MoE layer** on a bounded sample of events: E small expert MLPs (seeded). Each event's
  input is its token's embedding; the layer output is the gate-weighted sum of the chosen
  experts' outputs. We push the sample through the layer twice -- with VAR's experts/weights and
  with the exact ones -- and report the relative output error ``||Y_var - Y_exact|| / ||Y_exact||``.
  The task: predict the embedding of the *next* token of the stream from the layer output with
  a ridge-regression read-out fitted on the exact outputs of the first half of the sample; the
  task loss (MSE) on the second half is compared between the two routings.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

_MODEL_DIM, _FFN_DIM, _TARGET_DIM, _RIDGE = 64, 128, 32, 1e-2


@dataclass(frozen=True, slots=True)
class QualityResult:
    agreement_top1: float
    topk_overlap: float
    moe_rel_error: float
    task_loss_exact: float
    task_loss_var: float
    task_loss_diff_pct: float
    sample_events: int

    def to_dict(self) -> dict[str, float | int]:
        return {name: getattr(self, name) for name in self.__slots__}


class MoELayer(nn.Module):
    """E expert MLPs (d -> f -> d) over fixed token embeddings; weights drawn from ``seed``."""

    def __init__(self, vocab_size: int, num_experts: int, seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed + 7919)
        d, f = _MODEL_DIM, _FFN_DIM
        self.embed = torch.randn(vocab_size, d, generator=gen)
        self.w_in = torch.randn(num_experts, d, f, generator=gen) / d**0.5
        self.w_out = torch.randn(num_experts, f, d, generator=gen) / f**0.5

    @torch.inference_mode()
    def forward(self, tokens: np.ndarray, experts: np.ndarray, weights: np.ndarray) -> torch.Tensor:
        x = self.embed[torch.from_numpy(tokens)]
        y = torch.zeros_like(x)
        experts_t, weights_t = torch.from_numpy(experts), torch.from_numpy(weights.astype(np.float32))
        for e in torch.unique(experts_t).tolist():
            rows, slots = torch.nonzero(experts_t == e, as_tuple=True)
            h = torch.nn.functional.gelu(x[rows] @ self.w_in[e]) @ self.w_out[e]
            y.index_add_(0, rows, h * weights_t[rows, slots, None])
        return y


class QualityAccumulator:
    """Streams agreement over all events; keeps the first ``sample_limit`` events for the MoE probe."""

    def __init__(self, vocab_size: int, num_experts: int, seed: int, sample_limit: int = 50000) -> None:
        self.vocab_size, self.num_experts, self.seed = vocab_size, num_experts, seed
        self.sample_limit = sample_limit
        self.events = 0
        self.top1_agree = 0
        self.overlap_sum = 0.0
        self._sample: list[tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._sampled = 0

    @property
    def wants_sample(self) -> bool:
        """Whether :meth:`add` still needs the streams of its events (the MoE sample is not full)."""
        return self._sampled < self.sample_limit

    def add(self, streams: list[str], tokens: np.ndarray, var_experts: np.ndarray, var_weights: np.ndarray,
            exact_experts: np.ndarray, exact_weights: np.ndarray) -> None:
        """Add a batch: VAR's and the exact decisions for the same events (rows aligned). ``streams``
        may be empty once :attr:`wants_sample` is False."""
        n = len(tokens)
        self.events += n
        self.top1_agree += int((var_experts[:, 0] == exact_experts[:, 0]).sum())
        shared = (var_experts[:, :, None] == exact_experts[:, None, :]).any(axis=2).sum()
        self.overlap_sum += float(shared) / var_experts.shape[1]
        take = min(n, self.sample_limit - self._sampled)
        if take > 0:
            self._sample.append((streams[:take], tokens[:take], var_experts[:take], var_weights[:take],
                                 exact_experts[:take], exact_weights[:take]))
            self._sampled += take

    def result(self) -> QualityResult:
        top1 = self.top1_agree / self.events if self.events else 1.0
        overlap = self.overlap_sum / self.events if self.events else 1.0
        if self._sampled < 4:
            return QualityResult(top1, overlap, 0.0, 0.0, 0.0, 0.0, self._sampled)
        streams = [s for part in self._sample for s in part[0]]
        tokens, ve, vw, ee, ew = (np.concatenate([part[i] for part in self._sample]) for i in range(1, 6))
        layer = MoELayer(self.vocab_size, self.num_experts, self.seed)
        y_var, y_exact = layer(tokens, ve, vw), layer(tokens, ee, ew)
        rel = float(torch.linalg.norm(y_var - y_exact) / torch.linalg.norm(y_exact).clamp_min(1e-12))
        loss_exact, loss_var = _next_token_task(streams, tokens, y_exact, y_var, self.vocab_size, self.seed)
        diff = 100.0 * (loss_var - loss_exact) / loss_exact if loss_exact > 0 else 0.0
        return QualityResult(top1, overlap, rel, loss_exact, loss_var, diff, self._sampled)


def _next_token_index(streams: list[str]) -> np.ndarray:
    """For each event, the index of the next event of its stream in the sample (-1 if none)."""
    nxt = np.full(len(streams), -1, dtype=np.int64)
    last: dict[str, int] = {}
    for i, stream in enumerate(streams):
        j = last.get(stream)
        if j is not None:
            nxt[j] = i
        last[stream] = i
    return nxt


def _next_token_task(streams: list[str], tokens: np.ndarray, y_exact: torch.Tensor, y_var: torch.Tensor,
                     vocab_size: int, seed: int) -> tuple[float, float]:
    """Ridge read-out fitted on exact outputs (first half); MSE on the second half for both."""
    nxt = _next_token_index(streams)
    rows = np.flatnonzero(nxt >= 0)
    if len(rows) < 4:
        return 0.0, 0.0
    gen = torch.Generator().manual_seed(seed + 104729)
    target_embed = torch.randn(vocab_size, _TARGET_DIM, generator=gen)
    targets = target_embed[torch.from_numpy(tokens[nxt[rows]])].double()
    xe, xv = y_exact[torch.from_numpy(rows)].double(), y_var[torch.from_numpy(rows)].double()
    half = len(rows) // 2
    fit_x, fit_t = xe[:half], targets[:half]
    gram = fit_x.T @ fit_x + _RIDGE * half * torch.eye(fit_x.shape[1], dtype=torch.float64)
    readout = torch.linalg.solve(gram, fit_x.T @ fit_t)
    loss_exact = float(((xe[half:] @ readout - targets[half:]) ** 2).mean())
    loss_var = float(((xv[half:] @ readout - targets[half:]) ** 2).mean())
    return loss_exact, loss_var
