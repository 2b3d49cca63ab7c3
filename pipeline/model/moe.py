"""A small decoder-only Mixture-of-Experts language model with sliding-window attention.

One file, nanoGPT style: a config dataclass and a few small modules.

* Token embedding (tied with the output head), ``n_layer`` pre-norm blocks, a final RMSNorm.
* Each block: causal self-attention over a sliding window of ``attn_window`` (A) tokens with
  rotary position embeddings, then a Mixture-of-Experts feed-forward layer: a linear gate over
  ``n_experts`` expert MLPs, top-k experts per token, gate weights = softmax over the top-k
  logits, and a Switch-style load-balancing loss.
* ``dense=True`` builds the dense baseline of the same *active* size: one MLP of width
  ``top_k * d_expert`` in place of the experts.

Receptive fields. Position ``t`` of layer ``l``'s attention output depends on tokens
``t - (l+1)(A-1) .. t`` only, so the gate of layer ``l`` is a deterministic function of the
last ``receptive_field(l) = (l+1)(A-1)+1`` tokens. :meth:`MoELM.gate_logits` recomputes it from
exactly that many tokens (``PAD`` = -1 before a stream's start), which is what makes a decision
cache keyed by that context exact.

Routing can be forced: :meth:`MoELM.forward` takes, per layer, the experts and weights to use
instead of the gate's own choice (how VAR's decisions are evaluated by perplexity).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence, cast

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class MoEConfig:
    """Everything that determines the architecture (the weights come from training)."""

    vocab_size: int = 4096
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    d_expert: int = 256  # hidden width of one expert MLP
    n_experts: int = 8
    top_k: int = 2
    attn_window: int = 8  # A: a position attends to itself and the A-1 before it
    aux_weight: float = 0.01  # Switch load-balancing loss weight
    rope_base: float = 10000.0
    dense: bool = False  # the dense baseline: one MLP of width top_k * d_expert per layer

    def __post_init__(self) -> None:
        if self.d_model % self.n_head or (self.d_model // self.n_head) % 2:
            raise ValueError("d_model must split into n_head heads of even size")
        if not 1 <= self.top_k <= self.n_experts:
            raise ValueError("need 1 <= top_k <= n_experts")
        if self.attn_window < 1 or self.n_layer < 1:
            raise ValueError("attn_window and n_layer must be >= 1")

    def receptive_field(self, layer: int) -> int:
        """Tokens that the gate of ``layer`` (0-based) depends on, the token itself included."""
        return (layer + 1) * (self.attn_window - 1) + 1

    @property
    def context(self) -> int:
        """Tokens that the output at one position depends on (all layers)."""
        return self.receptive_field(self.n_layer - 1)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class Route:
    """Forced routing for one layer: ``experts`` long [B, T, k], ``weights`` float [B, T, k]."""

    experts: torch.Tensor
    weights: torch.Tensor


@dataclass
class ModelOutput:
    logits: torch.Tensor  # [B, T, V]
    gate_logits: list[torch.Tensor]  # per layer [B, T, E] (empty for the dense model)
    loss: torch.Tensor | None = None  # next-token cross-entropy (targets given)
    aux_loss: torch.Tensor | None = None  # load-balancing loss, summed over layers


def rope_tables(positions: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [positions, head_dim/2] for rotary embeddings."""
    inv = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(positions, dtype=torch.float32), inv)  # [T, hd/2]
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs of ``x`` [B, H, T, hd] by position."""
    x1, x2 = x[..., 0::2], x[..., 1::2]  # [B, H, T, hd/2]
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)  # [B, H, T, hd/2, 2]
    return out.flatten(-2)


def attention_mask(valid: torch.Tensor, window: int) -> torch.Tensor:
    """Bool [B, 1, T, T]: query i may see key j iff j <= i < j + window and j is a real token.

    A padding query sees itself only (its output is never used), so no row is empty.
    """
    t = valid.shape[1]
    i = torch.arange(t)[:, None]
    j = torch.arange(t)[None, :]
    band = (j <= i) & (i - j < window)  # [T, T]
    mask = band[None] & valid[:, None, :]  # [B, T, T]
    mask = mask | (torch.eye(t, dtype=torch.bool)[None] & ~valid[:, :, None])
    return mask[:, None]


class SlidingWindowAttention(nn.Module):
    def __init__(self, cfg: MoEConfig) -> None:
        super().__init__()
        self.n_head, self.window = cfg.n_head, cfg.attn_window
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_head, d // self.n_head).permute(2, 0, 3, 1, 4)  # [B, H, T, hd]
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, H, T, hd]
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


def top_k_route(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Experts [..., k] by descending logit and their weights (softmax over the top-k logits)."""
    top, experts = torch.topk(logits, k, dim=-1)
    return experts, torch.softmax(top, dim=-1)


class MoEFeedForward(nn.Module):
    """Gate + ``n_experts`` MLPs (d -> d_expert -> d, GELU); top-k mixture per token."""

    def __init__(self, cfg: MoEConfig) -> None:
        super().__init__()
        e, d, f = cfg.n_experts, cfg.d_model, cfg.d_expert
        self.top_k = cfg.top_k
        self.gate = nn.Linear(d, e, bias=False)
        self.w_in = nn.Parameter(torch.randn(e, d, f) / math.sqrt(d))
        self.w_out = nn.Parameter(torch.randn(e, f, d) / math.sqrt(f) / math.sqrt(2 * cfg.n_layer))

    def forward(self, h: torch.Tensor, route: Route | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Output [B, T, d], gate logits [B, T, E] and the load-balancing loss."""
        logits = self.gate(h)  # [B, T, E]
        if route is None:
            experts, weights = top_k_route(logits, self.top_k)  # [B, T, k] each
        else:
            experts, weights = route.experts, route.weights.to(h.dtype)
        flat_h, flat_e, flat_w = h.reshape(-1, h.shape[-1]), experts.reshape(-1, self.top_k), weights.reshape(-1, self.top_k)
        out = torch.zeros_like(flat_h)  # [N, d]
        for e in torch.unique(flat_e).tolist():
            rows, slots = torch.nonzero(flat_e == e, as_tuple=True)
            y = F.gelu(flat_h[rows] @ self.w_in[e]) @ self.w_out[e]  # [n_e, d]
            out.index_add_(0, rows, y * flat_w[rows, slots, None])
        probs = torch.softmax(logits.reshape(-1, logits.shape[-1]), dim=-1)  # [N, E]
        load = F.one_hot(flat_e[:, 0], probs.shape[-1]).float().mean(0)  # share of top-1 assignments
        aux = probs.shape[-1] * (load * probs.mean(0)).sum()
        return out.view_as(h), logits, aux


class DenseFeedForward(nn.Module):
    def __init__(self, cfg: MoEConfig) -> None:
        super().__init__()
        width = cfg.top_k * cfg.d_expert
        self.fc = nn.Linear(cfg.d_model, width, bias=False)
        self.proj = nn.Linear(width, cfg.d_model, bias=False)

    def forward(self, h: torch.Tensor, route: Route | None) -> tuple[torch.Tensor, None, torch.Tensor]:
        return self.proj(F.gelu(self.fc(h))), None, h.new_zeros(())


class Block(nn.Module):
    def __init__(self, cfg: MoEConfig) -> None:
        super().__init__()
        self.norm1 = nn.RMSNorm(cfg.d_model, eps=1e-6)
        self.attn = SlidingWindowAttention(cfg)
        self.norm2 = nn.RMSNorm(cfg.d_model, eps=1e-6)
        self.ffn: nn.Module = DenseFeedForward(cfg) if cfg.dense else MoEFeedForward(cfg)

    def mix(self, x: torch.Tensor, mask: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The attention half; the gate reads ``norm2`` of its result."""
        return x + self.attn(self.norm1(x), mask, rope)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                route: Route | None = None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        x = self.mix(x, mask, rope)
        y, logits, aux = self.ffn(self.norm2(x), route)
        return x + y, logits, aux


class MoELM(nn.Module):
    def __init__(self, cfg: MoEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = nn.RMSNorm(cfg.d_model, eps=1e-6)
        nn.init.normal_(self.embed.weight, std=0.02)
        for name, p in self.named_parameters():
            if p.dim() == 2 and name.endswith(("qkv.weight", "fc.weight", "gate.weight")):
                nn.init.normal_(p, std=0.02)
            elif name.endswith(("proj.weight",)):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))

    def _inputs(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Embeddings [B, T, d], the attention mask and rotary tables; ``idx`` < 0 is padding."""
        valid = idx >= 0  # [B, T]
        x = self.embed(idx.clamp_min(0))  # [B, T, d]
        rope = rope_tables(idx.shape[1], self.cfg.d_model // self.cfg.n_head, self.cfg.rope_base)
        return x, attention_mask(valid, self.cfg.attn_window), rope

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                routes: Sequence[Route | None] | None = None) -> ModelOutput:
        """Logits for every position of ``idx`` [B, T]; ``routes[l]`` forces layer ``l``'s experts."""
        x, mask, rope = self._inputs(idx)
        gate_logits: list[torch.Tensor] = []
        aux = x.new_zeros(())
        for l, block in enumerate(self.blocks):
            x, logits, layer_aux = block(x, mask, rope, routes[l] if routes else None)
            if logits is not None:
                gate_logits.append(logits)
            aux = aux + layer_aux
        logits = self.norm(x) @ self.embed.weight.T  # [B, T, V]
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-1)
        return ModelOutput(logits, gate_logits, loss, aux)

    @torch.inference_mode()
    def gate_logits(self, contexts: torch.Tensor, layer: int) -> torch.Tensor:
        """Gate logits [n, E] of ``layer`` at the last position of ``contexts`` [n, R].

        ``R`` must be at least :meth:`MoEConfig.receptive_field` (extra leading columns are
        dropped); ``-1`` marks positions before a stream's start. Lower layers route with their
        own gates (the exact model). After each layer only the positions that the next layers
        still need are kept, so the cost grows with the receptive field, not with ``R``.
        """
        a1 = self.cfg.attn_window - 1
        x, mask, rope = self._inputs(contexts[:, -self.cfg.receptive_field(layer):])
        for l in range(layer + 1):
            block = cast(Block, self.blocks[l])  # ModuleList items are typed as Module
            x = block.mix(x, mask, rope)
            keep = (layer - l) * a1 + 1  # positions still needed above this layer
            x, mask = x[:, -keep:], mask[:, :, -keep:, -keep:]
            rope = (rope[0][-keep:], rope[1][-keep:])
            h = block.norm2(x)
            if l == layer:
                return cast(MoEFeedForward, block.ffn).gate(h[:, -1])  # [n, E] (gates: MoE layers only)
            x = x + block.ffn(h, None)[0]
        raise AssertionError("unreachable")

    def num_params(self, active: bool = False) -> int:
        """All parameters, or those one token uses (``top_k`` of the experts)."""
        total = sum(p.numel() for p in self.parameters())
        if not active or self.cfg.dense:
            return total
        per_expert = 2 * self.cfg.d_model * self.cfg.d_expert
        return total - self.cfg.n_layer * (self.cfg.n_experts - self.cfg.top_k) * per_expert
